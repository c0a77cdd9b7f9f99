"""The fMRI side of a reconstruction pipeline as a diffusers model: raw voxels -> CLIP-space tokens.

A diffusers ``ModelMixin`` so that ``FMRIReconstructionPipeline.save_pretrained`` writes it as a folder of
safetensors + ``config.json`` that loads with no training code and no pickle::

    raw voxels of subject s   b n_s   -> (x - mean_s) / std_s, zero-padded to V   b V
                                      -> FMRIAligner (encoder + token map)        b T D
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .align import FMRIAligner

SUBJECT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class FMRIInputError(ValueError):
    """fMRI handed to the reconstruction API that it cannot use: not numbers, not ``[b, V]`` or ``[V]``,
    an empty batch, or values that are not finite. Refused before any model runs, by name."""


def fmri_batch(fmri) -> torch.Tensor:
    """``fmri`` (a tensor or array, ``[b, V]`` or one sample ``[V]``) as a float32 ``[b, V]`` tensor, or an
    :class:`FMRIInputError` naming what is wrong: NaN or inf would otherwise flow through the models into
    garbage pixels without a word, and a stacked ``[b, repeats, V]`` would fail deep inside a convolution."""
    try:
        tensor = torch.as_tensor(fmri)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise FMRIInputError(
            f"fMRI must be a tensor or array of numbers, got {type(fmri).__name__} ({exc})"
        ) from exc
    if tensor.dtype == torch.bool or tensor.dtype.is_complex:
        raise FMRIInputError(f"fMRI must hold real numbers (a float or integer dtype), got {tensor.dtype}")
    tensor = tensor.float()
    if tensor.ndim == 1:
        tensor = tensor[None]
    if tensor.ndim != 2:
        raise FMRIInputError(
            f"fMRI must be [b, V] (a row of V voxels per sample) or [V], got shape {list(tensor.shape)}; "
            "average a sample's repeats first (fmri.mean(1) for [b, repeats, V])"
        )
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise FMRIInputError(f"fMRI is empty (shape {list(tensor.shape)}): nothing to reconstruct")
    bad = ~torch.isfinite(tensor)
    if bad.any():
        rows = bad.any(1).nonzero().flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise FMRIInputError(
            f"fMRI holds {int(bad.sum())} non-finite value(s) (NaN or inf) in {len(rows)} row(s): {shown}; "
            "impute or drop them before reconstructing"
        )
    return tensor


class FMRIConditionEncoder(ModelMixin, ConfigMixin):
    """``FMRIAligner`` plus each subject's voxel z-scoring (the training split's statistics).

    Args:
        aligner_args: :attr:`FMRIAligner.model_args` (encoder, token map; no regressor at inference).
        subject_voxels: voxel count per subject whose statistics are held; empty: inputs must come z-scored
            and padded already (as the DataModule delivers them).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, aligner_args: dict, subject_voxels: dict[str, int] | None = None):
        super().__init__()
        self.aligner = FMRIAligner.from_model_args(aligner_args)
        self.norm = nn.Module()  # buffers <subject>_mean / <subject>_std, [n_s] each
        for name, count in (subject_voxels or {}).items():
            if not SUBJECT_NAME.match(name):
                raise ValueError(f"subject name {name!r} must be letters, digits and underscores")
            self.norm.register_buffer(f"{name}_mean", torch.zeros(count))
            self.norm.register_buffer(f"{name}_std", torch.ones(count))

    @property
    def num_voxels(self) -> int:
        """The padded input length V the encoder takes."""
        return self.aligner.encoder.num_patches * self.aligner.encoder.patch_size

    def preprocess(self, fmri: torch.Tensor, subject: str | None) -> torch.Tensor:
        """``[b, n_s]`` raw voxels of ``subject`` -> ``[b, V]`` z-scored and zero-padded; with ``subject``
        None the input must already be ``[b, V]`` z-scored (the DataModule's ``fmri``)."""
        if subject is None:
            if fmri.shape[-1] > self.num_voxels:
                raise ValueError(f"fMRI of {fmri.shape[-1]} voxels; the encoder takes {self.num_voxels}")
            return F.pad(fmri, (0, self.num_voxels - fmri.shape[-1]))
        subjects = self.config.subject_voxels or {}
        if subject not in subjects:
            raise ValueError(
                f"no normalisation for subject {subject!r} (this pipeline holds {sorted(subjects) or 'none'}); "
                "pass subject=None with fMRI z-scored and padded as the DataModule delivers it"
            )
        if fmri.shape[-1] != subjects[subject]:
            raise ValueError(f"{subject} has {subjects[subject]} voxels, the fMRI given has {fmri.shape[-1]}")
        mean, std = getattr(self.norm, f"{subject}_mean"), getattr(self.norm, f"{subject}_std")
        return F.pad((fmri.to(mean) - mean) / std, (0, self.num_voxels - fmri.shape[-1]))

    def prepare(
        self, fmri: torch.Tensor, subject: str | list[str] | None
    ) -> tuple[torch.Tensor, list[str] | None]:
        """``fmri`` -> (``[b, V]`` z-scored and padded, each row's subject name or None).

        ``subject``: a name (raw voxels of that subject, z-scored here), or a list of one name per row
        (fMRI z-scored and padded already, as the DataModule delivers it: rows may mix subjects), or None
        (z-scored and padded already, subjects unknown). Bad input is an :class:`FMRIInputError`."""
        fmri = fmri_batch(fmri).to(self.device)
        if isinstance(subject, str):
            return self.preprocess(fmri, subject), [subject] * len(fmri)
        if subject is not None and len(subject) != len(fmri):
            raise ValueError(f"{len(subject)} subject names for {len(fmri)} fMRI rows")
        return self.preprocess(fmri, None), None if subject is None else list(subject)

    def forward(self, fmri: torch.Tensor, subject: str | list[str] | None = None) -> torch.Tensor:
        """``[b, n]`` fMRI -> CLIP-space tokens ``[b, T, D]`` (all patches visible); ``subject`` as in
        :meth:`prepare` (None is refused by an encoder with a per-subject linear path)."""
        fmri, names = self.prepare(fmri, subject)
        rows = None
        if self.aligner.linear is not None:
            if names is None:
                raise ValueError(
                    f"this fMRI encoder has a per-subject linear path ({self.aligner.linear.subjects}): pass "
                    "subject= (a name for raw voxels, or one name per row of z-scored fMRI)"
                )
            rows = self.aligner.linear.subject_indices(names).to(fmri.device)
        return self.aligner(fmri.to(self.dtype), subject=rows)

    @classmethod
    def from_aligner(cls, aligner: FMRIAligner, preprocessing: dict | None) -> FMRIConditionEncoder:
        """Wrap a trained aligner (weights copied) and a stage-3 checkpoint's ``fmri_preprocessing``."""
        stats = (preprocessing or {}).get("subjects", {})
        model = cls(aligner.model_args, {name: len(s["mean"]) for name, s in stats.items()})
        model.aligner.load_state_dict(aligner.state_dict(), strict=True)
        for name, s in stats.items():
            getattr(model.norm, f"{name}_mean").copy_(s["mean"])
            getattr(model.norm, f"{name}_std").copy_(s["std"])
        return model
