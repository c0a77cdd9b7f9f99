"""Model cards of the shipped stand-ins: what made each file, on what, how long, how good, its hash."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files.hashing import sha256_file

RESUMED = " (the last part only: the run was interrupted and resumed from its last checkpoint)"


@dataclass
class Training:
    """One ``lightning fit`` run that produced (part of) a stand-in."""

    name: str
    run_dir: Path  # the pipeline's stage folder: run.yaml, done-fit.json

    @property
    def seconds(self) -> float:
        return self._done()["seconds"]

    @property
    def resumed(self) -> bool:
        """Whether the finishing run restarted from a checkpoint: its seconds then miss the earlier part."""
        return "--ckpt_path" in self._done()["command"]

    def _done(self) -> dict:
        return json.loads((self.run_dir / "done-fit.json").read_text())

    @property
    def steps(self) -> str:
        """The budget in the run's config (steps, or epochs when it was set in epochs)."""
        import yaml

        trainer = yaml.safe_load((self.run_dir / "run.yaml").read_text()).get("trainer", {})
        steps = trainer.get("max_steps", -1)
        return f"{steps} steps" if steps and steps > 0 else f"{trainer.get('max_epochs')} epochs"


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{torch.get_num_threads()} CPU threads ({platform.processor() or platform.machine()}), no GPU"


def write_card(
    folder: Path,
    title: str,
    purpose: str,
    trainings: list[Training],
    configs: dict[str, Path],
    weights: list[Path],
    dataset: dict,
    command: str,
    checks: list[str],
    date: str,
) -> Path:
    """``folder/CARD.md``; ``configs`` maps a config's name in the card to its copy beside the card."""
    source = dataset.get("source", {})
    profile = source.get("profile", {})
    lines = [
        f"# {title}",
        "",
        purpose,
        "",
        "| | |",
        "|---|---|",
        f"| made by | `{command}` (`make stand-ins`), which runs the configs below with `lightning fit` |",
        *(
            f"| config ({name}) | [`{path.name}`]({path.name}): `python -m lightning_fcae fit --config "
            f"{path.name}` reruns it (its paths point into the run folder of the command above) |"
            for name, path in configs.items()
        ),
        f"| data | `{dataset['name']}` (profile {profile.get('name', '?')}, generator seed "
        f"{source.get('seed', '?')}, generator v{source.get('generator_version', '?')}): training split only; "
        "val for monitoring; no test image, caption or fMRI |",
        "| seed | 0 (`seed_everything`) |",
        *(
            f"| training ({t.name}) | {t.steps}, {t.seconds / 60:.1f} min{RESUMED if t.resumed else ''} on "
            f"{hardware()}, {date} |"
            for t in trainings
        ),
        "| stored | float16 safetensors (trained in float32; the checks below ran on these files) |",
        *(f"| sha256 `{w.parent.name}/{w.name}` | `{sha256_file(w)}` |" for w in weights),
        "",
        "## Checks (`lightning-fcae stand-ins check`, test split)",
        "",
        "```",
        *checks,
        "```",
        "",
    ]
    path = folder / "CARD.md"
    path.write_text("\n".join(lines))
    return path
