"""Lens summaries as step scores of an attribution: where in the network each generated token
was formed.

``model.attribute`` computes its step scores from the output logits alone; lens scores need
the residual stream, so they are added to an attribution's views afterwards, from one lens
forward over the same token ids::

    out = model.attribute(prompts, generated, step_scores=["probability"])
    jaxattr.lens.add_step_scores(out, model, lens=tuned)        # or lens=None: logit lens
    out.sequence_attributions[0].step_scores["lens_first_top1_layer"]
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..encoding import EncodedSequence
from .api import trajectory_of
from .readout import model_source

__all__ = ["STEP_SCORES", "STEP_SCORE_NAMES", "add_step_scores", "lens_step_scores"]

#: Lens step scores, each ``[n_generated]`` per sequence (``{l}``: one score per row).
STEP_SCORES = {
    "lens_first_top1_layer": "first row at which the generated token is the lens's top-1 "
                             "(-1: never; the last row is the model's own output)",
    "lens_kl_mean": "KL(output ‖ row) averaged over the rows below the output (nats)",
    "lens_kl.{l}": "KL(output ‖ row l) (nats), one score per row below the output",
    "lens_prob.{l}": "probability of the generated token at row l",
}


#: Names accepted by :func:`add_step_scores` and by ``model.attribute(step_scores=...)``
#: (``lens_kl`` / ``lens_prob`` add one score per row: ``lens_kl.0``, ``lens_kl.1`` …).
STEP_SCORE_NAMES = ("lens_first_top1_layer", "lens_kl_mean", "lens_kl", "lens_prob")


def lens_step_scores(traj, i: int, start: int, end: int) -> dict:
    """Scores of generated tokens ``start <= p < end`` of trajectory sequence ``i`` (token
    ``p`` is predicted at position ``p - 1``)."""
    pos = np.arange(start, end) - 1
    s = traj.stats[i]
    out = {"lens_first_top1_layer": traj.first_top1_layer(i)[pos].astype(np.float32),
           "lens_kl_mean": s["kl"][:-1, pos].mean(0).astype(np.float32)}
    for row in range(traj.n_rows - 1):
        out[f"lens_kl.{row}"] = s["kl"][row, pos].astype(np.float32)
        out[f"lens_prob.{row}"] = s["target_prob"][row, pos].astype(np.float32)
    return out


def add_step_scores(out, model, *, lens=None, batch_size: Optional[int] = None,
                    names: Sequence[str] = ("lens_first_top1_layer", "lens_kl_mean",
                                            "lens_kl", "lens_prob")):
    """Add lens step scores (:data:`STEP_SCORES`) to every view of an attribution output.

    Args:
      out: an :class:`~jaxattr.AttributionOutput` of ``model``.
      model: the model that produced it.
      lens: a :class:`~jaxattr.lens.TunedLens` (``None``: the logit lens).
      names: which scores (``"lens_kl"`` / ``"lens_prob"`` add one score per row).

    Returns:
      ``out``, its views' ``step_scores`` extended in place.
    """
    unknown = set(names) - set(STEP_SCORE_NAMES)
    if unknown:
        raise ValueError(f"unknown lens step scores {sorted(unknown)}; choose from "
                         f"{sorted(STEP_SCORES)} (per-row ones by their stem).")
    views = out.sequence_attributions
    seqs = [EncodedSequence(target_ids=list(v.target_ids), attr_start=v.attr_pos_start,
                            attr_end=v.attr_pos_end,
                            source_ids=None if v.source_ids is None else list(v.source_ids))
            for v in views]
    if any(s.attr_start < 1 for s in seqs):
        raise ValueError("a view attributes its first token, which no position predicts; "
                         "lens step scores need attr_pos_start >= 1.")
    traj = trajectory_of(model, model_source(model), seqs, lens=lens, top_k=1,
                         batch_size=batch_size)
    for i, (view, seq) in enumerate(zip(views, seqs)):
        scores = lens_step_scores(traj, i, seq.attr_start, seq.attr_end)
        view.step_scores.update({k: v for k, v in scores.items()
                                 if k in names or k.split(".")[0] in names})
    return out
