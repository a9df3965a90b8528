"""Aggregation of attributions: reductions over the hidden axis and column normalisation.

Functions act on numpy arrays ``[rows, cols, H]`` (NaN marks entries that do not exist) and on
:class:`~jaxattr.results.SequenceAttribution` views.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

__all__ = ["vnorm", "hidden_sum", "hidden_mean", "absmax", "normalize_columns",
           "aggregate_sequence", "REDUCTIONS"]


def vnorm(a: np.ndarray) -> np.ndarray:
    """L2 norm over the last (hidden) axis: ``[R, T, H] -> [R, T]``."""
    return np.linalg.norm(a, axis=-1)


def hidden_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the hidden axis."""
    return a.sum(-1)


def hidden_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the hidden axis."""
    return a.mean(-1)


def absmax(a: np.ndarray) -> np.ndarray:
    """The signed value of largest magnitude over the hidden axis."""
    idx = np.nanargmax(np.where(np.isnan(a), -np.inf, np.abs(a)), axis=-1)
    return np.take_along_axis(a, idx[..., None], axis=-1)[..., 0]


REDUCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "vnorm": vnorm, "sum": hidden_sum, "mean": hidden_mean, "absmax": absmax,
}


def normalize_columns(*parts):
    """Scale every column so that the absolute values of all ``parts`` (e.g. source and target
    attributions ``[R_i, T]``) sum to 1 jointly, NaN ignored. ``None`` parts pass through."""
    present = [p for p in parts if p is not None]
    total = sum(np.nansum(np.abs(p), axis=0) for p in present)
    total = np.where(total == 0, 1.0, total)
    return tuple(None if p is None else p / total for p in parts)


def aggregate_sequence(seq, aggregator: Any = None, *, normalize: bool = True):
    """Reduce the hidden axis of a :class:`SequenceAttribution` and normalise columns.

    Args:
      seq: the sequence view; attributions ``[R, T, H]``.
      aggregator: ``"vnorm"`` (default), ``"sum"``, ``"mean"``, ``"absmax"`` or a function
        ``[R, T, H] -> [R, T]``.
      normalize: make each column's absolute values sum to 1 over source and target rows.

    Returns:
      A new view with ``[R, T]`` attributions. Already-aggregated (2-D) views are only
      normalised.
    """
    reduce = REDUCTIONS.get(aggregator or "vnorm") if not callable(aggregator) else aggregator
    if reduce is None:
        raise ValueError(f"Unknown aggregator {aggregator!r}; choose one of {sorted(REDUCTIONS)} "
                         "or pass a function [R, T, H] -> [R, T].")

    def red(a):
        if a is None or a.ndim == 2:
            return a
        return reduce(a)

    src, tgt = red(seq.source_attributions), red(seq.target_attributions)
    if normalize:
        src, tgt = normalize_columns(src, tgt)
    return dataclasses.replace(seq, source_attributions=src, target_attributions=tgt)
