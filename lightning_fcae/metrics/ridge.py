"""Closed-form ridge regression from voxels, for every penalty at the cost of one decomposition.

The simple yardstick beside every deep figure (``data check``, the pipeline's ridge rows): one thin SVD
of the centred training voxels serves every penalty and every target (pixels, labels, CLIP embeddings,
their shuffled controls), so choosing the penalty on val costs seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class RidgeMap:
    """A fitted ridge as explicit weights: ``predict(x) = x @ weight + bias``."""

    weight: np.ndarray  # [V, K]
    bias: np.ndarray  # [K]
    alpha: float
    val_score: float  # the val score that chose alpha

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight + self.bias


def fit_ridge_map(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_score: Callable[[np.ndarray], float]
) -> RidgeMap:
    """Ridge ``train_x [n, V] -> train_y [n, K]`` with the penalty whose val predictions ``[m, K]`` score
    best by ``val_score`` (higher is better; ties to the stronger penalty): the yardstick's fit, and the
    initial value of stage 2's linear path."""
    ridge = Ridge(train_x)
    fit = ridge.fit(train_y)
    projected = ridge.project(val_x)
    scores = [val_score(ridge.predict(projected, fit, alpha)) for alpha in ridge.alphas]
    alpha = best_alpha(scores, ridge.alphas)
    weight = (ridge.v * (ridge.s / (ridge.s**2 + alpha))) @ fit[0]  # V K
    return RidgeMap(weight, fit[1] - ridge.x_mean @ weight, alpha, max(scores))


def principal_directions(y: np.ndarray, rank: int, max_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The ``rank`` leading principal directions ``[k, D]`` (k <= rank: at most the data's rank) and the
    mean ``[D]`` of targets ``y [n, D]``: a ridge to ``(y - mean) @ directions.T`` is a reduced-rank ridge.
    At most ``max_rows`` evenly spaced rows estimate them (one eigendecomposition of at most that size)."""
    if len(y) > max_rows:
        y = y[np.linspace(0, len(y) - 1, max_rows).round().astype(int)]
    mean = y.mean(0)
    centred = (y - mean).astype(np.float64)
    wide = centred.shape[0] <= centred.shape[1]
    evals, vecs = np.linalg.eigh(centred @ centred.T if wide else centred.T @ centred)
    order = np.argsort(evals)[::-1][: min(rank, int((evals > 1e-9 * evals.max()).sum()))]
    directions = centred.T @ vecs[:, order] / np.sqrt(evals[order]) if wide else vecs[:, order]
    return directions.T, mean
