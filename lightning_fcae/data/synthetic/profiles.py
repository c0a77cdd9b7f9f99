"""Named sizes of the synthetic benchmark.

``paper`` mirrors the NSD setup of the paper (subjects 1/2/5/7, their nsdgeneral voxel counts, ~8k train
images each, 900 shared test images at 256 px) so the full pipeline can be exercised at real scale.
``small`` is the same design shrunk to a CPU demo, ``tiny`` is for unit tests. The cortex model is the
same in every profile; only ``snr`` differs (tiny is cleaner so a few hundred samples show the signal).
"""

from __future__ import annotations

from dataclasses import dataclass

# nsdgeneral voxel counts of NSD subjects 1, 2, 5, 7 (the subjects with all 40 sessions)
PAPER_SUBJECTS = (1, 2, 5, 7)
PAPER_VOXELS = (15725, 10285, 9551, 9187)


@dataclass(frozen=True)
class SynthProfile:
    """One benchmark size. ``snr`` is the per-trial signal variance / noise variance of an average voxel."""

    name: str
    subjects: tuple[int, ...]
    voxels: tuple[int, ...]  # per subject, same order as ``subjects``
    train_images: int  # per subject, before carving out validation; each subject sees its own images
    test_images: int  # shared by all subjects (same image ids), 3 repeats each
    image_size: int
    snr: float = 0.3
    val_fraction: float = 0.1
    samples_per_shard: int = 1000

    def __post_init__(self) -> None:
        if len(self.subjects) != len(self.voxels) or not self.subjects:
            raise ValueError(f"profile {self.name!r}: need one voxel count per subject")
        if not 0 <= self.val_fraction < 1 or self.snr <= 0 or min(self.voxels) < 1:
            raise ValueError(f"profile {self.name!r}: need 0 <= val_fraction < 1, snr > 0, voxels >= 1")

    @property
    def val_images(self) -> int:
        return round(self.train_images * self.val_fraction)


def _scaled(divisor: int) -> tuple[int, ...]:
    return tuple(round(v / divisor) for v in PAPER_VOXELS)


PROFILES: dict[str, SynthProfile] = {
    p.name: p
    for p in (
        SynthProfile("paper", PAPER_SUBJECTS, PAPER_VOXELS, 8192, 900, 256, samples_per_shard=1000),
        SynthProfile("small", PAPER_SUBJECTS, _scaled(4), 1024, 100, 64, samples_per_shard=128),
        # tiny trains on 173 images: a higher SNR lets tests see the signal at that sample size
        SynthProfile("tiny", PAPER_SUBJECTS[:2], _scaled(32)[:2], 192, 48, 32, snr=1.0, samples_per_shard=64),
    )
}


def get_profile(profile: str | SynthProfile) -> SynthProfile:
    if isinstance(profile, SynthProfile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown synthetic profile {profile!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[profile]
