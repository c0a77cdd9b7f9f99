"""Closed-form ridge regression from voxels, for every penalty at the cost of one decomposition.

The simple yardstick beside every deep figure (``data check``, the pipeline's ridge rows): one thin SVD
of the centred training voxels serves every penalty and every target (pixels, labels, CLIP embeddings,
their shuffled controls), so choosing the penalty on val costs seconds.
"""

from __future__ import annotations

import numpy as np

ALPHAS = np.logspace(-3, 3, 13)  # penalties, relative to the mean squared singular value of train


class Ridge:
    """``fit(y)`` then ``predict(project(x), fit, alpha)`` for any of :attr:`alphas`."""

    def __init__(self, x: np.ndarray):  # x [n, V]
        self.x_mean = x.mean(0)
        xc = (x - self.x_mean).astype(np.float64)
        # SVD via the eigendecomposition of the smaller Gram matrix: ~10x faster than LAPACK's SVD here
        wide = xc.shape[0] <= xc.shape[1]
        evals, vecs = np.linalg.eigh(xc @ xc.T if wide else xc.T @ xc)
        keep = evals > 1e-9 * evals.max()
        self.s = np.sqrt(evals[keep])  # [r]
        self.u = vecs[:, keep] if wide else xc @ vecs[:, keep] / self.s  # [n, r]
        self.v = xc.T @ vecs[:, keep] / self.s if wide else vecs[:, keep]  # [V, r]
        self.alphas = ALPHAS * np.mean(self.s**2)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Voxels ``[m, V]`` -> coordinates on the right singular vectors ``[m, r]`` (alpha-free)."""
        return (x - self.x_mean) @ self.v

    def fit(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Targets ``[n, D]`` -> (``U^T y`` ``[r, D]``, target mean ``[D]``), the alpha-free part of the fit."""
        mean = y.mean(0)
        return self.u.T @ (y - mean), mean

    def predict(self, proj: np.ndarray, fit: tuple[np.ndarray, np.ndarray], alpha: float) -> np.ndarray:
        return (proj * (self.s / (self.s**2 + alpha))) @ fit[0] + fit[1]


def best_alpha(scores: list[float], alphas: np.ndarray) -> float:
    """The alpha with the best val score; ties go to the stronger penalty (the more conservative fit)."""
    return float(max(zip(scores, alphas))[1])
