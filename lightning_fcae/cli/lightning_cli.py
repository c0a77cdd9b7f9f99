"""The LightningCLI subclass behind ``lightning fit`` and ``lightning-fcae fit``: apart from
:mod:`lightning_fcae.cli.commands` because importing it imports Lightning and torch (seconds of CPU), which
the other commands' ``--help`` must not wait for."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.cli import LightningCLI

from ..stages.defaults import STAGE_DEFAULTS, default_precision

# Lightning's loggers for its rank-zero messages (lightning and lightning_fabric each set one)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


class _DropTip(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger" advertisement, printed on every stage."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


def silence_known_noise() -> None:
    """Quiet what every stage printed that no user can act on: Lightning's litlogger tip, and the
    FutureWarning torch 2.9+ raises from Lightning's own ``isinstance(treespec, LeafSpec)`` (Lightning's
    code, not ours: it goes once Lightning updates). What a user must read stays."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTip) for f in logger.filters):
            logger.addFilter(_DropTip())
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)


class FCAECLI(LightningCLI):
    """LightningCLI that feeds the DataModule's padded voxel count to the model, and lays every config on
    what the stage configs share (:data:`~lightning_fcae.stages.defaults.STAGE_DEFAULTS`: the trainer's
    callbacks and logger)."""

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        """Every subcommand's parser reads ``stage_defaults.yaml`` as its default config (jsonargparse's
        ``default_config_files``: values below any ``--config``, visible in ``--print_config`` and the
        saved ``config.yaml``; a config's ``callbacks+:`` appends to its callbacks). Not LightningCLI's
        ``trainer_defaults``: callbacks given there are added to every run and no config can drop or
        change them. A missing file is an error here: jsonargparse would skip it without a word."""
        if not STAGE_DEFAULTS.is_file():
            raise FileNotFoundError(f"{STAGE_DEFAULTS}, the stage configs' shared defaults, is missing")
        defaults = {"default_config_files": [str(STAGE_DEFAULTS)]}
        if add_subcommands:
            subparser_kwargs = {
                name: {**defaults, **subparser_kwargs.get(name, {})} for name in self.subcommands()
            }
        else:
            main_kwargs = {**defaults, **main_kwargs}
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_voxels", "model.init_args.num_voxels", apply_on="instantiate")
        parser.set_defaults({"trainer.precision": default_precision()})

    def instantiate_trainer(self, **kwargs):
        """Every trainer writes its checkpoints atomically (:class:`AtomicCheckpointIO`: a crash mid-write
        never replaces the previous ``last.ckpt``), unless the config names a CheckpointIO of its own."""
        from lightning.fabric.plugins import CheckpointIO

        from ..files.checkpoint_io import AtomicCheckpointIO

        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**{"plugins": plugins, **kwargs})

    def _parse_ckpt_path(self) -> None:
        """LightningCLI loads ``--ckpt_path`` here, before anything else: a damaged file is named with
        the fix first, instead of ``PytorchStreamReader failed ...`` (no file named) on every rerun."""
        from ..models.checkpoints import check_checkpoint

        subcommand = self.config.get("subcommand")
        path = subcommand and self.config[subcommand].get("ckpt_path")
        if path:
            check_checkpoint(
                path, "delete it to start the run from its beginning, or pass another --ckpt_path"
            )
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        """``fast_dev_run`` is a smoke test and must not write checkpoints, but Lightning 2.6's
        ``ModelCheckpoint.on_train_end`` still saves ``last.ckpt`` after one: it would replace the
        trained checkpoint that the next stage reads."""
        if self.trainer.fast_dev_run:
            for callback in self.trainer.checkpoint_callbacks:
                callback.save_last = False

    def before_predict(self) -> None:
        """From the command line ``predict`` keeps nothing unless a callback writes the predictions:
        say so before sampling a whole split for nothing."""
        from lightning.pytorch.callbacks import BasePredictionWriter
        from lightning.pytorch.utilities.exceptions import MisconfigurationException

        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            raise MisconfigurationException(
                "`predict` from the command line writes nothing without a BasePredictionWriter callback "
                "(--trainer.callbacks+=...); for stage-3 reconstructions use `lightning-fcae reconstruct`, "
                "which writes PNGs, a grid and metrics"
            )
