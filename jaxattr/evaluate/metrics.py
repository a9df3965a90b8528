"""Faithfulness metrics of one step from the scores of its perturbed inputs (pure numpy).

Notation (one generated step, ``n`` candidate tokens ranked by the attribution, ``r_k`` the
top ``k``): ``m(x)`` the attributed function on the full input, ``m(x \\ r_k)`` with ``r_k``
erased, ``m(r_k)`` with everything but ``r_k`` erased, ``m(∅)`` with every candidate erased.

* comprehensiveness ``m(x) − m(x \\ r_k)`` and sufficiency ``m(x) − m(r_k)``, averaged over the
  bins (AOPC; DeYoung et al., 2020 — ferret's ``aopc_compr`` / ``aopc_suff``: bins whose
  rationale is empty or repeats the previous one are left out of the mean);
* normalised (Carton et al., 2020): with ``null = max(0, m(x) − m(∅))``,
  ``norm_comprehensiveness = max(0, m(x) − m(x \\ r_k)) / null`` and
  ``norm_sufficiency = (null − max(0, m(x) − m(r_k))) / null`` (higher is better for both;
  undefined — NaN — where erasing everything does not lower the score);
* soft (Zhao & Aletras, 2023): ``m(x) − m(x̃)`` where each embedding element of candidate ``i``
  is kept with probability ``q_i`` (soft sufficiency) or ``1 − q_i`` (soft comprehensiveness),
  ``q`` the scores clipped at 0 and divided by their maximum; averaged over samples;
* deletion / insertion curves: ``m(x \\ r_k)`` and ``m(r_k)`` against the fraction ``k / n``
  erased / kept, from 0 to 1, and the areas under them (trapezoid rule);
* log-odds (Shrikumar et al., 2017; Chen et al., 2020): ``log m(x \\ r_k) − log m(x)`` with
  ``k = floor(0.2 n)`` for a probability (the difference itself for a log-probability).
"""
from __future__ import annotations

import numpy as np

__all__ = ["aopc_mask", "step_metrics", "soft_keep"]


def aopc_mask(ks: np.ndarray) -> np.ndarray:
    """``[K]`` bool: the bins that count in AOPC — non-empty rationales that differ from the
    previous bin's (ferret's rule; sizes are non-decreasing, so "differ" is "larger")."""
    ks = np.asarray(ks)
    prev = np.concatenate([[0], ks[:-1]])
    return (ks > 0) & (ks != prev)


def soft_keep(scores: np.ndarray) -> np.ndarray:
    """Keep probabilities of the soft metrics: scores clipped at 0 over their maximum."""
    s = np.clip(np.asarray(scores, np.float64), 0.0, None)
    top = s.max(initial=0.0)
    return s / top if top > 0 else np.zeros_like(s)


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def step_metrics(*, metrics, ks: np.ndarray, n: int, full: float, null: float,
                 erased: np.ndarray, kept: np.ndarray, soft_comp: np.ndarray,
                 soft_suff: np.ndarray, log_odds_score: float, log_kind: str) -> dict:
    """Metric values of one step.

    Args:
      metrics: names to compute.
      ks: ``[K]`` rationale size per bin; n: candidates.
      full, null: ``m(x)`` and ``m(∅)`` (``null`` may be NaN when no metric needs it).
      erased, kept: ``[K]`` ``m(x \\ r_k)`` and ``m(r_k)`` per bin (any value where k = 0).
      soft_comp, soft_suff: ``[S]`` scores of the soft samples.
      log_odds_score: ``m(x \\ r_k)`` at ``k = floor(0.2 n)``; log_kind: ``"prob"`` or
        ``"logprob"``.

    Returns:
      ``{"values": {metric: float}, "bins": {name: [K]}, "curves": {name: [K+2]},
      "curve_x": [K+2]}`` — per-bin values NaN where ``k = 0``.
    """
    ks = np.asarray(ks)
    use = aopc_mask(ks)
    comp = np.where(ks > 0, full - erased, np.nan)
    suff = np.where(ks > 0, full - kept, np.nan)
    vals, bins, curves = {}, {}, {}
    if "comprehensiveness" in metrics:
        vals["comprehensiveness"] = _mean(comp, use)
        bins["comprehensiveness"] = comp
    if "sufficiency" in metrics:
        vals["sufficiency"] = _mean(suff, use)
        bins["sufficiency"] = suff
    denom = max(0.0, full - null) if np.isfinite(null) else float("nan")
    if "norm_comprehensiveness" in metrics or "norm_sufficiency" in metrics:
        ok = denom > 1e-12
        ncomp = np.maximum(0.0, comp) / denom if ok else np.full_like(comp, np.nan)
        nsuff = (denom - np.maximum(0.0, suff)) / denom if ok else np.full_like(suff, np.nan)
        if "norm_comprehensiveness" in metrics:
            vals["norm_comprehensiveness"] = _mean(ncomp, use) if ok else float("nan")
            bins["norm_comprehensiveness"] = ncomp
        if "norm_sufficiency" in metrics:
            vals["norm_sufficiency"] = _mean(nsuff, use) if ok else float("nan")
            bins["norm_sufficiency"] = nsuff
    if "soft_comprehensiveness" in metrics:
        vals["soft_comprehensiveness"] = float(np.mean(full - soft_comp))
    if "soft_sufficiency" in metrics:
        vals["soft_sufficiency"] = float(np.mean(full - soft_suff))
    x = np.concatenate([[0.0], ks / max(n, 1), [1.0]])
    if "deletion" in metrics:
        y = np.concatenate([[full], np.where(ks > 0, erased, full), [null]])
        curves["deletion"] = y
        vals["deletion"] = float(np.trapezoid(y, x))
    if "insertion" in metrics:
        y = np.concatenate([[null], np.where(ks > 0, kept, null), [full]])
        curves["insertion"] = y
        vals["insertion"] = float(np.trapezoid(y, x))
    if "log_odds" in metrics:
        if log_kind == "prob":
            vals["log_odds"] = float(np.log(log_odds_score) - np.log(full))
        else:
            vals["log_odds"] = float(log_odds_score - full)
    return {"values": vals, "bins": bins, "curves": curves, "curve_x": x}
