"""``plausibility(out, ground_truth)``: do the attributions point at the tokens a person (or a
task's construction) says the prediction rests on?"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from flax import struct

from .rationale import importance_view, ranking
from .result import SummaryMethods

__all__ = ["plausibility", "PlausibilityResult", "PLAUSIBILITY_METRICS", "step_plausibility"]

#: Plausibility metrics and whether higher (``+1``) or lower (``-1``) is better.
PLAUSIBILITY_METRICS = {"top1": +1, "mean_rank": -1, "auprc": +1, "token_f1": +1}


@struct.dataclass
class PlausibilityResult(SummaryMethods):
    """Plausibility per step (``N`` sequences, ``T`` steps).

    Attributes:
      values: ``{"top1" | "mean_rank" | "auprc" | "token_f1": [N, T]}``; NaN where the step
        has no ground truth.
      step_mask: ``[N, T]`` bool, steps with ground truth.
      info: options of the run (static).
    """
    values: dict
    step_mask: np.ndarray
    info: dict = struct.field(pytree_node=False, default_factory=dict)


def step_plausibility(scores: np.ndarray, cues: np.ndarray, *, k: Optional[int] = None) -> dict:
    """Plausibility of one step's candidate ``scores`` ``[n]`` against ``cues`` ``[n]`` (bool).

    ``top1``: the top candidate is a cue; ``mean_rank``: rank (1 = top) of the best-ranked cue,
    counting the candidates scored strictly higher; ``auprc``: average precision of the
    ranking (ties broken by position); ``token_f1``: F1 of the top ``k`` (default: the number
    of cues) against the cues.
    """
    scores = np.asarray(scores, np.float64)
    cues = np.asarray(cues, bool)
    if not cues.any():
        raise ValueError("a step's ground truth marks no candidate token as a cue.")
    order = ranking(scores)
    hits = cues[order]
    best = scores[cues].max()
    prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    k = int(cues.sum()) if k is None else int(k)
    pred = np.zeros_like(cues)
    pred[order[:k]] = True
    tp = float((pred & cues).sum())
    f1 = 2 * tp / (pred.sum() + cues.sum()) if tp else 0.0
    return {"top1": float(hits[0]), "mean_rank": float((scores > best).sum() + 1),
            "auprc": float(prec[hits].sum() / cues.sum()), "token_f1": f1}


def plausibility(out, ground_truth: Sequence, *, side: Optional[str] = None,
                 exclude_tokens: Sequence[str] = (), k: Optional[int] = None
                 ) -> PlausibilityResult:
    """Plausibility of an attribution output against ground-truth cue tokens.

    Args:
      out: an :class:`~jaxattr.results.AttributionOutput` (granular outputs get the default
        aggregation; tokens are ranked by their aggregated score, highest first).
      ground_truth: one entry per sequence: ``None`` (no ground truth), a list of cue rows
        (the same cues for every step), or a dict ``{step: [rows]}``. Rows index the
        sequence's ``source`` (``side="source"``) or ``target`` tokens.
      side: ``"source"`` or ``"target"``; default: source for encoder-decoder outputs (those
        with source attributions), else target.
      exclude_tokens: token strings never ranked (e.g. ``tokenizer.all_special_tokens``).
      k: size of the predicted rationale of ``token_f1`` (default: the number of cues).

    Returns:
      :class:`PlausibilityResult` with ``top1``, ``mean_rank``, ``auprc``, ``token_f1`` per step.
    """
    view = importance_view(out)
    seqs = view.sequence_attributions
    if len(ground_truth) != len(seqs):
        raise ValueError(f"ground_truth has {len(ground_truth)} entries for {len(seqs)} "
                         "sequences; give one per sequence (None where there is none).")
    if side is None:
        side = "source" if seqs[0].source_attributions is not None else "target"
    if side not in ("source", "target"):
        raise ValueError(f"side={side!r}: use 'source' or 'target'.")
    T = max(s.attr_pos_end - s.attr_pos_start for s in seqs)
    values = {m: np.full((len(seqs), T), np.nan) for m in PLAUSIBILITY_METRICS}
    mask = np.zeros((len(seqs), T), bool)
    excluded = set(exclude_tokens)
    for i, (seq, gt) in enumerate(zip(seqs, ground_truth)):
        if gt is None:
            continue
        attr = seq.source_attributions if side == "source" else seq.target_attributions
        tokens = seq.source if side == "source" else seq.target
        if attr is None:
            raise ValueError(f"sequence {i} has no {side} attributions; pass side=.")
        n_steps = seq.attr_pos_end - seq.attr_pos_start
        per_step = gt if isinstance(gt, dict) else {t: gt for t in range(n_steps)}
        for t, cue_rows in per_step.items():
            if not 0 <= t < n_steps:
                raise ValueError(f"ground truth of sequence {i} names step {t}; it has "
                                 f"{n_steps} steps.")
            col = np.asarray(attr[:, t], np.float64)
            rows = np.array([r for r in range(len(col)) if not np.isnan(col[r])
                             and tokens[r] not in excluded], np.int64)
            cue_rows = [int(c) for c in np.atleast_1d(cue_rows)]
            bad = [c for c in cue_rows if c not in set(rows.tolist())]
            if bad:
                raise ValueError(f"sequence {i}, step {t}: cue rows {bad} are not ranked "
                                 f"candidates (out of range, excluded, or not yet generated).")
            res = step_plausibility(col[rows], np.isin(rows, cue_rows), k=k)
            for m, v in res.items():
                values[m][i, t] = v
            mask[i, t] = True
    info = {"side": side, "exclude_tokens": sorted(excluded), "k": k,
            "model": view.info.get("model"), "method": view.info.get("method")}
    return PlausibilityResult(values=values, step_mask=mask, info=info)
