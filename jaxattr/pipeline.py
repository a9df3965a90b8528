"""The jitted attribution pipeline: one teacher-forced forward, vmapped VJPs, pytree result.

For a causal decoder, position ``i`` only sees positions ``<= i``, so a single forward over the
whole (prompt + continuation) sequence yields the logits of every generation step, and one VJP
vmapped over one-hot cotangents of the step scores yields every step's gradient. This equals
the per-step computation on each prefix (``tests/test_pipeline.py`` checks it).
"""
from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .adapters import ModelAdapter
from .baselines import BaselineSet
from .compile_effort import EffortJit
from .internals.sites import SiteError, is_raw_path, parse_site, resolve_sites
from .methods._common import as_key, example_identity
from .methods.attention_flow import flow_from_mixing, mixing_matrices
from .methods.attention_rollout import attention_rollout, encoder_decoder_rollout
from .methods.deeplift import RESCALE_NEEDS_NATIVE, deeplift
from .methods.gradient import input_x_gradient, saliency
from .methods.integrated_gradients import integrated_gradients
from .methods.needs import needs_of
from .methods.separable import is_separable, step_separable
from .prefix_groups import (check_prefix_groups, one_pass_flops, plan_prefix_groups,
                             stitch_groups, truncate_batch)
from .results import BatchAttribution
from .targets import TargetBatch
from .alti import alti_scores
from .value_zeroing import normalize_scores, value_zeroing_scores

__all__ = ["ModelBatch", "attribute_batch", "compiled_attribute", "split_kwargs",
           "keyword_names", "example_ids", "example_keys", "dropout_keys", "resolve_layer",
           "prefix_plan", "exact_plan", "EXACT_NEEDS_NATIVE",
           "ATTENTION_METHODS"]

# Methods read from forwards alone (no score function, no gradient): the attention patterns
# of one forward (attention flow: then max-flows on the host), value zeroing (one corrupted
# forward per token, vmapped) and ALTI (one decomposing forward per token, vmapped).
ATTENTION_METHODS = ("attention", "attention_rollout", "attention_flow", "value_zeroing",
                     "alti")

ATTENTION_FLOW_ENC_DEC_ERROR = (
    "method='attention_flow' is for decoder-only models (one layered graph of self-attention); "
    "for an encoder-decoder use method='attention_rollout' (source and target shares through "
    "encoder, cross- and decoder attention).")


@struct.dataclass
class ModelBatch:
    """Padded ids and masks of one batch (see :func:`jaxattr.encoding.pad_batch`).

    ``baseline_*_ids`` are the ids whose embeddings form the integrated-gradients baseline
    (``None`` when no id-based baseline is used). ``contrast_*`` describe the contrastive
    sequence (see :func:`jaxattr.encoding.pad_contrast`): ``contrast_positions[B, T]`` is the
    contrast position aligned with each step, ``contrast_step_mask[B, T]`` whether there is one.
    ``example_ids[B]`` (``uint32``; computed from the tokens when ``None``) names each example
    for its random draws (:func:`example_ids`).
    """
    target_ids: jax.Array
    target_mask: jax.Array
    step_positions: jax.Array
    step_mask: jax.Array
    source_ids: Optional[jax.Array] = None
    source_mask: Optional[jax.Array] = None
    baseline_target_ids: Optional[jax.Array] = None
    baseline_source_ids: Optional[jax.Array] = None
    contrast_target_ids: Optional[jax.Array] = None
    contrast_target_mask: Optional[jax.Array] = None
    contrast_source_ids: Optional[jax.Array] = None
    contrast_source_mask: Optional[jax.Array] = None
    contrast_positions: Optional[jax.Array] = None
    contrast_step_mask: Optional[jax.Array] = None
    example_ids: Optional[jax.Array] = None


def keyword_names(fn: Callable) -> set:
    """Keyword-only (or defaulted) parameter names a function declares."""
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params
            if p.kind in (p.KEYWORD_ONLY,) or (p.kind == p.POSITIONAL_OR_KEYWORD
                                                and p.default is not p.empty)}


def split_kwargs(kwargs: dict, owners: dict) -> dict:
    """Route each keyword to the functions (by role) that declare it.

    ``owners`` maps a role (``"method"``, ``"attributed_fn"``) to the set of keyword names
    it takes (a method's ``needs_of(method).options``) or to a function whose keywords are
    read (targets). A keyword nobody declares raises, naming the accepted ones.
    """
    routed = {role: {} for role in owners}
    declared = {role: (set(fn) if isinstance(fn, (set, frozenset)) else keyword_names(fn))
                for role, fn in owners.items()}
    for key, value in kwargs.items():
        hits = [role for role, names in declared.items() if key in names]
        if not hits:
            accepted = sorted(set().union(*declared.values()) - {"has_aux"})
            raise TypeError(f"unknown keyword argument {key!r}: neither the method nor the "
                            f"attributed function takes it. Accepted here: {accepted}.")
        for role in hits:
            routed[role][key] = value
    return routed


def example_ids(batch: ModelBatch) -> jax.Array:
    """``uint32 [B]``: each example's identity, a hash of its unpadded source and target tokens
    (:func:`jaxattr.methods._common.example_identity`), independent of its row, batch and
    padding. ``batch.example_ids`` when set."""
    if batch.example_ids is not None:
        return batch.example_ids
    ident = example_identity(batch.target_ids, batch.target_mask)
    if batch.source_ids is not None:
        src = example_identity(batch.source_ids, batch.source_mask)
        ident = example_identity(jnp.stack([ident, src], 1).astype(jnp.int32),
                                 jnp.ones((ident.shape[0], 2), jnp.int32))
    return ident


def example_keys(method: Callable, method_kwargs: dict, batch: ModelBatch):
    """Per-example PRNG keys ``[B]`` for a method that draws random numbers (declares
    ``key``): the method's key (given or its declared default) folded with each example's
    identity, so that an example's noise is the same alone, in any batch, at any row, padded
    to any length, and sharded. ``None`` for methods without a ``key``."""
    needs = needs_of(method)
    if not needs.key:
        return None
    base = as_key(method_kwargs.get("key", needs.key_default))
    if base.ndim != 0:
        raise ValueError("model.attribute(key=...) takes one PRNG key or an integer seed; "
                         "each example's key is folded from it with the example's identity.")
    return jax.vmap(jax.random.fold_in, (None, 0))(base, example_ids(batch))


def dropout_keys(seed: int, n_forwards: int, ids: jax.Array) -> jax.Array:
    """Typed keys ``[n_forwards, B]`` of the MC-dropout forwards: forward ``k`` of example
    ``b`` draws its masks from ``fold_in(fold_in(key(seed), k), ids[b])`` (``ids``: each
    example's identity, :func:`example_ids`), so they do not depend on its row or batch."""
    per_forward = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed),
                                                            jnp.arange(n_forwards))
    return jax.vmap(lambda k: jax.vmap(jax.random.fold_in, (None, 0))(k, ids))(per_forward)


def _gather_steps(values: jax.Array, positions: jax.Array) -> jax.Array:
    """``values[B, L, ...]`` at ``positions[B, T]`` -> ``[B, T, ...]``."""
    idx = positions.reshape(positions.shape + (1,) * (values.ndim - 2)).astype(jnp.int32)
    return jnp.take_along_axis(values, idx, axis=1)


def _contrast_fields(adapter: ModelAdapter, batch: ModelBatch, contrast_forward: bool) -> dict:
    """Step-aligned contrast ids/mask and, when asked, the logits of the contrastive forward.

    The contrastive forward reads token ids, not the attributed embeddings, so it is a constant
    of the attribution (as in Inseq); it runs in the same compiled program as the original.
    """
    if batch.contrast_positions is None:
        return {}
    out = dict(contrast_ids=_gather_steps(batch.contrast_target_ids, batch.contrast_positions),
               contrast_mask=batch.contrast_step_mask)
    if contrast_forward:
        has_own_source = batch.contrast_source_ids is not None
        logits = adapter.logits(
            target_ids=batch.contrast_target_ids, target_mask=batch.contrast_target_mask,
            source_ids=batch.contrast_source_ids if has_own_source else batch.source_ids,
            source_mask=batch.contrast_source_mask if has_own_source else batch.source_mask,
            positions=batch.contrast_positions - 1)
        out["contrast_logits"] = jax.lax.stop_gradient(logits)
    return out


def _target_batch(adapter: ModelAdapter, batch: ModelBatch, contrast_forward: bool) -> TargetBatch:
    """What the targets see besides the logits: step token ids, masks, contrast fields."""
    return TargetBatch(target_ids=_gather_steps(batch.target_ids, batch.step_positions),
                       step_mask=batch.step_mask,
                       **_contrast_fields(adapter, batch, contrast_forward))


def _site_side(name: str) -> str:
    """Which token axis a layer site's activations run along (site name or raw path)."""
    if is_raw_path(name):
        return "source" if any("encoder" in part for part in name.split("/")) else "target"
    return "source" if parse_site(name).stack == "encoder" else "target"


def resolve_layer(adapter: ModelAdapter, layer) -> Optional[tuple]:
    """``layer=`` of the layer methods as a static tuple of sites.

    Accepts a site name or glob (``"blocks.*.mlp_out"``), a list of them, or a raw module
    path (``"transformer/h/1/mlp"``, also as a tuple of its parts, the legacy form). All
    sites must run along one token axis (all encoder, or all decoder/decoder-only).
    """
    if layer is None:
        return None
    if isinstance(layer, str):
        layer = (layer,)
    layer, available = tuple(layer), adapter.sites()
    if len(layer) > 1 and all(isinstance(p, str) and "/" not in p
                              and not fnmatch.filter(available, p) for p in layer):
        layer = ("/".join(layer),)  # legacy: a module path as a tuple of its parts
    names = resolve_sites(layer, available, allow_raw=True, patchable=True)
    sides = {_site_side(n) for n in names}
    if len(sides) > 1:
        raise SiteError(f"layer sites {list(names)} run along both the source and the target; "
                        "attribute encoder and decoder sites in separate calls.")
    return names


# Layer methods whose result only needs the gradient at the clean activations: every site's
# gradient comes from one backward through zero-cost pass-through patches.
_POINT_GRADIENT_METHODS = (saliency, input_x_gradient)


def _attributed_inputs(adapter, batch, baseline, run, emb: dict, all_embeds: dict, *,
                       layer, takes_baseline: bool) -> tuple:
    """``(x, forward, base_x)``: what the method attributes, the forward as a function of
    it, and its baseline.

    Embeddings, or layer attribution: the activation at each site, the score a function of
    it through the rest of the network. One site: its output is replaced by x. Several
    (gradient at the clean point only): each output o becomes o + (x - stop_gradient(o)),
    the same value, and the backward reaches every site with all downstream paths intact, so
    one VJP gives every site's gradient.
    """
    if layer is None:
        def forward(xd, dropout_rng=None):
            return run(xd, dropout_rng=dropout_rng)

        return emb, forward, (_baseline(adapter, batch, baseline, emb) if takes_baseline
                              else None)

    def forward(xd, dropout_rng=None):
        if len(layer) == 1:
            patch = {layer[0]: lambda _: xd[layer[0]]}
        else:
            patch = {n: (lambda o, v=xd[n]: o + (v - jax.lax.stop_gradient(o))) for n in layer}
        return run({}, patch=patch, dropout_rng=dropout_rng)

    x = run({}, capture=layer)["captured"]
    base_x = None
    if takes_baseline:
        base_x = run(_baseline(adapter, batch, baseline, all_embeds), capture=layer)["captured"]
    return x, forward, base_x


def _attribute_impl(adapter: ModelAdapter, batch: ModelBatch, baseline, *, method, method_kwargs,
                    target_fn, target_kwargs, step_fns, attribute_source, attribute_target,
                    contrast_forward=False, n_dropout=0, dropout_seed=0, layer=None,
                    reduce_hidden=None, split_head=True, method_arrays=None,
                    causal_chunks=None):
    common = dict(method=method, method_kwargs=method_kwargs, target_fn=target_fn,
                  target_kwargs=target_kwargs, step_fns=step_fns, contrast_forward=contrast_forward,
                  n_dropout=n_dropout, dropout_seed=dropout_seed, reduce_hidden=reduce_hidden,
                  split_head=split_head, method_arrays=method_arrays)
    if layer is not None and len(layer) > 1 and method not in _POINT_GRADIENT_METHODS:
        # Methods that move the activations (IG paths, noise) see each site on its own: the
        # rest of the network runs from the moved value, as in a single-layer call.
        parts = [_attribute_impl(adapter, batch, baseline, layer=(name,),
                                 attribute_source=attribute_source,
                                 attribute_target=attribute_target, **common)
                 for name in layer]
        return _stack_sites(parts)
    if (method is deeplift and dict(method_kwargs).get("mode", "rescale") == "rescale"
            and not getattr(adapter, "deeplift_rules", False)):
        raise ValueError(RESCALE_NEEDS_NATIVE)
    tbatch = _target_batch(adapter, batch, contrast_forward)
    # Step-separable targets back-propagate through the LM head once, not once per step.
    split = split_head and is_separable(target_fn) and not n_dropout
    run, emb, all_embeds = _embedded_run(adapter, batch, split=split,
                                         attribute_source=attribute_source,
                                         attribute_target=attribute_target)
    needs = needs_of(method)
    x, forward, base_x = _attributed_inputs(adapter, batch, baseline, run, emb, all_embeds,
                                            layer=layer, takes_baseline=needs.baseline)
    if layer is not None:
        side = _site_side(layer[0])
        attribute_source, attribute_target = side == "source", side == "target"
    score_fn = _score_fn(forward, batch, tbatch, target_fn=target_fn,
                         target_kwargs=target_kwargs, split=split, n_dropout=n_dropout,
                         dropout_seed=dropout_seed)
    if causal_chunks is not None:
        score_fn.per_output_grads = _causal_chunk_grads(adapter, batch, tbatch, target_fn,
                                                        target_kwargs, causal_chunks)
    kwargs = _call_kwargs(method, needs, method_kwargs, batch, x, base_x, layer=layer)
    if needs.token_inputs:
        kwargs.update(_token_inputs(adapter, batch, needs, x, layer,
                                    lambda xd: forward(xd)["logits"], tbatch))
        kwargs.update(method_arrays or {})
    attr, (step_logits, tb, scores) = method(score_fn, x, has_aux=True, **kwargs)
    step_scores = {name: fn(step_logits, tb, **dict(kw)) * batch.step_mask
                   for name, fn, kw in step_fns}
    if needs.completeness:
        step_scores["deltas"] = _completeness_deltas(attr, scores, score_fn(base_x)[0], batch)
    if layer is None:
        return _assemble(attr, batch, step_scores, attribute_source, attribute_target,
                         reduce_hidden)
    side = "source" if attribute_source else "target"
    parts = [_assemble({side: attr[name]}, batch, step_scores, attribute_source,
                       attribute_target, reduce_hidden) for name in layer]
    return parts[0] if len(parts) == 1 else _stack_sites(parts)


def _embedded_run(adapter: ModelAdapter, batch: ModelBatch, *, split: bool,
                  attribute_source: bool, attribute_target: bool):
    """The batch's embeddings and ``run(embeds, *, patch, capture, dropout_rng)``, a forward
    from (possibly replaced) embeddings with logits only at the positions that predict the
    attributed steps (``[B, T, V]``; the head's input instead when ``split``).

    Returns ``(run, attributed embeddings by side, all embeddings by side)``."""
    tgt_embeds = adapter.embed(batch.target_ids, side="decoder")
    src_embeds = (adapter.embed(batch.source_ids, side="encoder")
                  if adapter.is_encoder_decoder else None)
    emb = {}
    if attribute_source:
        emb["source"] = src_embeds
    if attribute_target:
        emb["target"] = tgt_embeds

    def run(embeds, *, patch=None, capture=(), dropout_rng=None):
        return adapter.forward(
            target_ids=batch.target_ids, target_mask=batch.target_mask,
            target_embeds=embeds.get("target", tgt_embeds),
            source_ids=batch.source_ids, source_mask=batch.source_mask,
            source_embeds=embeds.get("source", src_embeds), dropout_rng=dropout_rng,
            capture=capture, patch=patch, positions=batch.step_positions - 1,
            return_head=split)

    all_embeds = ({"source": src_embeds, "target": tgt_embeds} if adapter.is_encoder_decoder
                  else {"target": tgt_embeds})
    return run, emb, all_embeds


def _completeness_deltas(attr: dict, scores: jax.Array, base_scores: jax.Array,
                         batch: ModelBatch) -> jax.Array:
    """Completeness per (sequence, step), ``[B, T]``: Σ attributions − (s(x) − s(baseline)).

    ``attr`` maps sides or sites to ``[T, B, ...]``; ``scores``, ``base_scores`` are ``[B, T]``."""
    total = sum(a.reshape(a.shape[:2] + (-1,)).sum(-1) for a in attr.values())  # [T, B]
    return (total.T - (scores - base_scores)) * batch.step_mask


def _causal_chunk_grads(adapter, batch: ModelBatch, tbatch: TargetBatch, target_fn,
                        target_kwargs, groups: tuple) -> Callable:
    """``x -> (scores, grads, aux)``, the per-step gradients of the score function with exact
    causal truncation (the native decoder's ``causal_step_grads``), in place of the one-pass
    VJP (:func:`jaxattr.methods.per_output_grads` uses it)."""
    def score_of(logits):
        return target_fn(logits, tbatch, **dict(target_kwargs)) * batch.step_mask

    def grads_of(xd):
        if set(xd) != {"target"}:
            raise ValueError("prefix_groups='exact' attributes the target embeddings of a "
                             "decoder-only model only.")
        scores, logits, grads = adapter.causal_step_grads(
            target_ids=batch.target_ids, target_mask=batch.target_mask,
            target_embeds=xd["target"], positions=batch.step_positions - 1,
            score_of=score_of, groups=groups)
        return scores, {"target": grads}, (logits, tbatch, scores)

    return grads_of


# Methods whose attributions come from per-output gradients of the clean score function
# (per_output_grads), the ones exact causal truncation serves.
_EXACT_METHODS = (saliency, input_x_gradient, integrated_gradients)
EXACT_NEEDS_NATIVE = (
    "prefix_groups='exact' (exact causal truncation) needs a model whose forward is jaxattr's "
    "own (the native llama-like family, jaxattr.models); this model runs through another "
    "backend. Use prefix_groups='auto' or an int.")


def _check_exact(adapter, batch, baseline, *, method, target_fn, step_fns, n_dropout,
                 layer) -> None:
    """Raise a ``ValueError`` naming what to change unless exact causal truncation applies."""
    if not hasattr(adapter, "causal_step_grads"):
        raise ValueError(EXACT_NEEDS_NATIVE)
    name = getattr(method, "__name__", str(method))
    if method not in _EXACT_METHODS:
        raise ValueError(f"prefix_groups='exact' serves saliency, input_x_gradient and "
                         f"integrated_gradients; method "
                         f"{name!r} runs with prefix_groups='auto' or an int.")
    if not _groupable(adapter, batch, baseline, method=method, target_fn=target_fn,
                      step_fns=step_fns, n_dropout=n_dropout, layer=layer):
        raise ValueError("prefix_groups='exact' needs what prefix groups need: token "
                         "embeddings attributed (no layer), step-separable targets and step "
                         "scores, no MC dropout, a baseline without a position axis, and a "
                         "concrete batch (not under an outer jit). Use prefix_groups=1.")


def _score_fn(forward, batch: ModelBatch, tbatch: TargetBatch, *, target_fn, target_kwargs,
              split: bool, n_dropout: int, dropout_seed: int):
    """``score_fn(x) -> (scores[B, T], (step_logits, TargetBatch, scores))`` of the attributed
    function over ``forward``; through the split-off head when ``split`` (one backward
    through the head for every step), with MC-dropout forwards when ``n_dropout``."""
    def step_logits_of(xd, dropout_rng=None):
        return forward(xd, dropout_rng)["logits"]  # [B, T, V]

    def score_fn(xd):
        if split:
            out = forward(xd)
            if out["head"] is not None:
                head = out["head"]

                def separable_scores(h, consts):  # [B, T, H] -> [B, T]: step t reads h[:, t]
                    head_params, tb = consts
                    logits = head(h, head_params)
                    return target_fn(logits, tb, **dict(target_kwargs)) * tb.step_mask

                scores = step_separable(separable_scores, out["hidden"],
                                        (out["head_params"], tbatch))
                return scores, (out["logits"], tbatch, scores)
            step_logits = out["logits"]
        else:
            step_logits = step_logits_of(xd)
        tb = tbatch
        if n_dropout:  # [K, B] keys: each example's masks from its own identity
            keys = dropout_keys(dropout_seed, n_dropout, example_ids(batch))
            tb = tb.replace(dropout_logits=jax.vmap(lambda k: step_logits_of(xd, k))(keys))
        scores = target_fn(step_logits, tb, **dict(target_kwargs)) * batch.step_mask
        return scores, (step_logits, tb, scores)

    return score_fn


def _call_kwargs(method, needs, method_kwargs, batch: ModelBatch, x, base_x, *,
                 layer) -> dict:
    """The method's keywords: its options plus what it declares it needs (a baseline, a
    position mask, per-example keys)."""
    kwargs = dict(method_kwargs)
    if needs.baseline:
        kwargs["baseline"] = base_x
    if layer is None and needs.position_mask:
        # Real tokens (1) vs padding (0) per attributed side, for methods whose result
        # depends on which positions exist (LIME's regression).
        kwargs["position_mask"] = {side: batch.source_mask if side == "source"
                                   else batch.target_mask for side in x}
    keys = example_keys(method, kwargs, batch)
    if keys is not None:
        kwargs["key"] = keys
    return kwargs


def _token_inputs(adapter, batch: ModelBatch, needs, x: dict, layer, logits_of: Callable,
                  tbatch: TargetBatch) -> dict:
    """Token-level inputs a method declares (:data:`jaxattr.methods.needs.TOKEN_INPUTS`;
    DIG's paths and ReAGent's replacements run through the vocabulary): ``token_ids`` /
    ``baseline_ids`` ``{side: [B, L]}``, ``vocabulary`` ``{side: [V, H]}`` (the attributed
    embedding table, with the model's scale), ``logits_fn`` (``x -> [B, T, V]`` step
    logits), ``target_ids`` ``[B, T]`` and ``visible`` ``{side: [B, T, L]}`` (the real
    positions each real step sees: its prefix on a causal side). ``knn`` comes in
    ``method_arrays``."""
    wants = needs.token_inputs
    if layer is not None:
        raise ValueError("this method attributes token embeddings (its inputs run through "
                         "the vocabulary); it has no layer variant: drop `layer`.")
    out = {}
    if "token_ids" in wants:
        out["token_ids"] = {side: batch.source_ids if side == "source" else batch.target_ids
                            for side in x}
    if "baseline_ids" in wants:
        base = {side: batch.baseline_source_ids if side == "source"
                else batch.baseline_target_ids for side in x}
        if any(b is None for b in base.values()):
            raise ValueError("this method needs baseline tokens: baseline='unk' (default) or "
                             "'pad', not zeros or an array (its path ends at a word of the "
                             "vocabulary).")
        out["baseline_ids"] = base
    if "vocabulary" in wants:
        out["vocabulary"] = {side: vocabulary_table(adapter, side) for side in x}
    if "logits_fn" in wants:
        out["logits_fn"] = logits_of
    if "target_ids" in wants:
        out["target_ids"] = tbatch.target_ids
    if "visible" in wants:
        step = batch.step_mask[:, :, None] > 0
        vis = {}
        for side in x:
            if side == "source":
                vis[side] = step & (batch.source_mask[:, None, :] > 0)
            else:
                L = batch.target_ids.shape[1]
                before = jnp.arange(L)[None, None, :] < batch.step_positions[:, :, None]
                vis[side] = step & before & (batch.target_mask[:, None, :] > 0)
        out["visible"] = vis
    return out


def vocabulary_table(adapter, side: str) -> jax.Array:
    """``[V, H]``: every token's attributed embedding on ``side`` (``"source"`` or
    ``"target"``), i.e. the embedding table times the model's embedding scale."""
    emb_side = "encoder" if side == "source" else "decoder"
    n_vocab = adapter.embedding_matrix(emb_side).shape[0]
    return adapter.embed(jnp.arange(n_vocab)[None], side=emb_side)[0]


def _stack_sites(parts: list) -> BatchAttribution:
    """Per-site results -> one with a site axis before the hidden axes
    (``[B, R, T, sites, ...]``); step scores from the first, completeness ``deltas`` the
    largest in magnitude over the sites."""
    def stack(field):
        values = [getattr(p, field) for p in parts]
        if values[0] is None:
            return None
        if len({v.shape for v in values}) > 1:
            raise ValueError("layer sites of different shapes "
                             f"{[tuple(v.shape[3:]) for v in values]} cannot be attributed "
                             "in one call; group sites of one kind (e.g. 'blocks.*.mlp_out').")
        return jnp.stack(values, axis=3)
    scores = dict(parts[0].step_scores)
    if "deltas" in scores:
        d = jnp.stack([p.step_scores["deltas"] for p in parts])
        scores["deltas"] = jnp.take_along_axis(d, jnp.abs(d).argmax(0)[None], 0)[0]
    return parts[0].replace(source_attributions=stack("source_attributions"),
                            target_attributions=stack("target_attributions"),
                            step_scores=scores)


def _assemble(attr: dict, batch: ModelBatch, step_scores: dict, attribute_source: bool,
              attribute_target: bool, reduce_hidden: Optional[str] = None) -> BatchAttribution:
    """``{"source"|"target": [T, B, R, ...]}`` -> masked :class:`BatchAttribution`; with
    ``reduce_hidden`` the trailing axes are reduced inside the program (``granular=False``)."""
    def cols(a):  # [T, B, R, ...] -> [B, R, T, ...]
        a = jnp.moveaxis(a, 0, 2)
        if reduce_hidden is not None:
            from .aggregate import REDUCTIONS
            a = REDUCTIONS[reduce_hidden](a.reshape(a.shape[:3] + (-1,)))
        return a

    def expand(m, nd):
        return m.reshape(m.shape + (1,) * (nd - m.ndim))

    result = BatchAttribution(
        source_attributions=None, target_attributions=None, step_scores=step_scores,
        source_mask=batch.source_mask, target_mask=batch.target_mask,
        step_mask=batch.step_mask, step_positions=batch.step_positions)
    if attribute_source:
        a = cols(attr["source"])
        m = batch.source_mask[:, :, None] * batch.step_mask[:, None, :]
        result = result.replace(source_attributions=a * expand(m, a.ndim).astype(a.dtype))
    if attribute_target:
        a = cols(attr["target"])
        m = result.target_row_mask
        result = result.replace(target_attributions=a * expand(m, a.ndim).astype(a.dtype))
    return result


def _attention_impl(adapter: ModelAdapter, batch: ModelBatch, *, target_fn, target_kwargs,
                    step_fns, attribute_source, attribute_target, contrast_forward=False,
                    reduce_hidden=None, rollout=False):
    """Attention weights as attributions, from the same single forward.

    Result trailing axes are ``[layers, heads]``: decoder-only, the self-attention of the
    query that predicts each step; encoder-decoder, the cross-attention (source rows) and the
    decoder self-attention (target rows). With ``rollout``, the attention rollout through all
    layers of that query, with one trailing axis of size 1: decoder-only
    :func:`jaxattr.methods.attention_rollout`; encoder-decoder
    :func:`jaxattr.methods.encoder_decoder_rollout` (source and target shares of the
    decoder's last state, summing to 1 per step when both sides are attributed).
    """
    out = adapter.forward(target_ids=batch.target_ids, target_mask=batch.target_mask,
                          source_ids=batch.source_ids, source_mask=batch.source_mask,
                          output_attentions=True, positions=batch.step_positions - 1)
    tb = _target_batch(adapter, batch, contrast_forward)
    step_logits = out["logits"]
    step_scores = {name: fn(step_logits, tb, **dict(kw)) * batch.step_mask
                   for name, fn, kw in step_fns}
    att = out["attentions"]
    q = batch.step_positions - 1  # query position predicting each step [B, T]

    def per_step(weights):  # tuple of [B, heads, Lq, Lk] -> [T, B, Lk, layers, heads]
        if rollout and not adapter.is_encoder_decoder:
            weights = attention_rollout(weights)
        if rollout:  # [B, Lq, Lk] as one layer and one head
            weights = (weights[:, None],)
        w = jnp.stack(weights, axis=0)  # [layers, B, heads, Lq, Lk]
        w = jnp.take_along_axis(w, q[None, :, None, :, None], axis=3)  # [layers,B,heads,T,Lk]
        w = jnp.transpose(w, (3, 1, 4, 0, 2))
        return w[..., 0] if rollout else w  # rollout: [T, B, Lk, 1]

    attr = {}
    if adapter.is_encoder_decoder:
        src, tgt = att["cross_attentions"], att["decoder_attentions"]
        if rollout:
            src, tgt = encoder_decoder_rollout(att["encoder_attentions"], tgt, src)
        if attribute_source:
            attr["source"] = per_step(src)
        if attribute_target:
            attr["target"] = per_step(tgt)
    else:
        attr["target"] = per_step(att["attentions"])
        attribute_target = True
    return _assemble(attr, batch, step_scores, attribute_source, attribute_target,
                     reduce_hidden)


def _value_zeroing_impl(adapter: ModelAdapter, batch: ModelBatch, *, target_fn, target_kwargs,
                        step_fns, attribute_source, attribute_target, contrast_forward=False,
                        reduce_hidden=None, method_kwargs=()):
    """Value zeroing (:mod:`jaxattr.value_zeroing`) of the positions that predict each step:
    target rows ``[T, B, L, layers]``, each column normalised over the tokens the step sees
    (Inseq's threshold 1e-5 and sum-to-1). Decoder-only. ``method_kwargs``: its options
    (``similarity_metric``, ``zeroed_units_indices``; static)."""
    dist = value_zeroing_scores(adapter, target_ids=batch.target_ids,
                                target_mask=batch.target_mask,
                                **dict(method_kwargs))                # [B, Ltok, Lpos, n]
    q = batch.step_positions - 1
    cols = jnp.take_along_axis(dist, q[:, None, :, None], axis=2)    # [B, Ltok, T, n]
    tok = jnp.arange(dist.shape[1])
    valid = ((tok[None, :, None] <= q[:, None, :])
             & (batch.target_mask[:, :, None] > 0))[..., None]       # [B, Ltok, T, 1]
    cols = normalize_scores(cols, valid) * valid
    out = adapter.forward(target_ids=batch.target_ids, target_mask=batch.target_mask,
                          positions=q)
    tb = _target_batch(adapter, batch, contrast_forward)
    step_scores = {name: fn(out["logits"], tb, **dict(kw)) * batch.step_mask
                   for name, fn, kw in step_fns}
    attr = {"target": jnp.transpose(cols, (2, 0, 1, 3))}              # [T, B, Ltok, n]
    return _assemble(attr, batch, step_scores, False, True, reduce_hidden)


def _alti_impl(adapter: ModelAdapter, batch: ModelBatch, *, target_fn, target_kwargs,
              step_fns, attribute_source, attribute_target, contrast_forward=False,
              reduce_hidden=None):
    """ALTI (:mod:`jaxattr.alti`) of the positions that predict each step: target rows
    ``[T, B, L, 1]`` (the rollout row of each step's query, summing to 1 over the tokens it
    sees), laid out as ``attention_rollout``'s. Decoder-only."""
    rows = alti_scores(adapter, target_ids=batch.target_ids,
                       target_mask=batch.target_mask)                  # [B, Lpos, Ltok]
    q = batch.step_positions - 1
    rows = jnp.take_along_axis(rows, q[:, :, None], axis=1)          # [B, T, Ltok]
    out = adapter.forward(target_ids=batch.target_ids, target_mask=batch.target_mask,
                          positions=q)
    tb = _target_batch(adapter, batch, contrast_forward)
    step_scores = {name: fn(out["logits"], tb, **dict(kw)) * batch.step_mask
                   for name, fn, kw in step_fns}
    attr = {"target": jnp.transpose(rows, (1, 0, 2))[..., None]}     # [T, B, Ltok, 1]
    return _assemble(attr, batch, step_scores, False, True, reduce_hidden)


def _flow_mixing_impl(adapter: ModelAdapter, batch: ModelBatch, *, step_fns,
                      contrast_forward=False):
    """The device part of attention flow: one forward, every layer's ``Â`` ``[n, B, L, L]``
    (:func:`jaxattr.methods.attention_flow.mixing_matrices`) and the step scores."""
    out = adapter.forward(target_ids=batch.target_ids, target_mask=batch.target_mask,
                          output_attentions=True, positions=batch.step_positions - 1)
    tb = _target_batch(adapter, batch, contrast_forward)
    step_scores = {name: fn(out["logits"], tb, **dict(kw)) * batch.step_mask
                   for name, fn, kw in step_fns}
    return mixing_matrices(out["attentions"]["attentions"]), step_scores


def _attention_flow_run(adapter: ModelAdapter, batch: ModelBatch, *, jit, target_fn,
                        target_kwargs, step_fns, attribute_source, attribute_target,
                        contrast_forward=False, reduce_hidden=None):
    """Attention flow (:mod:`jaxattr.methods.attention_flow`) of the positions that predict
    each step: ``Â`` from the jitted forward, then on the host one max-flow per (step, input
    token) with a path between them; target rows ``[T, B, L, 1]``. Decoder-only."""
    if adapter.is_encoder_decoder:
        raise ValueError(ATTENTION_FLOW_ENC_DEC_ERROR)
    if isinstance(batch.target_ids, jax.core.Tracer):
        raise ValueError("method='attention_flow' computes its max-flows on the host (SciPy), "
                         "so it cannot run inside jax.jit / vmap: call attribute_batch outside "
                         "a traced function, or use method='attention_rollout' (all on device).")
    device = _flow_mixing_jits.pick(adapter.params) if jit else _flow_mixing_impl
    mix, step_scores = device(adapter, batch, step_fns=step_fns,
                              contrast_forward=contrast_forward)
    q = np.where(np.asarray(batch.step_mask) > 0, np.asarray(batch.step_positions) - 1, -1)
    flows = flow_from_mixing(np.moveaxis(np.asarray(mix), 0, 1), query_positions=q,
                             key_mask=np.asarray(batch.target_mask) > 0)   # [B, T, L]
    attr = {"target": jnp.asarray(np.transpose(flows, (1, 0, 2))[..., None], jnp.float32)}
    return _assemble(attr, batch, step_scores, False, True, reduce_hidden)


def _baseline(adapter, batch, baseline, x):
    """Baseline pytree matching ``x``: id-based (UNK/PAD embeddings), zeros, or arrays."""
    out = {}
    for side, emb in x.items():
        ids = batch.baseline_source_ids if side == "source" else batch.baseline_target_ids
        if isinstance(baseline, BaselineSet):  # [n_baselines, B, L, H], sampled per example
            role = "encoder" if side == "source" else "decoder"
            out[side] = baseline.embeddings(
                None if ids is None else adapter.embed(ids, side=role), emb.shape)
        elif ids is not None:
            out[side] = adapter.embed(ids, side="encoder" if side == "source" else "decoder")
        elif baseline is None:
            out[side] = jnp.zeros_like(emb)
        else:
            value = jnp.asarray(baseline[side] if isinstance(baseline, dict) else baseline,
                                emb.dtype)
            try:
                out[side] = jnp.broadcast_to(value, emb.shape)
            except ValueError:
                raise ValueError(
                    f"baseline of shape {value.shape} does not broadcast to the {side} "
                    f"embeddings of shape {emb.shape} [batch, length, hidden]: give a scalar "
                    f"or a [hidden={emb.shape[-1]}] vector (the same at every position).") from None
    return out


def _traced(*args, **kwargs):
    # Looked up at trace time so tests can count traces (chex.assert_max_traces).
    return _attribute_impl(*args, **kwargs)


# Each program has a full-optimisation and a fast-compile jit (jaxattr.compile_effort picks
# by the model's size); ``_attribute_jit`` & co. name the full ones (benchmarks lower them).
_attribute_jits = EffortJit(_traced, static_argnames=(
    "method", "method_kwargs", "target_fn", "target_kwargs", "step_fns", "attribute_source",
    "attribute_target", "contrast_forward", "n_dropout", "dropout_seed", "layer",
    "reduce_hidden", "split_head", "causal_chunks"))
_attention_jits = EffortJit(_attention_impl, static_argnames=(
    "target_fn", "target_kwargs", "step_fns", "attribute_source", "attribute_target",
    "contrast_forward", "reduce_hidden", "rollout"))
_value_zeroing_jits = EffortJit(_value_zeroing_impl, static_argnames=(
    "target_fn", "target_kwargs", "step_fns", "attribute_source", "attribute_target",
    "contrast_forward", "reduce_hidden", "method_kwargs"))
_flow_mixing_jits = EffortJit(_flow_mixing_impl, static_argnames=("step_fns",
                                                                   "contrast_forward"))
_alti_jits = EffortJit(_alti_impl, static_argnames=(
    "target_fn", "target_kwargs", "step_fns", "attribute_source", "attribute_target",
    "contrast_forward", "reduce_hidden"))
_attribute_jit = _attribute_jits.full
_attention_jit = _attention_jits.full
_value_zeroing_jit = _value_zeroing_jits.full


def attribute_batch(adapter: ModelAdapter, batch: ModelBatch, baseline: Any = None, *,
                    method: Callable, method_kwargs: tuple = (), target_fn: Callable,
                    target_kwargs: tuple = (), step_fns: tuple = (), attribute_source: bool,
                    attribute_target: bool, contrast_forward: bool = False, n_dropout: int = 0,
                    dropout_seed: int = 0, layer: Optional[tuple] = None,
                    reduce_hidden: Optional[str] = None, split_head: bool = True,
                    prefix_groups: Union[str, int] = "auto",
                    method_arrays: Optional[dict] = None,
                    jit: bool = True) -> BatchAttribution:
    """Attribute one padded batch.

    Args:
      adapter: the model as pure functions (its params are traced, not static).
      batch: padded ids and masks.
      baseline: ``None`` or arrays broadcastable to the embeddings (per side ``dict``), used
        when the method takes a baseline and ``batch`` carries no baseline ids.
      method: ``method(score_fn, x, *, has_aux=True, **method_kwargs)``.
      method_kwargs, target_kwargs: hashable ``((key, value), ...)`` tuples (static).
      method_arrays: more keyword arguments of the method that are arrays (traced, not
        static), such as DIG's cached neighbour lists ``knn``.
      target_fn: ``(logits[B,T,V], TargetBatch, **kw) -> [B, T]``, the attributed function.
      step_fns: ``((name, fn, kwargs_tuple), ...)`` step scores from the same forward.
      attribute_source / attribute_target: which embeddings to attribute.
      contrast_forward: run the contrastive forward (``batch.contrast_*``) for
        ``TargetBatch.contrast_logits``.
      n_dropout: number of dropout forwards for ``TargetBatch.dropout_logits`` (MC dropout),
        keys from ``dropout_seed`` folded with each example's identity (:func:`dropout_keys`:
        batch- and padding-invariant masks); they see the attributed embeddings.
      layer: sites (from :func:`resolve_layer`: site names or raw module paths) whose
        activations are attributed instead of the token embeddings (layer methods). Several
        sites add a site axis before the hidden axis; saliency and gradient x activation get
        them all from one forward and one set of VJPs. ``method`` may also be the string
        ``"attention"`` (attention weights from the single forward) or
        ``"attention_rollout"`` (their rollout through all layers; encoder-decoder: source
        and target shares by ALTI+'s recurrence) or ``"attention_flow"`` (decoder-only: the
        jitted forward gives every layer's ``Â``, then the max-flows run on the host).
      split_head: when ``target_fn`` is step-separable (:func:`jaxattr.targets.separable`;
        all built-in targets) and no MC-dropout forwards are asked for, back-propagate
        through the language-model head once (:func:`jaxattr.methods.step_separable`)
        instead of once per step: same values, no ``[T, B, T, V]`` logits cotangent.
      prefix_groups: causal decoders only: attribute contiguous groups of steps on the
        shortest prefix they need (:mod:`jaxattr.prefix_groups`; same values, fewer FLOPs
        for long continuations). ``"auto"`` (default) splits into up to 4 groups when the
        cost model saves >= 15% and the one-pass program is big (>= 1e11 FLOPs, so that
        running, not compiling, dominates); an int ``K`` asks for ``K`` groups, 1 for none.
        Applies when the batch is concrete (not traced by an outer ``jit``), the target and
        step scores are step-separable, and no layer, MC dropout or per-position baseline
        array is used; otherwise the one-pass program runs. ``"exact"`` (native decoders,
        saliency / input x gradient / integrated gradients): exact causal truncation, one
        forward whose position blocks each step back-propagates through only up to the
        positions it sees (:mod:`jaxattr.models.causal_chunks`); a clear error where it does
        not apply.
      jit: run through the cached ``jax.jit`` (default) or eagerly.

    Returns:
      A :class:`BatchAttribution` of device arrays.
    """
    fn, args, kwargs = _call(adapter, batch, baseline, jit=jit, method=method,
                             method_kwargs=method_kwargs, target_fn=target_fn,
                             target_kwargs=target_kwargs, step_fns=step_fns,
                             attribute_source=attribute_source, attribute_target=attribute_target,
                             contrast_forward=contrast_forward, n_dropout=n_dropout,
                             dropout_seed=dropout_seed, layer=layer, reduce_hidden=reduce_hidden,
                             split_head=split_head, method_arrays=method_arrays)
    check_prefix_groups(prefix_groups)
    if (method not in ATTENTION_METHODS and batch.example_ids is None
            and needs_of(method).key):
        # Named before prefix groups cut the target: every group keys on the whole example.
        args = (adapter, batch.replace(example_ids=example_ids(batch))) + tuple(args[2:])
        batch = args[1]
    if prefix_groups == "exact":
        _check_exact(adapter, batch, baseline, method=method, target_fn=target_fn,
                     step_fns=step_fns, n_dropout=n_dropout, layer=layer)
        return fn(*args, **kwargs, causal_chunks=exact_plan(batch))
    groups = ()
    if _groupable(adapter, batch, baseline, method=method, target_fn=target_fn,
                  step_fns=step_fns, n_dropout=n_dropout, layer=layer):
        groups = prefix_plan(adapter, batch, prefix_groups)
    if len(groups) <= 1:
        return fn(*args, **kwargs)
    parts = [fn(adapter, truncate_batch(batch, a, b, p), *args[2:], **kwargs)
             for a, b, p in groups]
    return stitch_groups(parts, batch)


def exact_plan(batch: ModelBatch) -> tuple:
    """The step groups ``((a, b, P), ...)`` of exact causal truncation
    (:func:`jaxattr.models.causal_chunks.plan_causal_chunks`)."""
    from .models.causal_chunks import plan_causal_chunks
    return plan_causal_chunks(np.asarray(batch.step_positions), batch.target_ids.shape[1])


def prefix_plan(adapter: ModelAdapter, batch: ModelBatch, prefix_groups) -> tuple:
    """The prefix groups ``((a, b, P), ...)`` for a batch the pipeline may group, sized by
    the one-pass program's FLOPs (:func:`jaxattr.prefix_groups.plan_prefix_groups`)."""
    (B, L), T = batch.target_ids.shape, batch.step_mask.shape[1]
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(adapter.params))
    return plan_prefix_groups(np.asarray(batch.step_positions), L, prefix_groups,
                              flops=one_pass_flops(n_params, B, L, T))


def _groupable(adapter, batch, baseline, *, method, target_fn, step_fns, n_dropout,
               layer) -> bool:
    """Prefix groups give the one-pass result: a causal decoder, embeddings attributed, step
    scores that read their own step only, no MC dropout (its keys would differ), a baseline
    without a position axis, and step positions known on the host (not under an outer jit)."""
    return (method not in ATTENTION_METHODS and not adapter.is_encoder_decoder and layer is None
            # a fit over all positions (LIME) changes when later positions are cut off
            and not needs_of(method).position_mask
            # ReAGent keys its probes on the step index, which a group would renumber
            and "visible" not in needs_of(method).token_inputs
            and not n_dropout and not isinstance(batch.step_positions, jax.core.Tracer)
            and all(is_separable(f) for f in (target_fn, *(f for _, f, _ in step_fns)))
            and (baseline is None
                 or (isinstance(baseline, BaselineSet) and not baseline.per_position)
                 or (not isinstance(baseline, (dict, BaselineSet)) and jnp.ndim(baseline) < 2)))


def _call(adapter, batch, baseline, *, jit, method, n_dropout=0, dropout_seed=0, layer=None,
          method_kwargs=(), split_head=True, method_arrays=None, **common):
    if method == "attention_flow":  # jitted forward, then max-flows on the host
        return _attention_flow_run, (adapter, batch), dict(common, jit=jit)
    if method == "value_zeroing":
        return ((_value_zeroing_jits.pick(adapter.params) if jit else _value_zeroing_impl),
                (adapter, batch), dict(common, method_kwargs=method_kwargs))
    if method == "alti":
        return ((_alti_jits.pick(adapter.params) if jit else _alti_impl), (adapter, batch),
                common)
    if method in ATTENTION_METHODS:
        common = dict(common, rollout=method == "attention_rollout")
        return ((_attention_jits.pick(adapter.params) if jit else _attention_impl),
                (adapter, batch), common)
    return ((_attribute_jits.pick(adapter.params) if jit else _attribute_impl),
            (adapter, batch, baseline),
            dict(common, method=method, method_kwargs=method_kwargs, n_dropout=n_dropout,
                 dropout_seed=dropout_seed, layer=layer, split_head=split_head,
                 method_arrays=method_arrays))


def compiled_attribute(adapter: ModelAdapter, batch: ModelBatch, baseline: Any = None, **kw):
    """Lower and compile the pipeline for ``batch`` without running it (the
    ``jax.stages.Compiled`` object: ``memory_analysis()``, ``cost_analysis()``).

    The one-pass program: with prefix groups (``prefix_groups`` an int or ``"auto"``, ignored
    here) each group's program is smaller, so its memory is an upper bound of theirs. With
    ``prefix_groups="exact"``, the program with exact causal truncation. With
    ``method="attention_flow"``, its device program (the forward and ``Â``); the max-flows
    run on the host after it."""
    exact = kw.pop("prefix_groups", None) == "exact"
    if kw.get("method") == "attention_flow":  # its max-flows run on the host afterwards
        if adapter.is_encoder_decoder:
            raise ValueError(ATTENTION_FLOW_ENC_DEC_ERROR)
        return _flow_mixing_jits.full.lower(
            adapter, batch, step_fns=kw.get("step_fns", ()),
            contrast_forward=kw.get("contrast_forward", False)).compile()
    fn, args, kwargs = _call(adapter, batch, baseline, jit=True, **kw)
    if exact:
        _check_exact(adapter, batch, baseline, method=kw["method"], target_fn=kw["target_fn"],
                     step_fns=kw.get("step_fns", ()), n_dropout=kw.get("n_dropout", 0),
                     layer=kw.get("layer"))
        kwargs["causal_chunks"] = exact_plan(batch)
    return fn.lower(*args, **kwargs).compile()
