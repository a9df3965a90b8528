"""Rationales from attributions (host side): which input tokens each generated step ranks first.

A *step item* is one generated token of one sequence with everything its prediction reads: the
source ids (encoder-decoder), the target prefix it sees, the token it predicts, and the
*candidates* — the input tokens a rationale may contain (special tokens excluded on request),
each with the step's importance score from the user's aggregation.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

__all__ = ["FaithfulnessSpec", "StepItem", "step_items", "importance_view", "ranking",
           "bin_sizes", "METRICS", "DIRECTIONS", "ERASE_MODES"]

#: Metric names and whether higher (``+1``) or lower (``-1``) is better.
DIRECTIONS = {
    "comprehensiveness": +1, "sufficiency": -1,
    "norm_comprehensiveness": +1, "norm_sufficiency": +1,
    "soft_comprehensiveness": +1, "soft_sufficiency": -1,
    "deletion": -1, "insertion": +1, "log_odds": -1,
}
METRICS = tuple(DIRECTIONS)
ERASE_MODES = ("mask", "delete")
_BASELINES = ("unk", "pad", "zeros")


@dataclasses.dataclass(frozen=True)
class FaithfulnessSpec:
    """Options of a faithfulness evaluation (validated on construction).

    Attributes:
      metrics: names from :data:`METRICS`.
      bins: strictly increasing rationale sizes: all fractions in ``(0, 1]`` (top
        ``floor(b * n)`` of the ``n`` candidate tokens, ferret's ``"perc"`` rule) or all ints
        ``>= 1`` (top ``min(b, n)`` tokens). Sizes 0 and repeats are left out of AOPC means.
      erase: ``"mask"`` (embedding replaced by the baseline, positions kept) or ``"delete"``
        (tokens removed, later tokens shift left).
      baseline: erased embedding for ``mask`` and the soft metrics: ``"unk"`` (the UNK
        embedding; PAD when there is none), ``"pad"`` or ``"zeros"``.
      exclude_special: special tokens (BOS, EOS, decoder start …) are never in a rationale
        and never erased.
      n_soft_samples: Bernoulli masks per step for the soft metrics.
      seed: seed of the soft metrics' masks (mask of job ``j`` uses ``fold_in(key, j)``).
      max_tokens: padded tokens per compiled chunk (rows × length), bounds memory.
    """
    metrics: tuple = ("comprehensiveness", "sufficiency")
    bins: tuple = (0.01, 0.05, 0.1, 0.2, 0.5)
    erase: str = "mask"
    baseline: str = "unk"
    exclude_special: bool = True
    n_soft_samples: int = 1
    seed: int = 0
    max_tokens: int = 16384

    def __post_init__(self):
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        object.__setattr__(self, "metrics", metrics)
        bad = [m for m in metrics if m not in DIRECTIONS]
        if bad or not metrics:
            raise ValueError(f"metrics={metrics!r}: unknown {bad}; choose from {METRICS}.")
        bins = tuple(self.bins)
        object.__setattr__(self, "bins", bins)
        if not bins:
            raise ValueError("bins is empty; give fractions such as (0.1, 0.2, 0.5) or token "
                             "counts such as (1, 2, 3).")
        ints = all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bins)
        if ints:
            if min(bins) < 1:
                raise ValueError(f"bins={bins!r}: token counts must be >= 1.")
        elif not all(isinstance(b, (float, np.floating)) and 0 < b <= 1 for b in bins):
            raise ValueError(f"bins={bins!r}: give all fractions (floats in (0, 1]) or all token "
                             "counts (ints >= 1), not a mix.")
        if any(b >= c for b, c in zip(bins, bins[1:])):
            raise ValueError(f"bins={bins!r} must be strictly increasing.")
        if self.erase not in ERASE_MODES:
            raise ValueError(f"erase={self.erase!r}: use 'mask' (baseline embedding, positions "
                             "kept) or 'delete' (tokens removed).")
        if self.baseline not in _BASELINES:
            raise ValueError(f"baseline={self.baseline!r}: use one of {_BASELINES}.")
        if int(self.n_soft_samples) < 1:
            raise ValueError(f"n_soft_samples={self.n_soft_samples}: must be >= 1.")
        if int(self.max_tokens) < 1:
            raise ValueError(f"max_tokens={self.max_tokens}: must be >= 1.")

    @property
    def counts(self) -> bool:
        """Bins are token counts (ints) rather than fractions."""
        return isinstance(self.bins[0], (int, np.integer))


@dataclasses.dataclass(frozen=True)
class StepItem:
    """One generated token of one sequence, as its prediction sees it.

    Attributes:
      seq, step: sequence index and step (column) index.
      source_ids: ``[S]`` encoder ids or ``None``; target_ids: ``[P]`` the prefix it reads.
      token: the id it predicts.
      cand_side: ``[n]`` 0 = source row, 1 = target row; cand_row: ``[n]`` row indices;
      cand_score: ``[n]`` importance of each candidate at this step.
    """
    seq: int
    step: int
    source_ids: Optional[np.ndarray]
    target_ids: np.ndarray
    token: int
    cand_side: np.ndarray
    cand_row: np.ndarray
    cand_score: np.ndarray

    @property
    def n(self) -> int:
        return int(self.cand_row.shape[0])


def importance_view(out):
    """The output with one score per (input token, step): granular outputs get the default
    aggregation (:meth:`AttributionOutput.aggregate`); already aggregated ones are kept."""
    seqs = list(out.sequence_attributions)
    if not seqs:
        raise ValueError("the AttributionOutput has no sequences to evaluate.")
    nd = max((a.ndim for s in seqs for a in (s.source_attributions, s.target_attributions)
              if a is not None), default=0)
    if nd == 0:
        raise ValueError("the AttributionOutput has no attributions.")
    return out.aggregate() if nd > 2 else out


def step_items(out, *, special_ids: Sequence[int] = ()) -> list[StepItem]:
    """One :class:`StepItem` per generated step of every sequence of an aggregated output.

    Candidates are the rows attributed at that step (source rows; target rows before the
    step's position), minus ``special_ids``. NaN scores (a row not yet generated) are never
    candidates.
    """
    special = np.asarray(sorted(set(int(i) for i in special_ids)), np.int64)
    items = []
    for i, seq in enumerate(out.sequence_attributions):
        if seq.target_ids is None or (seq.source_attributions is not None
                                      and seq.source_ids is None):
            raise ValueError(f"sequence {i} carries no token ids (target_ids / source_ids); "
                             "evaluate an output from model.attribute or a file saved by "
                             "jaxattr >= 0.1 with ids.")
        tgt = np.asarray(seq.target_ids, np.int64)
        src = None if seq.source_ids is None else np.asarray(seq.source_ids, np.int64)
        for t in range(seq.attr_pos_end - seq.attr_pos_start):
            pos = seq.attr_pos_start + t
            sides, rows, scores = [], [], []
            for side, attr, ids, limit in ((0, seq.source_attributions, src, None),
                                           (1, seq.target_attributions, tgt, pos)):
                if attr is None:
                    continue
                col = np.asarray(attr[:, t], np.float64)
                n_rows = col.shape[0] if limit is None else min(limit, col.shape[0])
                r = np.arange(n_rows)
                keep = ~np.isnan(col[:n_rows]) & ~np.isin(ids[:n_rows], special)
                sides.append(np.full(int(keep.sum()), side))
                rows.append(r[keep])
                scores.append(col[:n_rows][keep])
            items.append(StepItem(
                seq=i, step=t, source_ids=src, target_ids=tgt[:pos], token=int(tgt[pos]),
                cand_side=np.concatenate(sides).astype(np.int64),
                cand_row=np.concatenate(rows).astype(np.int64),
                cand_score=np.concatenate(scores)))
    return items


def ranking(scores: np.ndarray) -> np.ndarray:
    """Candidate indices from most to least important (ties: the earlier position first)."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def bin_sizes(bins: Sequence, n: int, *, counts: bool) -> np.ndarray:
    """Rationale size per bin for ``n`` candidates: ``min(b, n)`` for counts, ``floor(b·n)``
    for fractions (ferret's ``"perc"`` rule; a product within 1e-9 of an integer rounds to
    it, so 0.2 · 10 is 2)."""
    if counts:
        return np.minimum(np.asarray(bins, np.int64), n)
    return np.floor(np.asarray(bins, np.float64) * n + 1e-9).astype(np.int64)
