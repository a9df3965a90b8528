"""Host-side planning of an ``attribute`` call: validate the options, resolve the method and
targets, route keyword options, and build the :class:`~jaxattr.spec.RunSpec` and
:class:`~jaxattr.spec.PreparedRun` (see :meth:`AttributionModel.prepare`).

Everything here works through the model object's public surface (``adapter``, ``tokenizer``,
``encode`` …) and the encoding helpers; it never imports the model module.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Optional

import jax
import numpy as np

from .aggregate import REDUCTIONS
from .baselines import BaselineSet, is_baseline_set, plan_baseline_set
from .baselines import describe as describe_baseline
from .batching import chunk_order, encode_contrast, check_exact_length
from .catalog import LAYER_METHODS, list_methods
from .encoding import InputError, _as_list
from .methods import get_method
from .methods._common import check_finite, count
from .methods.needs import needs_of
from .methods.quadrature import QUADRATURE_RULES
from .pipeline import (ATTENTION_FLOW_ENC_DEC_ERROR, ATTENTION_METHODS, resolve_layer,
                       split_kwargs)
from .value_zeroing import (VALUE_ZEROING_ENC_DEC_ERROR, VALUE_ZEROING_OPTIONS,
                            value_zeroing_options)
from .alti import check_alti_model
from .prefix_groups import check_prefix_groups
from .spec import PreparedRun, RunSpec, fn_name, hashable
from .targets import get_target, target_needs
from .text_generation import encode_generated

__all__ = ["prepare_run", "resolve_method", "check_options", "BASELINES", "GENERATION_ARGS"]

BASELINES = ("unk", "pad", "zeros")

# Keywords that belong in ``generation_args`` (checked when no method or target takes them).
GENERATION_ARGS = frozenset({
    "max_new_tokens", "max_length", "min_length", "min_new_tokens", "do_sample", "num_beams",
    "temperature", "top_k", "top_p", "no_repeat_ngram_size", "repetition_penalty",
    "eos_token_id", "pad_token_id", "forced_bos_token_id", "forced_eos_token_id"})


def resolve_method(adapter, method, layer) -> tuple:
    """``(method_fn, layer_sites)``: the method function (or an attention method's name) and
    the resolved ``layer=`` sites (``None`` for embeddings)."""
    if layer is not None:
        if not (isinstance(layer, str) or (isinstance(layer, (list, tuple)) and layer
                                           and all(isinstance(p, str) for p in layer))):
            raise TypeError(f"layer must be a site name or glob (model.sites() lists them; "
                            f"e.g. 'blocks.*.mlp_out'), a list of them, or a module path; "
                            f"got {layer!r}.")
        layer = resolve_layer(adapter, layer)
    if method in ATTENTION_METHODS:
        if layer is not None:
            raise ValueError(f"`layer` does not apply to method={method!r}.")
        if method == "value_zeroing" and adapter.is_encoder_decoder:
            raise ValueError(VALUE_ZEROING_ENC_DEC_ERROR)
        if method == "alti":
            check_alti_model(adapter)
        if method == "attention_flow" and adapter.is_encoder_decoder:
            raise ValueError(ATTENTION_FLOW_ENC_DEC_ERROR)
        return method, None
    if isinstance(method, str) and method not in list_methods():
        raise ValueError(
            f"Unknown attribution method {method!r}. Available: {list_methods()} "
            "(jaxattr.list_methods()); or pass a function "
            "`method(score_fn, x, *, has_aux, ...)`.")
    return get_method(LAYER_METHODS.get(method, method)), layer


def check_options(method_fn, *, split_head, aggregator, granular, quadrature) -> Optional[str]:
    """Validate the explicit options; returns the fused hidden reduction (``granular=False``)
    or ``None``."""
    if not isinstance(split_head, (bool, np.bool_)):
        raise TypeError(f"split_head must be True or False; got {split_head!r}.")
    if not isinstance(granular, (bool, np.bool_)):
        raise TypeError(f"granular must be True or False; got {granular!r}.")
    if quadrature is not None:
        if method_fn in ATTENTION_METHODS or "quadrature" not in needs_of(method_fn).options:
            raise ValueError(f"quadrature={quadrature!r} applies to path methods "
                             "(integrated_gradients, layer_integrated_gradients, "
                             f"sequential_integrated_gradients); {fn_name(method_fn)!r} has "
                             "no quadrature rule.")
        if quadrature not in QUADRATURE_RULES:
            raise ValueError(f"Unknown quadrature {quadrature!r}; choose one of "
                             f"{QUADRATURE_RULES}.")
    if granular:
        if aggregator is not None:
            raise ValueError(f"aggregator={aggregator!r} is the in-program hidden reduction "
                             "of granular=False; pass granular=False with it, or aggregate "
                             "the result afterwards (out.aggregate(aggregator)).")
        return None
    aggregator = aggregator or ("mean" if method_fn in ATTENTION_METHODS else "vnorm")
    if aggregator not in REDUCTIONS:
        raise ValueError(f"Unknown aggregator {aggregator!r} for granular=False; "
                         f"choose one of {sorted(REDUCTIONS)}.")
    return aggregator


def _route(kwargs: dict, method_fn, target_fn, step_targets) -> dict:
    """Each keyword option to the method / attributed function / step scores that take it."""
    owners = {"attributed_fn": target_fn}
    if method_fn not in ATTENTION_METHODS:
        owners["method"] = needs_of(method_fn).options
    elif method_fn == "value_zeroing":
        owners["method"] = VALUE_ZEROING_OPTIONS
    owners.update({f"step:{name}": fn for name, fn in step_targets})
    try:
        return split_kwargs(kwargs, owners)
    except TypeError:
        gen = sorted(set(kwargs) & GENERATION_ARGS)
        if gen:
            raise TypeError(
                f"{gen[0]!r} is a generation argument, used only when jaxattr generates the "
                f"outputs: pass generation_args={{{gen[0]!r}: ...}} (and no generated_texts)."
            ) from None
        raise


def _target_plan(attributed_fn, step_scores, routed, *, has_contrast, contrast_force_inputs,
                 contrast_sources) -> tuple:
    """``(step_fns, contrast_forward, n_dropout)`` from the targets and what they need."""
    target_fn = get_target(attributed_fn)
    step_fns = tuple((name, fn, hashable(routed[f"step:{name}"]))
                     for name, fn in ((fn_name(s), get_target(s)) for s in step_scores))
    fn_kwargs = [(target_fn, routed["attributed_fn"])] + [(fn, dict(kw))
                                                          for _, fn, kw in step_fns]
    needs = set().union(*(target_needs(fn) for fn, _ in fn_kwargs))
    if needs & {"contrast", "contrast_logits"} and not has_contrast:
        raise InputError(
            f"{fn_name(attributed_fn)!r} (or a step score) is contrastive: pass "
            "contrast_targets=[...] (alternative outputs) or, for encoder-decoder models, "
            "contrast_sources=[...].")
    contrast_forward = bool(has_contrast and (contrast_force_inputs
                                              or contrast_sources is not None
                                              or "contrast_logits" in needs))
    n_dropout = max([_mcd_steps(fn, kw) for fn, kw in fn_kwargs
                     if "dropout_logits" in target_needs(fn)] or [0])
    return step_fns, contrast_forward, n_dropout


def _mcd_steps(fn, given: dict) -> int:
    """``n_mcd_steps`` of an MC-dropout target: given, else the target's default."""
    if "n_mcd_steps" in given:
        return int(given["n_mcd_steps"])
    return int(inspect.signature(fn).parameters["n_mcd_steps"].default)


def _baseline(adapter, spec: RunSpec, baseline, seqs) -> tuple:
    """``(baseline_ids_kind, custom)`` for a method that takes a baseline: ``custom`` is a
    checked array, or a :class:`~jaxattr.baselines.BaselineSet` (gradient SHAP's set)."""
    method_fn = spec.method
    if method_fn in ATTENTION_METHODS:
        return None, None
    needs = needs_of(method_fn)
    if "baseline_ids" in needs.token_inputs:  # DIG: the path ends at a token
        if not (isinstance(baseline, str) and baseline in ("unk", "pad")):
            raise ValueError(f"method={fn_name(method_fn)!r} needs baseline tokens: "
                             "baseline='unk' (default) or 'pad', not zeros or an array (its "
                             "path ends at a word of the vocabulary).")
        return baseline, None
    if not needs.baseline:
        return None, None
    if is_baseline_set(baseline):  # gradient SHAP's distribution of baselines
        custom, kind = plan_baseline_set(adapter, baseline, method_fn, seqs,
                                         attribute_source=spec.attribute_source,
                                         attribute_target=spec.attribute_target,
                                         layer=spec.layer)
        return kind, custom
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(f"Unknown baseline {baseline!r}; use one of {BASELINES} "
                             "or an array broadcastable to the embeddings.")
        return (None if baseline == "zeros" else baseline), None
    return None, (None if baseline is None else _custom_baseline(baseline))


def _custom_baseline(baseline):
    """A custom baseline array, checked: numeric and finite (one NaN would make every
    attribution NaN)."""
    try:
        arr = np.asarray(baseline)
    except (TypeError, ValueError) as e:
        raise InputError(f"baseline must be 'unk', 'pad', 'zeros' or a numeric array "
                         f"broadcastable to the embeddings [..., hidden]; got "
                         f"{type(baseline).__name__} ({e}).") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"baseline must be 'unk', 'pad', 'zeros' or a numeric array "
                         f"broadcastable to the embeddings [..., hidden]; got an array of "
                         f"dtype {arr.dtype}.")
    try:
        check_finite(arr, "baseline")
    except ValueError as e:
        raise InputError(str(e)) from None
    return jax.numpy.asarray(arr)


def resolve_mesh(mesh):
    """``None`` | ``"auto"`` | ``Mesh`` -> ``Mesh`` with a ``"batch"`` axis (or ``None``)."""
    if mesh is None:
        return None
    from jax.sharding import Mesh
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"mesh must be None, 'auto' or a jax.sharding.Mesh, got {mesh!r}.")
        return Mesh(np.array(jax.devices()), ("batch",))
    if "batch" not in mesh.axis_names:
        raise ValueError(f"the mesh needs an axis named 'batch'; it has {mesh.axis_names}.")
    return mesh


def _info(model, a: dict, spec: RunSpec, routed: dict, chunks, custom) -> dict:
    """The run's metadata (``AttributionOutput.info``)."""
    baseline = a["baseline"]
    if not (isinstance(baseline, str) or baseline is None):
        baseline = describe_baseline(baseline) if isinstance(custom, BaselineSet) else "array"
    return {
        "model": model.name,
        "model_class": type(model.hf_model).__name__,
        "method": fn_name(a["method"]),
        "attributed_fn": fn_name(a["attributed_fn"]),
        "step_scores": [name for name, _, _ in spec.step_fns],
        "step_scores_kwargs": {name: dict(kw) for name, _, kw in spec.step_fns if kw},
        "contrast_targets": _as_list(a["contrast_targets"], "contrast_targets"),
        "contrast_sources": _as_list(a["contrast_sources"], "contrast_sources"),
        "contrast_force_inputs": spec.contrast_forward,
        "method_kwargs": dict(routed.get("method", {})),
        "layer": ", ".join(spec.layer) if spec.layer else None,
        "attributed_fn_kwargs": dict(routed["attributed_fn"]),
        "attribute_target": bool(spec.attribute_target),
        "baseline": baseline,
        "granular": bool(a["granular"]),
        "aggregator": spec.reduce_hidden,
        "batch_size": a["batch_size"],
        "generation_args": dict(a["generation_args"] or {}),
        "batch_rows": [list(c) for c in chunks],
        "jaxattr_version": __import__("jaxattr").__version__,
    }


def _spec(model, a: dict, kwargs: dict) -> tuple:
    """``(RunSpec, routed_kwargs)`` from the arguments of ``attribute``."""
    method_fn, layer = resolve_method(model.adapter, a["method"], a["layer"])
    check_prefix_groups(a["prefix_groups"])
    reduce_hidden = check_options(method_fn, split_head=a["split_head"],
                                  aggregator=a["aggregator"], granular=a["granular"],
                                  quadrature=a["quadrature"])
    if a["quadrature"] is not None:
        kwargs = dict(kwargs, quadrature=a["quadrature"])
    target_fn = get_target(a["attributed_fn"])
    step_targets = [(fn_name(s), get_target(s)) for s in a["step_scores"]]
    routed = _route(kwargs, method_fn, target_fn, step_targets)
    if method_fn == "value_zeroing":
        routed["method"] = value_zeroing_options(routed["method"])
    if (method_fn not in ATTENTION_METHODS and "special_ids" in needs_of(method_fn).options
            and "special_ids" not in routed.get("method", {})):
        routed.setdefault("method", {})["special_ids"] = tuple(
            sorted(set(model.tokenizer.all_special_ids)))
    has_contrast = a["contrast_targets"] is not None or a["contrast_sources"] is not None
    step_fns, contrast_forward, n_dropout = _target_plan(
        a["attributed_fn"], a["step_scores"], routed, has_contrast=has_contrast,
        contrast_force_inputs=a["contrast_force_inputs"],
        contrast_sources=a["contrast_sources"])
    enc_dec = model.is_encoder_decoder
    spec = RunSpec(method=method_fn, method_kwargs=hashable(routed.get("method", {})),
                   target_fn=target_fn, target_kwargs=hashable(routed["attributed_fn"]),
                   step_fns=step_fns, attribute_source=enc_dec,
                   attribute_target=bool(a["attribute_target"] or not enc_dec),
                   contrast_forward=contrast_forward, n_dropout=n_dropout, layer=layer,
                   reduce_hidden=reduce_hidden, split_head=bool(a["split_head"]),
                   prefix_groups=a["prefix_groups"])
    return spec, routed


def prepare_run(model, input_texts, generated_texts, **a) -> PreparedRun:
    """:meth:`AttributionModel.prepare`: ``a`` holds every named option of ``attribute``
    (``kwargs``: the method / target options)."""
    kwargs = dict(a.pop("kwargs"))
    a["method"] = model.attribution_method if a["method"] is None else a["method"]
    if a["batch_size"] is not None:
        a["batch_size"] = count(a["batch_size"], "batch_size")
    if isinstance(a["step_scores"], str):  # one name, not its characters
        a["step_scores"] = (a["step_scores"],)
    spec, routed = _spec(model, a, kwargs)
    texts = _as_list(input_texts, "input_texts")
    span = dict(attr_pos_start=a["attr_pos_start"], attr_pos_end=a["attr_pos_end"])
    if generated_texts is None:
        seqs = encode_generated(model, texts, batch_size=a["batch_size"],
                                generation_args=a["generation_args"], **span)
    else:
        seqs = model.encode(texts, generated_texts, **span)
    check_exact_length(model, seqs)
    ids_kind, custom = _baseline(model.adapter, spec, a["baseline"], seqs)
    spec = dataclasses.replace(spec, baseline_ids=ids_kind)
    contrasts = alignments = None
    if a["contrast_targets"] is not None or a["contrast_sources"] is not None:
        contrasts, alignments = encode_contrast(model, seqs, a["contrast_targets"],
                                                a["contrast_sources"],
                                                a["contrast_targets_alignments"])
    mesh = resolve_mesh(a["mesh"])
    chunks, rows = chunk_order(seqs, a["batch_size"],
                               None if mesh is None else mesh.devices.size)
    tok = model.tokenizer
    token = tok.unk_token_id if spec.baseline_ids == "unk" else None
    return PreparedRun(
        spec=spec, seqs=tuple(seqs), contrasts=None if contrasts is None else tuple(contrasts),
        alignments=None if alignments is None else tuple(alignments), chunks=chunks,
        rows=rows, baseline=custom, info=_info(model, a, spec, routed, chunks, custom),
        mesh=mesh,
        pad_id=model.pad_token_id, max_positions=model.max_positions,
        baseline_token=model.pad_token_id if token is None else int(token),
        special_ids=tuple(sorted(set(tok.all_special_ids))),
        method_arrays=method_arrays(model, spec))


def method_arrays(model, spec: RunSpec):
    """Array keywords a method declares that come from the model, not the batch: DIG's
    neighbour lists ``knn`` per attributed side, computed on the device once per embedding
    table and cached (:mod:`jaxattr.knn_cache`). ``None`` for other methods."""
    if spec.method in ATTENTION_METHODS or "knn" not in needs_of(spec.method).token_inputs:
        return None
    given = dict(spec.method_kwargs)
    from .knn_cache import cached_knn_graph
    from .pipeline import vocabulary_table
    default = inspect.signature(spec.method).parameters["n_neighbors"].default
    n_neighbors = given.get("n_neighbors", default)
    sides = [s for s, on in (("source", spec.attribute_source),
                             ("target", spec.attribute_target)) if on]
    return {"knn": {side: cached_knn_graph(vocabulary_table(model.adapter, side), n_neighbors)
                    for side in sides}}
