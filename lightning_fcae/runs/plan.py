"""Experiment plans (``experiments/*.yaml``): reading, checking and merging them, before anything runs.

A plan names the data, the CLIP and LDM weights, per-stage config overrides and the reconstruction
options; a typo in any of them is a :class:`PlanError` when the plan is loaded, not after hours of
training.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ..inference.parser import reconstruct_parser
from ..stages.defaults import STAGE_DEFAULTS


class PlanError(ValueError):
    """The plan file or the command line asks for something the pipeline cannot run."""


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``: dicts merge key by key, anything else (lists too) replaces, as
    jsonargparse does with several ``--config`` files; and as there, ``key+: items`` appends ``items`` (a
    list, or one item) to the list at ``key``."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(key, str) and key.endswith("+"):
            name, items = key[:-1], value if isinstance(value, list) else [value]
            before = merged.get(name)
            before = [] if before is None else before if isinstance(before, list) else [before]
            merged[name] = [*before, *copy.deepcopy(items)]
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


PLAN_KEYS = {
    "data_dir",
    "clip_model",
    "clip_pretrained",
    "pretrained_ldm",
    "stand_ins",
    "stages",
    "reconstruct",
}
RUN_OPTIONS = {"ckpt", "data_dir", "out", "seed", "clip_model", "clip_pretrained"}  # the pipeline's own


def reconstruct_options() -> set[str]:
    """What a plan's ``reconstruct:`` may set: the command's options less those each run fills in."""
    return {action.dest for action in reconstruct_parser()._actions if action.dest != "help"} - RUN_OPTIONS


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (a list compares as a whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(old.keys() | new.keys(), key=str)
        return [path for key in keys for path in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".") or "the config"]


def load_yaml(path: Path) -> dict:
    """A YAML mapping; a missing file, bad YAML or a non-mapping is a :class:`PlanError` naming the file."""
    if not path.is_file():
        raise PlanError(f"{path} does not exist")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PlanError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise PlanError(f"{path} must hold a mapping of keys to values, not a {type(content).__name__}")
    return content


def load_stage_config(path: Path) -> dict:
    """A stage config as LightningCLI resolves its keys: laid on :data:`STAGE_DEFAULTS` (its
    ``callbacks+`` appended to the shared callbacks, its logger's ``init_args`` merged into the shared
    logger), so that what the pipeline writes is the whole config and names every callback once."""
    return deep_merge(load_yaml(STAGE_DEFAULTS), load_yaml(path))


def check_plan(plan: dict, known_stages: list[str]) -> None:
    """Every key, stage override and reconstruct option of ``plan`` is one the pipeline uses."""
    unknown = set(plan) - PLAN_KEYS
    if unknown:
        raise PlanError(f"plan: unknown keys {sorted(unknown)}; known: {', '.join(sorted(PLAN_KEYS))}")
    if not isinstance(plan.get("reconstruct") or {}, dict):
        raise PlanError("plan: reconstruct must be a mapping of lightning-fcae reconstruct options")
    options = reconstruct_options()
    unknown = set(plan.get("reconstruct") or {}) - options
    if unknown:  # found now, not after every stage has trained
        raise PlanError(
            f"plan: unknown reconstruct options {sorted(unknown)}; known: {', '.join(sorted(options))}"
        )
    overrides = plan.get("stages") or {}
    unknown = set(overrides) - set(known_stages)
    if unknown:
        raise PlanError(f"plan: unknown stages {sorted(unknown)}; known: {', '.join(known_stages)}")
    for stage, override in overrides.items():
        if not isinstance(override, dict):
            raise PlanError(f"plan: stages.{stage} must be a mapping of config overrides")
    if plan.get("stand_ins") and (plan.get("clip_pretrained") or plan.get("pretrained_ldm")):
        raise PlanError(
            "plan: stand_ins (shipped synthetic stand-ins) and clip_pretrained / pretrained_ldm (real weights) "
            "both name the CLIP and LDM: set one or the other"
        )
    if plan.get("clip_pretrained") and not plan.get("clip_model"):
        raise PlanError("plan: clip_pretrained is set without clip_model (the open_clip model name)")
