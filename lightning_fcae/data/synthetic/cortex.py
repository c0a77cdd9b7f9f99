"""A simulated visual cortex: per-subject voxel responses to the synthetic scenes.

Why this model: the benchmark must reward what real fMRI decoders exploit and punish what they cannot do.
Voxels are laid out like a flattened ventral stream: early areas (V1-like, small receptive fields near
the fovea, pure low-level features) through higher areas (large fields, mostly object identity, colour
and count). The low-level part pools fixed filter maps (luminance, two colour-opponent channels, four
orientation energies) in Gaussian receptive fields, so image layout is linearly decodable but blurred;
the semantic part reads the scene description through sparse weights, so labels are decodable without
being visible in every voxel. Neighbouring voxel indices have nearby receptive fields and smoothed
weights, which gives masked voxel modelling the spatial redundancy real cortex has. Each voxel's signal is
put on unit variance (calibrated on held-out scenes) and trial noise is added at a per-voxel SNR spread
around the profile's ``snr``, so single trials are weak like NSD betas. Part of that noise is a trial-wise
jitter of the semantic features shared across voxels (see ``Cortex.measure``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import convolve, gaussian_filter1d

from .scenes import COLOR_NAMES, MAX_OBJECTS, SHAPES, Scene

GRID = 32  # filter maps are computed on (at most) a 32x32 version of each image
N_CHANNELS = 7  # luminance, red-green, blue-yellow, 4 orientation energies
SEMANTIC_DIM = len(SHAPES) + len(COLOR_NAMES) + MAX_OBJECTS
# (hierarchy level, share of voxels) per area, early to late: V1, V2, V3, hV4, higher ventral cortex.
# The level sets both the semantic share of a voxel's signal and its receptive-field size.
_AREAS = ((0.0, 0.25), (0.15, 0.2), (0.3, 0.15), (0.55, 0.15), (0.9, 0.25))
_SMOOTH = 2.0  # voxels: point-spread of the weights along the voxel index (fMRI blurs neighbours together)
_SEMANTIC_JITTER = 0.4  # trial-to-trial sd of the semantic features (in one-hot units), see ``measure``
_MIN_INDEPENDENT = 0.25  # at least this share of each voxel's noise variance is independent of other voxels


def _gabors(size: int = 7, wavelength: float = 4.0, sigma: float = 1.5) -> np.ndarray:
    """``[4, 2, size, size]`` even/odd Gabor pairs at 0/45/90/135 degrees (quadrature -> phase-free energy)."""
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    envelope = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    bank = []
    for theta in np.arange(4) * math.pi / 4:
        phase = 2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / wavelength
        even, odd = envelope * np.cos(phase), envelope * np.sin(phase)
        bank.append([even - even.mean(), odd])  # zero-mean: no response to uniform luminance
    return np.asarray(bank, np.float32)


_GABORS = _gabors()


def image_features(images: Sequence[np.ndarray], grid: int) -> np.ndarray:
    """uint8 images ``[H, W, 3]`` -> filter maps ``[n, N_CHANNELS, grid * grid]`` float32."""
    small = (
        np.stack(
            [np.asarray(Image.fromarray(im).resize((grid, grid), Image.Resampling.BOX)) for im in images]
        ).astype(np.float32)
        / 255.0
    )  # [n, g, g, 3]
    r, g, b = small[..., 0], small[..., 1], small[..., 2]
    lum = (r + g + b) / 3
    maps = [lum - 0.5, r - g, (r + g) / 2 - b]
    for even, odd in _GABORS:  # batched over images: the kernel has a singleton image axis
        e = convolve(lum, even[None], mode="nearest")
        o = convolve(lum, odd[None], mode="nearest")
        maps.append(np.sqrt(e**2 + o**2))
    return np.stack(maps, 1).reshape(len(images), N_CHANNELS, grid * grid)


def semantic_features(scenes: Sequence[Scene]) -> np.ndarray:
    """``[n, SEMANTIC_DIM]``: area-weighted shape and colour one-hots, plus a count one-hot."""
    out = np.zeros((len(scenes), SEMANTIC_DIM), np.float32)
    n_shapes, n_colors = len(SHAPES), len(COLOR_NAMES)
    for i, scene in enumerate(scenes):
        areas = np.array([o.radius**2 for o in scene.objects])
        for obj, weight in zip(scene.objects, areas / areas.sum()):
            out[i, obj.shape] += weight
            out[i, n_shapes + obj.color] += weight
        out[i, n_shapes + n_colors + len(scene.objects) - 1] = 1.0
    return out


def _moments(x: np.ndarray) -> np.ndarray:
    """``[n, V]`` -> ``[2, V]`` mean and (floored) std."""
    return np.stack([x.mean(0), np.maximum(x.std(0), 1e-6)])


@dataclass
class Cortex:
    """One subject's voxels. ``create`` samples the anatomy; ``signal`` and ``measure`` simulate a scan."""

    rf: np.ndarray  # [grid*grid, V] Gaussian receptive fields, each column sums to 1
    channel_w: np.ndarray  # [N_CHANNELS, V]
    semantic_w: np.ndarray  # [SEMANTIC_DIM, V]
    mix: np.ndarray  # [V] share of a voxel's signal variance that is semantic
    baseline: np.ndarray  # [V] arbitrary offset and gain, so normalisation stats are not a no-op
    gain: np.ndarray  # [V]
    norm: np.ndarray  # [6, V] calibration: mean and std of the low-level drive, semantic drive, their mix
    semantic_gain: np.ndarray  # [SEMANTIC_DIM, V] d signal / d semantic features, set by calibration
    noise_sd: np.ndarray  # [V] independent noise, in units of the (unit-variance) signal

    @classmethod
    def create(
        cls,
        n_voxels: int,
        snr: float,
        rng: np.random.Generator,
        grid: int,
        calibration: tuple[np.ndarray, np.ndarray],
    ) -> Cortex:
        """Sample a subject; ``calibration`` = (image features, semantic features) of held-out scenes,
        used to put every voxel's signal on unit variance so ``snr`` means what it says."""
        shares = np.array([s for _, s in _AREAS]) * rng.uniform(0.8, 1.2, len(_AREAS))
        bounds = np.round(np.cumsum(shares / shares.sum()) * n_voxels).astype(int)
        area = np.searchsorted(bounds, np.arange(n_voxels), side="right")  # [V] area index
        level = np.array([lv for lv, _ in _AREAS])[area]

        # retinotopy: more voxels near the fovea; within an area, order voxels by polar-angle wedge and
        # then eccentricity (snaking), so consecutive voxels have neighbouring receptive fields
        ecc = 0.7 * rng.random(n_voxels) ** 1.6
        polar = rng.uniform(0, 2 * math.pi, n_voxels)
        wedge = (polar // (math.pi / 4)).astype(int)
        order = np.lexsort((np.where(wedge % 2 == 0, ecc, -ecc), wedge, area))
        ecc, polar = ecc[order], polar[order]
        cx, cy = 0.5 + ecc * np.cos(polar), 0.5 + ecc * np.sin(polar)
        sigma = (0.03 + 0.12 * level) * (0.6 + 1.7 * ecc) * rng.lognormal(0, 0.2, n_voxels)
        pos = (np.arange(grid, dtype=np.float32) + 0.5) / grid
        px, py = np.meshgrid(pos, pos)  # [g, g] each; row-major like the feature maps
        d2 = (px.reshape(-1, 1) - cx) ** 2 + (py.reshape(-1, 1) - cy) ** 2  # [g*g, V]
        rf = np.exp(-d2 / (2 * sigma**2))
        rf[rf < 1e-3 * rf.max(0)] = 0.0  # truncate the tails: denormal floats would make every product crawl
        rf = (rf / rf.sum(0, keepdims=True)).astype(np.float32)

        def smooth(x: np.ndarray, width: float = _SMOOTH) -> np.ndarray:
            return gaussian_filter1d(x, width, axis=-1, mode="nearest").astype(np.float32)

        channel_w = rng.standard_normal((N_CHANNELS, n_voxels))
        channel_w[3:] = np.abs(channel_w[3:])  # orientation energy drives voxels up, like contrast does
        sparse = rng.standard_normal((SEMANTIC_DIM, n_voxels)) * (rng.random((SEMANTIC_DIM, n_voxels)) < 0.15)
        mix = np.clip(smooth(level + rng.normal(0, 0.1, n_voxels)), 0, 1)
        reliability = rng.lognormal(-0.125, 0.5, n_voxels)  # mean-one spread of SNR across voxels
        cortex = cls(
            rf=rf,
            channel_w=smooth(channel_w),
            semantic_w=smooth(sparse, 2 * _SMOOTH),  # sparse patches, like category-selective regions
            mix=mix,
            baseline=rng.normal(0, 1, n_voxels).astype(np.float32),
            gain=rng.lognormal(0, 0.3, n_voxels).astype(np.float32),
            norm=np.tile(np.array([[0.0], [1.0]], np.float32), (3, n_voxels)),  # identity until calibrated
            semantic_gain=np.zeros((SEMANTIC_DIM, n_voxels), np.float32),
            noise_sd=np.zeros(n_voxels, np.float32),
        )
        cortex._calibrate(calibration, snr * reliability)
        return cortex

    def _calibrate(self, calibration: tuple[np.ndarray, np.ndarray], snr: np.ndarray) -> None:
        """Unit signal variance per voxel, then split the noise budget ``1 / snr`` (per voxel) between the
        shared semantic jitter and independent noise."""
        low, sem = self._raw(*calibration)
        self.norm[0:2], self.norm[2:4] = _moments(low), _moments(sem)
        self.norm[4:6] = _moments(self.signal(*calibration))
        _, _, _, sem_sd, _, mix_sd = self.norm
        self.semantic_gain = (self.semantic_w * np.sqrt(self.mix) / (sem_sd * mix_sd)).astype(np.float32)
        shared = _SEMANTIC_JITTER**2 * np.square(self.semantic_gain).sum(0)  # [V] variance from the jitter
        independent = np.maximum(1 / snr - shared, _MIN_INDEPENDENT / snr)
        self.noise_sd = np.sqrt(independent).astype(np.float32)

    @property
    def n_voxels(self) -> int:
        return self.rf.shape[1]

    def _raw(self, features: np.ndarray, semantics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """features ``[n, C, g*g]``, semantics ``[n, S]`` -> low-level and semantic drive, ``[n, V]`` each."""
        low = np.zeros((features.shape[0], self.n_voxels), np.float32)
        for c in range(N_CHANNELS):  # one [n, g*g] x [g*g, V] product per channel keeps memory at [n, V]
            low += (features[:, c] @ self.rf) * self.channel_w[c]
        return low, semantics @ self.semantic_w

    def signal(self, features: np.ndarray, semantics: np.ndarray) -> np.ndarray:
        """Noise-free response ``[n, V]``; unit variance per voxel over the calibration scenes once calibrated."""
        low, sem = self._raw(features, semantics)
        low_mu, low_sd, sem_mu, sem_sd, mix_mu, mix_sd = self.norm
        out = np.sqrt(1 - self.mix) * (low - low_mu) / low_sd + np.sqrt(self.mix) * (sem - sem_mu) / sem_sd
        return ((out - mix_mu) / mix_sd).astype(np.float32)

    def measure(self, signal: np.ndarray, repeats: int, rng: np.random.Generator) -> np.ndarray:
        """One image's signal ``[V]`` -> ``repeats`` noisy trials ``[repeats, V]`` in arbitrary scanner units.

        Besides independent voxel noise, each trial jitters the semantic features themselves (recognition
        and attention vary from trial to trial). That noise is shared by every voxel reading those features,
        so pooling voxels cannot average it away, only repeating the image can: as in real cortex, this is
        what keeps category decoding from being trivially perfect with thousands of voxels.
        """
        jitter = rng.standard_normal((repeats, SEMANTIC_DIM), dtype=np.float32) * _SEMANTIC_JITTER
        noise = rng.standard_normal((repeats, self.n_voxels), dtype=np.float32) * self.noise_sd
        return self.baseline + self.gain * (signal + jitter @ self.semantic_gain + noise)
