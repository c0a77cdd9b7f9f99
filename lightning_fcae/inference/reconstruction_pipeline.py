"""fMRI -> images in diffusers' conventions: ``FMRIReconstructionPipeline``.

::

    pipe = FMRIReconstructionPipeline.from_pretrained("results/demo/fcae/seed0")  # run folder, stage-3
    images = pipe(fmri, subject="subj01", num_inference_steps=50, generator=torch.Generator().manual_seed(0)).images
    pipe.save_pretrained("my-pipeline")  # safetensors + JSON; loads with no training code, no pickle

``from_pretrained`` takes an exported folder (``model_index.json``, one subfolder per component, as every
diffusers pipeline), a stage-3 checkpoint, or a run folder holding one (``stage3/checkpoints/last.ckpt``).
A stage-3 checkpoint holds the fMRI encoder, token map, condition encoder and the UNet's fine-tuned layers;
the frozen rest comes from the LDM folder it records (found next to the checkpoint as it was when trained,
then at its absolute path; ``ldm=`` overrides; its sha256 must match). ``lightning-fcae reconstruct`` runs
through this pipeline too.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel, VQModel
from diffusers.utils import numpy_to_pil
from einops import rearrange

from ..files.atomic import atomic_folder
from ..models.condition import ClipCondition
from ..models.factory import CheckpointFormatError, checkpoint_models, load_model, read_checkpoint
from ..models.fmri_condition import FMRIConditionEncoder, fmri_batch
from ..models.ldm import add_time_conditioning, build_ldm, load_ldm, vq_downsampling
from ..models.ldm_reference import ldm_reference
from ..models.linear_path import LowLevelDecoder
from .sampling import check_init_images, check_strength, sample_conditioned

RUN_CHECKPOINTS = ("stage3/checkpoints/last.ckpt", "checkpoints/last.ckpt")


class MissingLDMError(FileNotFoundError):
    """The frozen LDM a stage-3 checkpoint was trained on is not where it recorded it."""


class MissingLowLevelError(ValueError):
    """img2img from the low-level image asked of a pipeline that has no low-level decoder."""


def find_stage3_checkpoint(path: str | Path) -> Path:
    """``path`` itself (a file) or the stage-3 ``last.ckpt`` of a run folder."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in RUN_CHECKPOINTS:
        if (path / candidate).is_file():
            return path / candidate
    raise FileNotFoundError(
        f"{path} is neither an exported pipeline (model_index.json), a stage-3 checkpoint, nor a run folder "
        f"with {' or '.join(RUN_CHECKPOINTS)}"
    )


def resolve_ldm(recorded: dict, checkpoint_path: Path, override: str | Path | None = None) -> Path:
    """The LDM folder of a stage-3 checkpoint: ``override``, else the recorded path relative to the
    checkpoint's folder (a run folder moved with its LDM inside), else the recorded absolute path."""
    candidates = [Path(override)] if override else []
    candidates += [checkpoint_path.parent / recorded["relative"], Path(recorded["path"])]
    altered = []
    for folder in candidates:
        if folder.is_dir():
            # the fingerprint the checkpoint recorded; an unchanged folder is not hashed again
            if ldm_reference(folder, recorded)["sha256"] == recorded["sha256"]:
                return folder
            altered.append(str(folder))
    if altered:
        raise MissingLDMError(
            f"the LDM at {' and '.join(altered)} is not the one {checkpoint_path} was trained on (sha256 "
            f"{recorded['sha256'][:12]}... differs): pass the right folder (ldm= / --ldm)"
        )
    raise MissingLDMError(
        f"the frozen LDM that {checkpoint_path} was fine-tuned from (sha256 {recorded['sha256'][:12]}...) is at "
        f"neither {candidates[-2]} nor {candidates[-1]}: pass its folder (ldm= / --ldm)"
    )


class FMRIReconstructionPipeline(DiffusionPipeline):
    """Images from fMRI: fMRI encoder -> condition encoder -> DDIM with classifier-free guidance -> VQ.

    Components: ``fmri_encoder`` (:class:`FMRIConditionEncoder`), ``condition`` (:class:`ClipCondition`),
    ``unet``, ``vqvae``, ``scheduler`` (the LDM's training DDPM schedule; sampling uses DDIM on it), and
    ``lowlevel`` (:class:`LowLevelDecoder`, optional: the ridge's voxels -> pixels map of a stage 3 trained
    with ``lowlevel: ridge``, whose images :meth:`lowlevel_image` makes for img2img).
    Config: ``text_slot`` (stage 3 also fed the fMRI embedding into the caption slot), ``latent_size``,
    and the defaults ``num_inference_steps`` / ``guidance_scale`` the model was validated with.
    """

    model_cpu_offload_seq = "fmri_encoder->condition->unet->vqvae"
    _optional_components = ["lowlevel"]

    def __init__(
        self,
        fmri_encoder: FMRIConditionEncoder,
        condition: ClipCondition,
        unet: UNet2DConditionModel,
        vqvae: VQModel,
        scheduler: DDPMScheduler,
        text_slot: bool = False,
        latent_size: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        lowlevel: LowLevelDecoder | None = None,
    ):
        super().__init__()
        self.register_modules(
            fmri_encoder=fmri_encoder,
            condition=condition,
            unet=unet,
            vqvae=vqvae,
            scheduler=scheduler,
            lowlevel=lowlevel,
        )
        self.register_to_config(
            text_slot=text_slot,
            latent_size=latent_size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, **kwargs
    ) -> FMRIReconstructionPipeline:
        """An exported folder (diffusers' loader, ``**kwargs`` as there) or a stage-3 checkpoint / run
        folder (:meth:`from_checkpoint`; ``ldm=`` names the LDM folder when it has moved)."""
        path = Path(pretrained_model_name_or_path)
        if (path / "model_index.json").is_file():
            return super().from_pretrained(path, **kwargs)
        return cls.from_checkpoint(find_stage3_checkpoint(path), **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, ldm: str | Path | None = None) -> FMRIReconstructionPipeline:
        """Rebuild from a stage-3 (``LDMFinetune``) checkpoint, strictly, on CPU."""
        path = Path(path)
        checkpoint = read_checkpoint(path)
        models = checkpoint_models(checkpoint, path)
        if "conditioner" not in models:
            raise CheckpointFormatError(
                f"{path} is not an LDMFinetune (stage 3) checkpoint: no fMRI conditioner"
            )
        hp = checkpoint.get("hyper_parameters", {})
        aligner, condition = (
            load_model(path, "aligner", checkpoint),
            load_model(path, "conditioner", checkpoint),
        )
        recorded = checkpoint.get("ldm")
        parts = load_ldm(resolve_ldm(recorded, path, ldm)) if recorded else build_ldm(hp["ldm_config"])
        unet = add_time_conditioning(parts.unet, condition.config.clip_dim)
        _load_part(unet, "unet", checkpoint["state_dict"], partial=recorded is not None, path=path)
        _load_part(parts.vq, "vq", checkpoint["state_dict"], partial=recorded is not None, path=path)
        image_size = hp.get("image_size")
        latent = image_size // vq_downsampling(parts.vq) if image_size else None
        lowlevel = load_model(path, "lowlevel", checkpoint).eval() if "lowlevel" in models else None
        return cls(
            FMRIConditionEncoder.from_aligner(aligner, checkpoint.get("fmri_preprocessing")).eval(),
            condition.eval(),
            unet.eval(),
            parts.vq.eval(),
            parts.scheduler,
            text_slot=hp.get("text_slot", False),
            latent_size=latent,
            num_inference_steps=hp.get("sample_steps", 50),
            guidance_scale=hp.get("guidance_scale", 3.0),
            lowlevel=lowlevel,
        )

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' ``save_pretrained``, atomically (:func:`~lightning_fcae.files.atomic.atomic_folder`):
        a kill mid-export leaves the previous export whole (or none), never a folder of new config files
        beside old or cut-off weights."""
        with atomic_folder(save_directory) as tmp:
            super().save_pretrained(tmp, **kwargs)

    @property
    def image_size(self) -> int:
        """Side of the images this pipeline makes."""
        latent = self.config.latent_size or self.unet.config.sample_size
        return latent * vq_downsampling(self.vqvae)

    @torch.no_grad()
    def lowlevel_image(self, fmri, subject: str | list[str] | None = None) -> torch.Tensor:
        """The low-level image of each fMRI row, ``[b, 3, H, W]`` in [0, 1] at this pipeline's image size:
        the init image of img2img (``pipe(fmri, subject, image=pipe.lowlevel_image(fmri, subject),
        strength=s)``). ``fmri`` / ``subject`` as in :meth:`__call__`; only for a pipeline with a
        ``lowlevel`` decoder (stage 3 trained with ``lowlevel: ridge``)."""
        if self.lowlevel is None:
            raise MissingLowLevelError(
                "this pipeline has no low-level decoder: train stage 3 with model.init_args.lowlevel: ridge"
            )
        x, names = self.fmri_encoder.prepare(fmri, subject)
        if names is None:
            raise ValueError("the low-level decoder is per subject: pass subject= (a name, or one per row)")
        images = self.lowlevel(
            x.to(self.lowlevel.dtype), self.lowlevel.map.subject_indices(names).to(x.device)
        )
        size = self.image_size
        if images.shape[-1] != size:
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        return images.float().clamp(0, 1)

    def encode_fmri(
        self, fmri: torch.Tensor, subject: str | list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[b, n]`` fMRI -> cross-attention context ``[b, 1+T, C]`` and pooled ``[b, D]``."""
        tokens = self.fmri_encoder(fmri.to(self.device), subject)  # b T D, centred CLIP-space directions
        text = tokens[:, 0] if self.config.text_slot else None
        return self.condition(tokens, text, centred=True)

    @torch.no_grad()
    def __call__(
        self,
        fmri,
        subject: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_images_per_fmri: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        image: torch.Tensor | None = None,
        strength: float = 1.0,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Reconstruct the images seen during ``fmri``: diffusers' ``ImagePipelineOutput`` (``.images``), or
        the tuple ``(images,)`` with ``return_dict=False``, as every diffusers pipeline returns.

        Args:
            fmri: ``[b, n_subject]`` raw voxels of ``subject`` (array or tensor; ``[n]`` for one), z-scored
                here with the training statistics; or, with ``subject`` a list of one name per row (rows may
                mix subjects) or None, z-scored and padded already, as the DataModule delivers it (None is
                refused by an encoder with a per-subject linear path, which must know each row's subject).
            num_inference_steps / guidance_scale: DDIM steps and classifier-free guidance (default: the
                values the model was validated with).
            num_images_per_fmri: samples per fMRI row.
            generator: one for the batch, or one per fMRI row (a row's images then depend on its own
                generator only, not on the rest of the batch).
            output_type: ``"pil"`` (``.images`` is a list of ``b * num_images_per_fmri`` images, row-major),
                ``"pt"`` (a ``[b, num_images_per_fmri, 3, H, W]`` tensor in [0, 1]) or ``"np"`` (``b s H W 3``).
            image / strength: image-to-image, diffusers' arguments: ``image [b, 3, H, W]`` in [0, 1] at this
                pipeline's image size (:meth:`lowlevel_image` makes the low-level one), noised to
                ``strength`` of the way and denoised by that last part of the DDIM steps; 1.0 ignores the
                image (sampling from noise), 0.0 returns its VQ round trip.

        fMRI that is not ``[b, V]`` / ``[V]`` numbers, an empty batch, or one holding NaN or inf is an
        ``FMRIInputError`` naming the problem, before any model runs.
        """
        check_strength(strength)
        if output_type not in ("pil", "pt", "np"):
            raise ValueError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
        fmri = fmri_batch(fmri)
        if image is not None:
            image = torch.as_tensor(image, dtype=torch.float32).to(self.device)
            check_init_images(image, len(fmri), self.image_size)
        images = sample_conditioned(
            *self.encode_fmri(fmri, subject),
            self.condition,
            self.unet,
            self.vqvae,
            self.scheduler.config,
            samples=num_images_per_fmri,
            steps=num_inference_steps or self.config.num_inference_steps,
            guidance=self.config.guidance_scale if guidance_scale is None else guidance_scale,
            generator=generator,
            latent_size=self.config.latent_size,
            init_images=image,
            strength=strength,
        )  # b s 3 H W
        if output_type != "pt":
            array = rearrange(images.float().cpu(), "b s c h w -> b s h w c").numpy()
            images = array if output_type == "np" else numpy_to_pil(array.reshape(-1, *array.shape[2:]))
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def _load_part(module: torch.nn.Module, prefix: str, state: dict, partial: bool, path: Path) -> None:
    """Load ``prefix.*`` weights of a stage-3 state dict into ``module``: all of them for a checkpoint
    that keeps the whole LDM, else the fine-tuned ones over the LDM folder's (nothing unexpected)."""
    own = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
    missing, unexpected = module.load_state_dict(own, strict=False)
    if unexpected or (missing and not partial):
        raise CheckpointFormatError(
            f"{path}: the {prefix} weights do not fit the LDM (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
