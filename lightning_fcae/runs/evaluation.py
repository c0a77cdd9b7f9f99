"""What a run scores: stage 2's identification test, each method's reconstructions (img2img's strength
chosen on val first), the ridge yardstick beside them, and each method x seed's ``summary.json``, what the
report tabulates."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic
from .methods import METHODS, STRENGTHS, modalities
from .plan import deep_merge, load_stage_config
from .stage_runner import StageRunner, last_csv_values
from .tasks import STAGE_CONFIGS, Task, csv_logger


@dataclass
class MethodRun:
    """What one method x seed's tasks made so far, in the order they run."""

    last: Path | None = None  # the checkpoint its latest fit wrote: the encoder (then stage 3) the next reads
    extra: dict = field(default_factory=dict)  # the config its latest fit added to its stage config
    identification: dict | None = None  # stage 2's test
    strength: float | None = None  # img2img's strength chosen on val (None: from noise)
    recon: dict | None = None  # the reconstruction's metrics


STRENGTH_CRITERION = "CLIP 2-way + PixCorr + SSIM on val, mean over subjects; PixCorr + SSIM without CLIP"


def strength_score(metrics: dict) -> float:
    """How good a val reconstruction is, for choosing img2img's strength: semantic (the CLIP stand-in's
    2-way identification) and low-level (PixCorr, SSIM) fidelity in one sum, each of them 1 at best."""
    raw = metrics["raw"]["mean"]
    return float(raw.get("clip_2way", 0.0) + raw["pixcorr"] + raw["ssim"])


def parameter_counts(root: Path) -> dict[str, int]:
    """fMRI side (stage-1 encoder + regressor: the paper's Table 3 count) and, with stage 3, the whole
    reconstruction model (fMRI encoder + token map, condition encoder, UNet, VQ: its Table 2 count),
    rebuilt from the checkpoints' model records (a stage-3 checkpoint leaves the frozen LDM to its folder)."""
    from ..inference.reconstruction_pipeline import FMRIReconstructionPipeline
    from ..models.factory import load_model

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    stage1 = load_model(root / "stage1/checkpoints/last.ckpt", "model")
    counts = {
        "fmri": count(stage1.encoder) + (count(stage1.regressor) if hasattr(stage1, "regressor") else 0)
    }
    stage3 = root / "stage3/checkpoints/last.ckpt"
    if stage3.is_file():
        pipe = FMRIReconstructionPipeline.from_checkpoint(stage3)
        counts["total"] = sum(
            count(part) for part in (pipe.fmri_encoder, pipe.condition, pipe.unet, pipe.vqvae)
        )
    return counts


class Evaluation(StageRunner):
    """The evaluation tasks of a run, on the stages :class:`~lightning_fcae.runs.stage_runner.StageRunner`
    runs."""

    def ridge(self, task: Task, clip: tuple[str, str]) -> None:
        """``OUT/ridge/seed0/summary.json``: per-subject ridge decoders from voxels, scored like the
        methods (:mod:`lightning_fcae.runs.yardstick`); recomputed only when its settings change."""
        root, key = task.stage_dir, self.task_key(task.stage_dir, task.command)
        stage3 = deep_merge(
            load_stage_config(self.configs / STAGE_CONFIGS["stage3"]), self.overrides.get("stage3", {})
        )
        size = stage3["model"]["init_args"].get("image_size")
        n_way = int((self.plan.get("reconstruct") or {}).get("n_way", 50))
        stage2 = deep_merge(
            load_stage_config(self.configs / STAGE_CONFIGS["stage2"]), self.overrides.get("stage2", {})
        )
        # the ranks of the maps stage 2's linear path and stage 3's low-level decoder fit, so that their
        # step 0 is this row
        ranks = {
            "rank": stage2["model"]["init_args"].get("linear_rank", 128),
            "pixel_rank": stage3["model"]["init_args"].get("lowlevel_rank", 256),
        }
        settings = {
            "data_dir": self.data_dir,
            "clip": list(clip),
            "image_size": size,
            "n_way": n_way,
            **ranks,
            "grid": "tiles",  # recon/ laid out as a reconstruction's (older runs wrote grid.png alone)
        }
        label = f"{self.progress.line(key)} {root.relative_to(self.out)}"
        path = root / "summary.json"
        if path.is_file() and json.loads(path.read_text()).get("settings") == settings:
            print(f"{label}: done already, skipped", flush=True)
            self.progress.finish(key, None)
            return
        print(f"{label}: ridge yardstick (voxels -> CLIP tokens, voxels -> pixels)", flush=True)
        if self.dry_run:
            return
        start = time.monotonic()
        from ..data.datamodule import read_manifest
        from ..inference.reconstruct import write_grid, write_png
        from ..models.clip import load_clip
        from .yardstick import ridge_yardstick

        self.running = str(root.relative_to(self.out))
        size = size or read_manifest(self.data_dir).image_size
        result = ridge_yardstick(self.data_dir, load_clip(*clip), size, n_way, **ranks)
        recon = root / "recon"  # laid out as a reconstruction's: the report shows it beside the methods
        for entries in result["grid"].values():
            for truth, images, label in entries:
                write_png(recon / "truth" / f"{label['key']}.png", truth)
                write_png(recon / "images" / f"{label['key']}_0.png", images[0])
        write_grid(result["grid"], recon, samples=1)
        summary = {
            "run": self.out.name,
            "method": "ridge",
            "label": "Ridge yardstick (voxels → pixels; → CLIP tokens)",
            "seed": 0,
            "encoder": "none (ridge)",
            "modalities": "–",
            "tables": ["table2", "table3"],
            "data_dir": self.data_dir,
            "params": None,
            "identification": result["identification"],
            "identification_per_subject": result["identification_per_subject"],
            "recon": result["recon"],
            "settings": settings,
        }
        atomic.write_text(path, json.dumps(summary, indent=2))
        self.running = None
        self.progress.finish(key, time.monotonic() - start)

    def summary(self, task: Task, run: MethodRun) -> dict:
        """``OUT/<method>/seed<k>/summary.json`` (what the report tabulates), once its last task ran."""
        name, method, root = task.method, METHODS[task.method], task.stage_dir.parent
        seconds = {}
        for stage_dir in sorted(root.glob("*/done-*.json")):
            seconds[f"{stage_dir.parent.name}/{stage_dir.stem[5:]}"] = json.loads(stage_dir.read_text())[
                "seconds"
            ]
        summary = {
            "run": self.out.name,
            "method": name,
            "label": method.label,
            "seed": task.seed,
            "encoder": method.encoder,
            "modalities": modalities(method),
            "tables": list(method.tables),
            "data_dir": self.data_dir,
            "params": None if self.dry_run else parameter_counts(root),
            "identification": run.identification,
            "recon": run.recon,
            "init": method.init,
            "strength": run.strength,  # img2img's, chosen on val (None: from noise)
            "stage1": str(self.stage1_dir(method, task.seed).relative_to(self.out)),  # shared by methods
            "seconds": seconds,
        }
        if not self.dry_run:
            atomic.write_text(root / "summary.json", json.dumps(summary, indent=2))
        return summary

    def test_identification(self, stage_dir: Path, seed: int, extra: dict, checkpoint: Path) -> dict | None:
        """``lightning test`` of the stage-2 checkpoint: n-way top-1 of the fMRI embedding among CLIP's."""
        config = self.stage_config("stage2", STAGE_CONFIGS["stage2"], stage_dir, seed, extra)
        config["trainer"]["logger"] = [csv_logger(stage_dir, "test")]
        args = ["test", "--config", str(stage_dir / "test.yaml"), "--ckpt_path", str(checkpoint)]
        self.run(stage_dir, config, args, config_name="test.yaml")
        metrics = stage_dir / "csv" / "test" / "metrics.csv"
        if self.dry_run or not metrics.is_file():
            return None
        values = last_csv_values(metrics)
        return {k.removeprefix("test/"): v for k, v in values.items() if k.startswith("test/top1_")}

    def reconstruct(
        self,
        checkpoint: Path,
        out: Path,
        seed: int,
        clip: tuple[str, str],
        strength: float | None = None,
        split: str = "test",
        task: str | None = None,
    ) -> dict | None:
        """``lightning-fcae reconstruct`` of ``split`` into ``out`` (img2img from the low-level image at
        ``strength``; None: from noise); its metrics."""
        options = self.plan.get("reconstruct") or {}
        args = ["reconstruct", "--ckpt", str(checkpoint), "--data", self.data_dir, "--out", str(out)]
        args += ["--seed", str(seed), "--clip-model", clip[0], "--clip-pretrained", clip[1], "--split", split]
        if strength is not None:
            args += ["--init", "lowlevel", "--strength", str(strength)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            args += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
        self.run(out, {"reconstruct": args}, args, config_name="command.yaml", task=task)
        metrics = out / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.is_file() else None

    def choose_strength(self, checkpoint: Path, out: Path, seed: int, clip: tuple[str, str]) -> float | None:
        """img2img's strength, chosen on val (never on test): the val split reconstructed at each of
        :data:`STRENGTHS` into ``out/<strength>``, scored by :func:`strength_score`; the choice and every
        score in ``out/choice.json``."""
        key = self.task_key(out, "strength")
        path = out / "choice.json"
        scores = {}
        for strength in STRENGTHS:
            metrics = self.reconstruct(checkpoint, out / f"{strength:g}", seed, clip, strength, "val", key)
            if metrics is not None:
                scores[strength] = strength_score(metrics)
        if self.dry_run or not scores:
            return STRENGTHS[len(STRENGTHS) // 2]
        self.progress.finish(key, None)
        self.progress.ran_work += self.progress.weights.get(key, 0.0)
        best = max(scores, key=lambda s: (scores[s], s))  # ties: the higher strength (more of the LDM)
        atomic.write_text(
            path,
            json.dumps({"strength": best, "val_scores": scores, "criterion": STRENGTH_CRITERION}, indent=2),
        )
        print(
            f"{out.relative_to(self.out)}: img2img strength {best:g} chosen on val ({STRENGTH_CRITERION})",
            flush=True,
        )
        return best
