"""Device batch results -> host-side per-sequence views, and the checks run on them (non-finite
values, integrated-gradients convergence).
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from .encoding import EncodedSequence
from .results import SequenceAttribution

__all__ = ["sequence_view", "completeness", "warn_if_not_finite", "warn_if_not_converged",
           "DEFAULT_N_STEPS"]

#: ``n_steps`` of integrated gradients when none is given (named in the convergence warning).
DEFAULT_N_STEPS = 50


def sequence_view(tokenizer, host, row: int, seq: EncodedSequence) -> SequenceAttribution:
    """Row ``row`` of a host (numpy) :class:`~jaxattr.results.BatchAttribution` as the view of
    sequence ``seq``: unpadded, target rows not yet generated at a step set to NaN."""
    n_tgt, n = len(seq.target_ids), seq.n_steps
    tgt_attr = src_attr = None
    if host.target_attributions is not None:
        tgt_attr = np.array(host.target_attributions[row, :n_tgt, :n], dtype=np.float32)
        valid = np.arange(n_tgt)[:, None] < np.asarray(host.step_positions[row, :n])[None]
        tgt_attr[~valid] = np.nan
    if host.source_attributions is not None:
        src_attr = np.array(host.source_attributions[row, :len(seq.source_ids), :n],
                            dtype=np.float32)
    return SequenceAttribution(
        source=(tokenizer.convert_ids_to_tokens(seq.source_ids)
                if seq.source_ids is not None else None),
        target=tokenizer.convert_ids_to_tokens(seq.target_ids),
        source_attributions=src_attr, target_attributions=tgt_attr,
        step_scores={k: np.asarray(v[row, :n], np.float32)
                     for k, v in host.step_scores.items()},
        attr_pos_start=seq.attr_start, attr_pos_end=seq.attr_end,
        source_ids=list(seq.source_ids) if seq.source_ids is not None else None,
        target_ids=list(seq.target_ids))


def completeness(view) -> tuple:
    """``(delta[T], change[T])`` of an integrated-gradients view: its completeness error
    (step score ``deltas``) and ``s(x) - s(baseline)`` per step, read as ``Σ attributions -
    delta``. Needs attributions that still sum: granular, or aggregated with ``"sum"`` and
    ``normalize=False``."""
    delta = np.asarray(view.step_scores["deltas"], np.float64)
    total = np.zeros_like(delta)
    for attr in (view.source_attributions, view.target_attributions):
        if attr is not None:
            attr = np.asarray(attr)
            total += np.nansum(attr.reshape(attr.shape[:2] + (-1,)), axis=(0, 2))
    return delta, total - delta


def warn_if_not_finite(views, info: Optional[dict] = None) -> None:
    """Warn when a result holds NaN or inf where a number belongs (target rows not generated
    yet are NaN by design and not counted): the model overflowed (float16?), the attributed
    function is infinite (a log of 0 probability) or an input is not finite. ReAGent's NaN
    attributions (``info["method"] == "reagent"``: no probe stopped for that step, as in
    Inseq) get their own message naming ``max_probe_steps``."""
    bad = []
    for i, view in enumerate(views):
        parts = {"step_scores." + k: np.asarray(v) for k, v in view.step_scores.items()}
        if view.source_attributions is not None:
            parts["source_attributions"] = np.asarray(view.source_attributions)
        if view.target_attributions is not None:
            a = np.asarray(view.target_attributions)
            valid = (np.arange(a.shape[0])[:, None]
                     < np.arange(view.attr_pos_start, view.attr_pos_end)[None])
            parts["target_attributions"] = a[valid]
        bad += [(i, name, bool(np.isinf(a).any())) for name, a in parts.items()
                if not np.isfinite(a).all()]
    if bad and info and info.get("method") == "reagent" and all(
            name.endswith("_attributions") and not inf for _, name, inf in bad):
        warnings.warn(
            f"ReAGent left {len(bad)} result(s) with NaN attributions: for those steps none "
            "of the probes stopped within max_probe_steps (Inseq does the same). Raise "
            "max_probe_steps (or num_probes).", RuntimeWarning, stacklevel=3)
        return
    if bad:
        i, name, _ = bad[0]
        warnings.warn(
            f"{len(bad)} result(s) hold NaN or inf (first: sequence {i}, {name}). Check the "
            "inputs and baseline for non-finite values, the attributed function for log(0) "
            "(attributed_fn='logprob' of a zero probability) and the model dtype for overflow "
            "(float16); these numbers are not attributions.", RuntimeWarning, stacklevel=3)


def warn_if_not_converged(views, info: dict, *, rtol: float = 0.1) -> None:
    """Warn when integrated gradients misses completeness by more than ``rtol`` of the score
    change on some step: ``|delta| > rtol * |s(x) - s(baseline)|`` (ignoring steps whose change
    is below 1e-3 of the largest one). ``Σ attributions = change + delta``, so the change is
    read from the host views; needs attributions that still sum (granular, or summed)."""
    if info.get("method") in ("deeplift", "layer_deeplift"):
        return  # rescale: exact to rounding; captum mode: not meant to add up (documented)
    rows = []
    for i, view in enumerate(views):
        if "deltas" not in view.step_scores:
            return
        delta, change = completeness(view)
        rows += [(i, j, float(d), float(c)) for j, (d, c) in enumerate(zip(delta, change))]
    if not rows:
        return
    floor = 1e-3 * max(abs(c) for _, _, _, c in rows)
    bad = [r for r in rows if abs(r[2]) > rtol * abs(r[3]) and abs(r[3]) > floor]
    if not bad:
        return
    i, j, d, c = max(bad, key=lambda r: abs(r[2]) / max(abs(r[3]), 1e-30))
    n_steps = info["method_kwargs"].get("n_steps", DEFAULT_N_STEPS)
    warnings.warn(
        f"Integrated gradients did not converge on {len(bad)} of {len(rows)} attributed steps: "
        f"the attributions miss s(x) - s(baseline) by more than {rtol:.0%} (worst: sequence "
        f"{i}, step {j}, delta {d:.3g} against a change of {c:.3g}). Increase n_steps (now "
        f"{n_steps}) or attribute a smoother function (attributed_fn='logprob'); every step's "
        "error is in step_scores['deltas'].", RuntimeWarning, stacklevel=3)
