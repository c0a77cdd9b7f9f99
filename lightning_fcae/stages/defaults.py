"""What every stage's run starts from, said once: the shared config ``stage_defaults.yaml`` (the trainer's
callbacks and logger) and the precision. LightningCLI reads both (``lightning fit``); the pipeline lays
each stage config on the same file and its preflight checks the same precision."""

from __future__ import annotations

from pathlib import Path

# What every stage config shares (trainer callbacks, logger): LightningCLI's default config for every
# subcommand (lightning_fcae.cli.lightning_cli.FCAECLI), and the base the pipeline lays a stage config on
# (lightning_fcae.runs.plan.load_stage_config).
STAGE_DEFAULTS = Path(__file__).with_name("stage_defaults.yaml")


def default_precision() -> str:
    """bf16-mixed where the GPU supports it, full fp32 on CPU (bf16 matmuls are slow there)."""
    import torch  # here, not above: the pipeline's --help reads STAGE_DEFAULTS and must not wait for torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"
