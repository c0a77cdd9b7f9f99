"""The vis-dec baseline (Sun et al. 2023): the Double-contrastive MAE and its image-guided phase.

Phase 1 (DC-MAE) adds two InfoNCE terms to the MAE loss of :class:`~lightning_fcae.models.mae.MAE`.
As in vis-dec's code, both contrast the decoder's reconstruction of the whole voxel vector (visible
and masked patches), by cosine similarity at temperature 0.1, with the batch's other samples as
negatives; the query is always the reconstruction of the first masking::

    pred_1, pred_2 = D(E(x, mask_1)), D(E(x, mask_2))                         b N p each
    self-contrast    InfoNCE(query = (n p) of pred_1, keys = x)               b V vs b V
    cross-contrast   InfoNCE(query = (n p) of pred_1, keys = (n p) of pred_2) b V vs b V

Phase 2 (:class:`ImageGuidance`) lets the fMRI MAE and a frozen image representation exchange
cross-attention. vis-dec uses a frozen ViT-MAE image encoder; here the frozen image tokens are the
cached CLIP-stand-in tokens that come with the batch (``clip_image_tokens [b, T, D]``)::

    fMRI side    z = E(x, mask)                        b 1+k d
                 z = CrossBlocks(z, W_c c)             c: image tokens b T D -> b T d
                 pred = MAE decoder(z)                 b N p    MSE on masked patches
    image side   c_v = W_i c + pos, visible tokens     b t w    (image mask: image_mask_ratio)
                 c_v = CrossBlocks(c_v, W_f E(x))      fMRI latents, every patch: b 1+N d -> w
                 c_hat = Blocks(unshuffle(c_v, mask tokens) + pos)  b T w -> b T D
                 MSE(c_hat, layer_norm(c)) on masked image tokens

The cross-attention and image-side modules are training scaffolding like the decoder: stage 2 and 3
take only ``encoder``, which never sees an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lightning_fcae.models.mae import MAE, MAEOutput, mae_loss
from lightning_fcae.models.sizes import DecoderConfig, EncoderConfig, config_dicts
from lightning_fcae.models.vit import (
    Block,
    CrossBlock,
    gather_tokens,
    init_vit_weights,
    random_masking,
    run_block,
    sincos_pos_embed_1d,
    unpatchify,
)

if TYPE_CHECKING:
    from open_clip.loss import ClipLoss


def local_contrast() -> ClipLoss:
    """An open_clip ClipLoss over the local batch (imported here: open_clip is slow to import)."""
    from open_clip.loss import ClipLoss

    return ClipLoss()


def info_nce(
    query: torch.Tensor, keys: torch.Tensor, temperature: float, contrast: ClipLoss | None = None
) -> torch.Tensor:
    """One-directional InfoNCE, as vis-dec: row i of ``query [b, f]`` must pick row i of ``keys [b, f]``.

    Logits are cosine similarities over ``temperature`` (float32 under autocast). ``contrast`` is an
    open_clip ``ClipLoss``; with ``local_loss=True`` and a world size above 1 it gathers the keys of
    every rank (``gather_with_grad``: gradients reach them), so each query meets ``world * b`` keys.
    None: the local batch only.
    """
    contrast = contrast if contrast is not None else local_contrast()
    query, keys = F.normalize(query.float(), dim=-1), F.normalize(keys.float(), dim=-1)
    logits, _ = contrast.get_logits(query, keys, 1.0 / temperature)  # b (world b)
    return F.cross_entropy(logits, contrast.get_ground_truth(query.device, query.shape[0]))


@dataclass
class ImageReconstruction:
    pred: torch.Tensor  # [b, T, D] predicted image tokens
    target: torch.Tensor  # [b, T, D] layer-normalised frozen image tokens
    mask: torch.Tensor  # [b, T] 1 = masked


class ImageGuidance(nn.Module):
    """vis-dec phase 2's two-way cross-attention between the fMRI MAE and frozen image tokens.

    Args:
        encoder / decoder: the fMRI MAE's sizes; the fMRI side works at the encoder width, the image side
            at the decoder width (vis-dec: the image MAE's 512-wide decoder).
        num_tokens / token_dim: the frozen image tokens, T x D.
        depth: cross-attention blocks on each side (vis-dec: 3).
        decoder_depth: self-attention blocks of the image-token decoder (vis-dec: 6).
        image_side: build the image side (the image-token reconstruction); off when its weight is 0,
            so that DDP finds no unused parameters.
    """

    def __init__(
        self,
        encoder: EncoderConfig,
        decoder: DecoderConfig,
        num_tokens: int,
        token_dim: int,
        depth: int = 3,
        decoder_depth: int = 2,
        image_side: bool = True,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.model_args = {
            **config_dicts(encoder=encoder, decoder=decoder),
            "num_tokens": num_tokens,
            "token_dim": token_dim,
            "depth": depth,
            "decoder_depth": decoder_depth,
            "image_side": image_side,
        }
        self.grad_checkpointing = grad_checkpointing
        d, w = encoder.embed_dim, decoder.embed_dim
        self.image_to_fmri = nn.Linear(token_dim, d)
        self.fmri_cross = nn.ModuleList(
            CrossBlock(d, encoder.num_heads, encoder.mlp_ratio) for _ in range(depth)
        )
        if image_side:
            self.image_embed = nn.Linear(token_dim, w)
            self.fmri_to_image = nn.Linear(d, w)
            self.register_buffer("image_pos_embed", sincos_pos_embed_1d(num_tokens, w, cls_token=False)[None])
            self.image_cross = nn.ModuleList(
                CrossBlock(w, decoder.num_heads, decoder.mlp_ratio) for _ in range(depth)
            )
            self.image_mask_token = nn.Parameter(torch.zeros(1, 1, w))
            self.image_decoder = nn.ModuleList(
                Block(w, decoder.num_heads, decoder.mlp_ratio) for _ in range(decoder_depth)
            )
            self.image_norm = nn.LayerNorm(w)
            self.image_pred = nn.Linear(w, token_dim)
        self.apply(init_vit_weights)
        if image_side:
            nn.init.normal_(self.image_mask_token, std=0.02)

    def attend_image(self, latent: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """fMRI latents ``[b, 1 + k, d]`` attend to image tokens ``[b, T, D]``; same shape back."""
        context = self.image_to_fmri(tokens.to(latent.dtype))  # b T d
        for blk in self.fmri_cross:
            latent = run_block(blk, latent, context, checkpointing=self.grad_checkpointing)
        return latent

    def reconstruct_image(
        self,
        tokens: torch.Tensor,
        fmri_latent: torch.Tensor,
        mask_ratio: float,
        generator: torch.Generator | None = None,
    ) -> ImageReconstruction:
        """Masked image tokens ``[b, T, D]`` from the visible ones and the fMRI latents ``[b, 1 + N, d]``."""
        b, t = tokens.shape[:2]
        ids_keep, ids_mask, ids_restore = random_masking(b, t, mask_ratio, generator, tokens.device)
        x = gather_tokens(self.image_embed(tokens.to(fmri_latent.dtype)) + self.image_pos_embed, ids_keep)
        context = self.fmri_to_image(fmri_latent)  # b 1+N w
        for blk in self.image_cross:
            x = run_block(blk, x, context, checkpointing=self.grad_checkpointing)  # b t_keep w
        masked = self.image_mask_token.expand(b, ids_mask.shape[1], -1)
        x = gather_tokens(torch.cat([x, masked], dim=1), ids_restore) + self.image_pos_embed  # b T w
        for blk in self.image_decoder:
            x = run_block(blk, x, checkpointing=self.grad_checkpointing)
        pred = self.image_pred(self.image_norm(x))  # b T D
        target = F.layer_norm(tokens.float(), tokens.shape[-1:])
        mask = torch.zeros(b, t, device=tokens.device).scatter_(1, ids_mask, 1.0)
        return ImageReconstruction(pred, target, mask)


class DCMAE(MAE):
    """The MAE with vis-dec's phase-2 ``guidance`` (None in phase 1, where it is the plain MAE).

    Without guidance its state dict is exactly the MAE's, so phase 2 starts from a phase-1 (or
    MAEPretrain) checkpoint and only the guidance modules start from scratch.
    """

    def __init__(
        self,
        num_voxels: int,
        encoder: EncoderConfig,
        decoder: DecoderConfig,
        norm_pix_loss: bool = False,
        grad_checkpointing: bool = False,
        guidance: ImageGuidance | None = None,
    ):
        super().__init__(num_voxels, encoder, decoder, norm_pix_loss, grad_checkpointing)
        self.model_args["guidance"] = None if guidance is None else guidance.model_args
        self.guidance = guidance

    def forward(
        self,
        x: torch.Tensor,
        mask_ratio: float = 0.75,
        generator: torch.Generator | None = None,
        image_tokens: torch.Tensor | None = None,
    ) -> MAEOutput:
        """The MAE forward; with ``image_tokens [b, T, D]`` (phase 2) the visible latents attend to them
        before the decoder."""
        if image_tokens is None:
            return super().forward(x, mask_ratio, generator)
        if self.guidance is None:
            raise ValueError("image tokens given to a DCMAE built without image guidance")
        n = self.encoder.num_patches
        ids_keep, ids_mask, ids_restore = random_masking(x.shape[0], n, mask_ratio, generator, x.device)
        latent = self.guidance.attend_image(self.encoder(x, ids_keep), image_tokens)  # b 1+k d
        return self.output(x, self.decode(latent, ids_restore), ids_keep, ids_mask)

    def parameter_counts(self) -> dict[str, int]:
        counts = super().parameter_counts()
        if self.guidance is not None:
            guidance = sum(p.numel() for p in self.guidance.parameters())
            counts.update(decoder=counts["decoder"] - guidance, guidance=guidance)
        return counts


def image_reconstruction_loss(out: ImageReconstruction) -> torch.Tensor:
    """Mean squared error per image token over masked tokens only (float32)."""
    per_token = (out.pred.float() - out.target).pow(2).mean(dim=-1)  # b T
    return (per_token * out.mask).sum() / out.mask.sum()


@dataclass
class DCMAELossWeights:
    """Weights of DC-MAE's terms (0 switches a term off, and with it the work it needs).

    rec: masked-patch MSE (vis-dec: 1 in phase 1, 0.25 in phase 2). self_contrast / cross_contrast:
    InfoNCE of the first reconstruction against the input / against the reconstruction of a second random
    masking (1 and 0.5). image_rec: masked image-token MSE of phase 2 (1.5).
    """

    rec: float = 1.0
    self_contrast: float = 1.0
    cross_contrast: float = 0.5
    image_rec: float = 1.5


def dcmae_loss(
    model: DCMAE,
    fmri: torch.Tensor,
    mask_ratio: float,
    weights: DCMAELossWeights,
    temperature: float,
    image_tokens: torch.Tensor | None = None,
    image_mask_ratio: float = 0.5,
    contrast: ClipLoss | None = None,
) -> dict[str, torch.Tensor]:
    """vis-dec's loss: ``rec * MSE + self_contrast * InfoNCE(pred_1, x) + cross_contrast * InfoNCE(pred_1,
    pred_2) [+ image_rec * MSE(masked image tokens)]``; the terms unweighted, ``loss`` their weighted sum.

    ``image_tokens [b, T, D]``: phase 2 (the model's guidance attends to them). ``contrast``: an open_clip
    ``ClipLoss`` that gathers keys across ranks (None: the local batch, see :func:`info_nce`).
    """
    first = model(fmri, mask_ratio, image_tokens=image_tokens)
    terms = {"rec": mae_loss(first)["rec"]}
    query = unpatchify(first.pred)  # b V
    if weights.self_contrast > 0:
        terms["self_contrast"] = info_nce(query, unpatchify(first.target), temperature, contrast)
    if weights.cross_contrast > 0:
        second = model(fmri, mask_ratio, image_tokens=image_tokens)  # an independent masking
        terms["cross_contrast"] = info_nce(query, unpatchify(second.pred), temperature, contrast)
    if image_tokens is not None and weights.image_rec > 0:
        fmri_latent = model.encoder(fmri)  # every patch, no image: vis-dec's "fmri support"
        image = model.guidance.reconstruct_image(image_tokens, fmri_latent, image_mask_ratio)
        terms["image_rec"] = image_reconstruction_loss(image)
    terms["loss"] = sum(getattr(weights, name) * value for name, value in terms.items())
    return terms
