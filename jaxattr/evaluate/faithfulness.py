"""``faithfulness(model, out)``: does erasing what an attribution ranks first change the
prediction, generated token by generated token? (Metric definitions: :mod:`.metrics`.)"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from ..targets import get_target, target_needs
from . import metrics as _m
from .perturb import ModelScorer, make_row, score_rows
from .rationale import FaithfulnessSpec, bin_sizes, importance_view, ranking, step_items
from .result import FaithfulnessResult

__all__ = ["faithfulness", "evaluate_items"]

_NEEDS_NULL = {"norm_comprehensiveness", "norm_sufficiency", "deletion", "insertion"}
_NEEDS_ERASED = {"comprehensiveness", "norm_comprehensiveness", "deletion"}
_NEEDS_KEPT = {"sufficiency", "norm_sufficiency", "insertion"}


def faithfulness(model, out, *, metrics: Union[str, Sequence[str]] = ("comprehensiveness",
                                                                       "sufficiency"),
                 bins: Sequence = (0.01, 0.05, 0.1, 0.2, 0.5), erase: str = "mask",
                 baseline: str = "unk", attributed_fn: Any = None,
                 attributed_fn_kwargs: Optional[dict] = None, exclude_special: bool = True,
                 n_soft_samples: int = 1, seed: int = 0, max_tokens: int = 16384,
                 share_forwards: bool = True, jit: bool = True) -> FaithfulnessResult:
    """Faithfulness of an attribution, per generated step.

    For each step, the candidate input tokens (source tokens; target tokens before the step;
    special tokens left out unless ``exclude_special=False``) are ranked by that step's
    attribution in the output's aggregation (granular outputs get the default
    :meth:`~jaxattr.results.AttributionOutput.aggregate`; aggregate yourself to choose another).
    The rationale ``r_k`` is the top ``k``. Every perturbed input of every step and bin is
    scored by the attributed function in batched, jitted chunks (:mod:`.perturb`).

    Args:
      model: the :class:`~jaxattr.model.AttributionModel` that produced ``out``, or a scorer
        (a pytree with ``embed``, ``baseline`` and ``score``; see
        :class:`~jaxattr.evaluate.perturb.ModelScorer`) with optional ``special_ids``,
        ``fill_id`` and ``score_kind`` (``"prob"`` / ``"logprob"``) attributes.
      out: an :class:`~jaxattr.results.AttributionOutput`.
      metrics: any of :data:`jaxattr.evaluate.METRICS` (formulas in
        :mod:`jaxattr.evaluate.metrics`).
      bins: rationale sizes: fractions of the candidates (``floor(b·n)`` tokens) or token
        counts (ints).
      erase: ``"mask"`` (baseline embedding in place, positions kept; the default, and the
        natural choice for causal decoders) or ``"delete"`` (tokens removed).
      baseline: embedding that erases in ``mask`` mode and in the soft metrics: ``"unk"``,
        ``"pad"`` or ``"zeros"``.
      attributed_fn, attributed_fn_kwargs: the metric ``m``; default: the output's attributed
        function (``out.info``), else ``"probability"``. Contrastive targets are not supported.
      n_soft_samples, seed: Bernoulli masks per step of the soft metrics and their seed.
      max_tokens: padded tokens per compiled chunk.
      share_forwards: with a causal scorer (every model jaxattr loads), a perturbed input that
        is a prefix of another of the same sequence is read from that input's forward
        (:func:`~jaxattr.evaluate.perturb.plan_forwards`; same values, fewer forwards).
        ``False``: one forward per perturbed input. Ignored for scorers without
        ``causal = True``.
      jit: run the chunks through ``jax.jit`` (``False``: eagerly, for debugging).

    Returns:
      :class:`~jaxattr.evaluate.FaithfulnessResult`: per-step values ``[N, T]``, per-sequence
      means, per-bin values, deletion / insertion curves.
    """
    spec = FaithfulnessSpec(metrics=metrics, bins=bins, erase=erase, baseline=baseline,
                            exclude_special=exclude_special, n_soft_samples=n_soft_samples,
                            seed=seed, max_tokens=max_tokens)
    info = dict(out.info) if getattr(out, "info", None) else {}
    view = importance_view(out)
    if hasattr(model, "adapter") and hasattr(model, "tokenizer"):
        fn_name = attributed_fn or info.get("attributed_fn") or "probability"
        if attributed_fn is None and attributed_fn_kwargs is None:
            attributed_fn_kwargs = info.get("attributed_fn_kwargs") or {}
        fn_kwargs = dict(attributed_fn_kwargs or {})
        target_fn = get_target(fn_name)
        if target_needs(target_fn):
            raise ValueError(f"attributed_fn {fn_name!r} needs {sorted(target_needs(target_fn))}"
                             "; faithfulness supports non-contrastive functions: pass "
                             "attributed_fn='probability' (or 'logprob', 'logit').")
        tok = model.tokenizer
        base_id = {"unk": tok.unk_token_id if tok.unk_token_id is not None
                   else model.pad_token_id, "pad": model.pad_token_id, "zeros": None}[baseline]
        scorer = ModelScorer(adapter=model.adapter, target_fn=target_fn,
                             target_kwargs=tuple(sorted(fn_kwargs.items())),
                             baseline_id=base_id)
        special = tok.all_special_ids if exclude_special else ()
        fill = base_id if base_id is not None else model.pad_token_id
        kind = _score_kind(fn_name, fn_kwargs)
        max_positions = model.max_positions
    else:
        if not all(hasattr(model, a) for a in ("embed", "baseline", "score")):
            raise TypeError("model must be an AttributionModel or a scorer with embed(), "
                            f"baseline() and score(); got {type(model).__name__}.")
        scorer, fn_name, fn_kwargs = model, getattr(model, "name", "score"), {}
        special = getattr(model, "special_ids", ()) if exclude_special else ()
        fill = int(getattr(model, "fill_id", 0))
        kind = getattr(model, "score_kind", None)
        max_positions = None
    if "log_odds" in spec.metrics and kind is None:
        raise ValueError(f"log_odds needs a probability or log-probability metric; "
                         f"attributed_fn {fn_name!r} is neither. Pass "
                         "attributed_fn='probability'.")
    items = step_items(view, special_ids=special)
    values, stats = evaluate_items(scorer, items, spec, fill_id=fill,
                                   log_kind=kind or "prob", max_positions=max_positions,
                                   share_forwards=share_forwards, jit=jit)
    n_steps = [s.attr_pos_end - s.attr_pos_start for s in view.sequence_attributions]
    meta = {"metrics": list(spec.metrics), "bins": list(spec.bins), "erase": spec.erase,
            "baseline": spec.baseline, "exclude_special": spec.exclude_special,
            "n_soft_samples": spec.n_soft_samples, "seed": spec.seed,
            "attributed_fn": fn_name if isinstance(fn_name, str) else getattr(
                fn_name, "__name__", "custom"),
            "attributed_fn_kwargs": fn_kwargs, "model": info.get("model"),
            "method": info.get("method"), "aggregations": info.get("aggregations", []),
            **stats}
    return FaithfulnessResult.from_steps(items, values, n_steps, spec, meta)


def _score_kind(name, kwargs) -> Optional[str]:
    if name == "probability":
        return "logprob" if kwargs.get("logprob") else "prob"
    if name == "logprob":
        return "logprob"
    return None


def evaluate_items(scorer, items, spec: FaithfulnessSpec, *, fill_id: int, log_kind: str,
                   max_positions: Optional[int] = None, share_forwards: bool = True,
                   jit: bool = True) -> tuple:
    """Metric dicts (see :func:`.metrics.step_metrics`) of every step item: builds the rows
    of all steps and bins, scores them in one :func:`.perturb.score_rows` call (forwards
    shared by causality when ``share_forwards`` and the scorer is causal), then reads each
    step's values back. Returns ``(dicts, stats)``: ``n_rows`` (perturbed inputs),
    ``n_forwards`` (forwards run), ``forward_tokens`` (their tokens before padding),
    ``padded_tokens``, ``n_programs`` (chunk shapes)."""
    ms = set(spec.metrics)
    rows, plans = [], []

    def add(item, keep, soft=False):
        rows.append(make_row(item, keep, erase=spec.erase, fill_id=fill_id, soft=soft))
        return len(rows) - 1

    for item in items:
        n = item.n
        order = ranking(item.cand_score)
        ks = bin_sizes(spec.bins, n, counts=spec.counts)
        k20 = int(np.floor(0.2 * n + 1e-9))
        plan = {"ks": ks, "n": n, "full": add(item, np.ones(n)), "k20": k20}
        erased_ks = set(int(k) for k in ks) if ms & _NEEDS_ERASED else set()
        if "log_odds" in ms:
            erased_ks.add(k20)
        kept_ks = set(int(k) for k in ks) if ms & _NEEDS_KEPT else set()
        need_null = bool(ms & _NEEDS_NULL) or n in erased_ks
        plan["null"] = add(item, np.zeros(n)) if need_null and n > 0 else None
        plan["erased"] = {k: add(item, _keep_without(order, k, n))
                          for k in sorted(erased_ks) if 0 < k < n}
        plan["kept"] = {k: add(item, 1.0 - _keep_without(order, k, n))
                        for k in sorted(kept_ks) if 0 < k < n}
        q = _m.soft_keep(item.cand_score)
        plan["soft_comp"] = [add(item, 1.0 - q, True) for _ in range(spec.n_soft_samples)
                             ] if "soft_comprehensiveness" in ms else []
        plan["soft_suff"] = [add(item, q, True) for _ in range(spec.n_soft_samples)
                             ] if "soft_sufficiency" in ms else []
        plans.append(plan)
    share = bool(share_forwards) and bool(getattr(scorer, "causal", False))
    scores, stats = score_rows(scorer, rows, max_tokens=spec.max_tokens, seed=spec.seed,
                               max_positions=max_positions, jit=jit, share=share,
                               return_stats=True)
    results = []
    for plan in plans:
        full = scores[plan["full"]]
        null = scores[plan["null"]] if plan["null"] is not None else (
            full if plan["n"] == 0 else np.nan)
        n = plan["n"]

        def erased(k):
            return full if k == 0 else null if k == n else scores[plan["erased"][k]]

        def kept(k):
            return null if k == 0 else full if k == n else scores[plan["kept"][k]]

        ks = plan["ks"]
        results.append(_m.step_metrics(
            metrics=ms, ks=ks, n=n, full=full, null=null,
            erased=np.array([erased(int(k)) if ms & _NEEDS_ERASED else np.nan for k in ks]),
            kept=np.array([kept(int(k)) if ms & _NEEDS_KEPT else np.nan for k in ks]),
            soft_comp=scores[plan["soft_comp"]], soft_suff=scores[plan["soft_suff"]],
            log_odds_score=erased(plan["k20"]) if "log_odds" in ms else np.nan,
            log_kind=log_kind))
    return results, stats


def _keep_without(order: np.ndarray, k: int, n: int) -> np.ndarray:
    """``[n]`` keep vector with the top ``k`` (by ``order``) erased."""
    keep = np.ones(n)
    keep[order[:k]] = 0.0
    return keep
