"""ROME's six token-position categories of a factual prompt (Meng et al., 2022, fig. 2).

For a prompt of ``L`` tokens whose subject spans ``[start, stop)``:

==========================  ==========================================
``first_subject``           ``start``
``middle_subject``          ``start + 1 … stop − 2`` (none for two-token subjects)
``last_subject``            ``stop − 1`` (also the first token of a one-token subject)
``first_subsequent``        ``stop`` when it is not the last token
``further``                 ``stop + 1 … L − 2``
``last``                    ``L − 1``
==========================  ==========================================

A position belongs to exactly one category: a one-token subject counts as ``last_subject``
(ROME's averages put it there), and the last token is always ``last``, never
``first_subsequent`` or ``further``. A category may be empty for a prompt (no middle tokens in a
two-token subject); averages over a dataset skip empty cells.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CATEGORIES", "position_categories", "category_average"]

CATEGORIES = ("first_subject", "middle_subject", "last_subject", "first_subsequent", "further",
              "last")


def position_categories(length: int, subject_range: tuple) -> np.ndarray:
    """``[length]`` int array: the category index (into :data:`CATEGORIES`) of every position,
    ``-1`` for positions before the subject (ROME leaves them out of its averages)."""
    start, stop = (int(v) for v in subject_range)
    if not 0 <= start < stop <= length:
        raise ValueError(f"subject_range {subject_range!r} must satisfy 0 <= start < stop <= "
                         f"length ({length})")
    cat = np.full((length,), -1, np.int32)
    cat[start] = 0
    cat[start + 1:stop - 1] = 1
    cat[stop - 1] = 2
    if stop < length - 1:
        cat[stop] = 3
    cat[stop + 1:length - 1] = 4
    cat[length - 1] = 5
    return cat


def category_average(maps, subject_ranges) -> tuple:
    """Average ``maps`` (each ``[L_i, n_layers]``, one per prompt) within each category.

    Each prompt first averages its own positions of a category (ROME's convention: a prompt
    with three middle tokens counts once), then prompts are averaged.

    Returns ``(mean [6, n_layers], sem [6, n_layers], count [6])``: the mean over prompts that
    have the category, its standard error (``std(ddof=1) / sqrt(count)``; NaN below two
    prompts) and how many prompts had it. ``1.96 * sem`` is the 95% normal interval.
    """
    per_cat: list[list] = [[] for _ in CATEGORIES]
    for m, rng in zip(maps, subject_ranges):
        m = np.asarray(m, np.float64)
        cat = position_categories(m.shape[0], rng)
        for c in range(len(CATEGORIES)):
            rows = m[cat == c]
            if len(rows):
                per_cat[c].append(rows.mean(0))
    n_layers = np.asarray(maps[0]).shape[1]
    mean = np.full((len(CATEGORIES), n_layers), np.nan)
    sem = np.full((len(CATEGORIES), n_layers), np.nan)
    count = np.array([len(v) for v in per_cat])
    for c, rows in enumerate(per_cat):
        if rows:
            a = np.stack(rows)
            mean[c] = a.mean(0)
            if len(rows) > 1:
                sem[c] = a.std(0, ddof=1) / np.sqrt(len(rows))
    return mean, sem, count
