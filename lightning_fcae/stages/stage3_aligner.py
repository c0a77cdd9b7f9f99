"""The fMRI side stage 3 starts from: the encoder and token map of a stage-2 checkpoint (on the CLIP grid
it aligned to), or a stage-1 encoder with a new token map."""

from __future__ import annotations

from ..models.align import FMRIAligner
from ..models.factory import load_fmri_aligner, load_model


def stage3_aligner(
    path: str, clip_tokens: int, clip_dim: int, embed_rank: int = 8, pinned: bool = True
) -> FMRIAligner:
    """The fMRI side of stage 3 from a stage-2 or stage-1 checkpoint, on CPU: encoder + token map onto a
    ``clip_tokens x clip_dim`` grid, without the fCAE regressor (stage 3 encodes every patch).

    A stage-2 checkpoint brings the token map it trained: on that grid, which must be the requested one
    when it is ``pinned`` (by an LDM pretrained on that CLIP). A stage-1 encoder (MinD-Vis, vis-dec,
    Table 3's F row) gets a new, randomly initialised token map that stage 3 trains.
    """
    aligner = load_fmri_aligner(path)
    if aligner is None:  # stage 1
        return FMRIAligner(load_model(path, "model").encoder, None, clip_tokens, clip_dim, embed_rank)
    grid = token_grid(aligner)
    if pinned and grid != (clip_tokens, clip_dim):
        raise ValueError(
            f"{path} aligns the fMRI encoder to {grid[0]} x {grid[1]} CLIP tokens, the LDM's condition takes "
            f"{clip_tokens} x {clip_dim}: stage 2 and the LDM must use the same CLIP model"
        )
    aligner.regressor = None  # stage 3 encodes every patch (model_args follow: None recorded)
    return aligner


def token_grid(aligner: FMRIAligner) -> tuple[int, int]:
    """(tokens, width) of the CLIP grid an aligner's token map writes."""
    return aligner.mapper.token_map.out_features, aligner.mapper.proj.out_features
