"""Scores of trained probes, computed on the host from their predictions: accuracy with a
Wilson interval, R² with a bootstrap interval, and the online (MDL) code length."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["wilson_interval", "r2_score", "r2_interval", "block_ends", "online_codelength"]


def wilson_interval(accuracy, n: int, *, z: float = 1.959963984540054):
    """Wilson score interval of a proportion ``accuracy`` (scalar or array) observed on ``n``
    trials; returns ``(low, high)`` (95% by default)."""
    p = np.asarray(accuracy, np.float64)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the interval always holds p; clipping removes rounding at p = 0 or 1
    return np.clip(np.minimum(centre - half, p), 0, 1), np.clip(np.maximum(centre + half, p), 0, 1)


def r2_score(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination of ``pred [..., n]`` against ``y [..., n]`` (last axis)."""
    res = np.sum((y - pred) ** 2, -1)
    tot = np.sum((y - np.mean(y, -1, keepdims=True)) ** 2, -1)
    return 1.0 - res / np.maximum(tot, np.finfo(np.float64).tiny)


def r2_interval(y: np.ndarray, pred: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95):
    """Percentile-bootstrap interval of the seed-averaged R².

    Args:
      y: ``[n]`` true values; pred: ``[..., S, n]`` predictions of ``S`` seeds.

    Returns:
      ``(low, high)`` of shape ``pred.shape[:-2]``: the same resamples of the ``n`` rows for
      every seed and layer.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))
    yb = y[idx]                                         # [B, n]
    pb = np.moveaxis(pred[..., idx], -2, -3)            # [..., B, S, n]
    r2 = r2_score(yb[:, None, :], pb).mean(-1)          # [..., B]
    a = (1 - level) / 2
    return np.quantile(r2, a, axis=-1), np.quantile(r2, 1 - a, axis=-1)


def block_ends(n_train: int, fractions: Sequence[float]) -> list[int]:
    """Row counts ``t_1 < t_2 < ... < t_S = n_train`` of the online code's blocks (each
    ``fraction * n_train`` rounded, at least 1). Raises if the split is too small for the
    blocks to be distinct."""
    ends = [max(1, int(round(f * n_train))) for f in fractions]
    if any(b <= a for a, b in zip(ends, ends[1:])):
        raise ValueError(
            f"mdl=True needs more training examples: {n_train} rows give MDL blocks {ends} that "
            f"are not strictly increasing. Add examples or pass TrainSpec(mdl_fractions=...) "
            f"with coarser fractions.")
    return ends


def online_codelength(logp_true: np.ndarray, ends: Sequence[int], n_classes: int) -> np.ndarray:
    """Online code length in bits (Voita & Titov, 2020).

    The first block (``ends[0]`` rows) is sent with the uniform code, ``log2(K)`` bits each;
    block ``i + 1`` (rows ``ends[i]:ends[i+1]``) with the probe trained on the first
    ``ends[i]`` rows.

    Args:
      logp_true: ``[..., S - 1, n_train]`` natural-log probability of the true label of every
        training row under the probe trained on each of the first ``S - 1`` block prefixes.
      ends: the ``S`` block ends (:func:`block_ends`).

    Returns:
      ``[...]`` code lengths in bits.
    """
    bits = ends[0] * math.log2(n_classes)
    total = np.full(logp_true.shape[:-2], bits, np.float64)
    for i in range(len(ends) - 1):
        block = logp_true[..., i, ends[i]:ends[i + 1]].astype(np.float64)
        total = total - block.sum(-1) / math.log(2)
    return total
