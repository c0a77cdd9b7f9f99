"""What the preflight's checks share: the findings they add to (problems, each one line, and what was
verified) and how they read a stage config as the stage will see it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

from ..data.schema import DatasetError


@dataclasses.dataclass
class Findings:
    """Problems (each one line) and what was verified (the summary of a clean preflight)."""

    problems: list[str] = dataclasses.field(default_factory=list)
    verified: list[str] = dataclasses.field(default_factory=list)

    @contextmanager
    def check(self, what: str) -> Iterator[None]:
        """Run a check; a named failure of what it loads becomes the problem line ``what: message``.

        Loaders raise what they raise (dataset errors, missing files, open_clip / diffusers / Lightning
        refusals): all of them are reasons the run would fail, and each is reported, not raised, so that
        one pass names every problem.
        """
        from lightning.pytorch.utilities.exceptions import MisconfigurationException

        try:
            yield
        except (DatasetError, OSError, ValueError, RuntimeError, MisconfigurationException) as exc:
            self.problems.append(f"{what}: {' '.join(str(exc).split())}")


def init_args(config: dict, section: str = "model") -> dict:
    return (config.get(section) or {}).get("init_args") or {}


def class_defaults(class_path: str) -> dict:
    """The ``__init__`` defaults of a LightningCLI ``class_path``: what a config leaves unset."""
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def model_arg(config: dict, key: str):
    """A model init argument as the stage will see it: the config's value, else the class default."""
    args = init_args(config)
    return args[key] if key in args else class_defaults(config["model"]["class_path"]).get(key)
