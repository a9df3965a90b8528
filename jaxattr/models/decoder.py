"""The forward pass of the native llama-like decoder, as pure functions of a parameter pytree.

Parameters (``[L_layers, ...]`` stacked, weights stored ``[in, out]`` so ``x @ w``)::

    {"embed": [V, H], "final_norm": [H], "head": [H, V] (untied only),
     "layers": {"q": [n, H, heads*hd], "k"/"v": [n, H, kv*hd], "o": [n, heads*hd, H],
                "gate"/"up": [n, H, F], "down": [n, F, H],
                optional "q_bias", "k_bias", "v_bias", "o_bias", "gate_bias", "up_bias",
                "down_bias", "q_norm", "k_norm", and the block norms "attn_in", "attn_out",
                "mlp_in", "mlp_out" ([n, H])}}

``"layers"`` may instead be a tuple of per-layer dicts of the same keys without the leading
axis (:meth:`jaxattr.models.NativeDecoder.with_layer_loop` ``("unroll")``): the layers then
run as a Python loop over separate arrays instead of a ``lax.scan`` over stacked ones.

Mixture-of-experts layers (``spec.n_experts > 0``, :mod:`jaxattr.models.moe`) replace the
dense MLP weights by ``"router": [n, H, E]``, ``"gate"/"up": [n, E, H, F]``,
``"down": [n, E, F, H]``; the MoE output is the block's ``mlp_out`` site and the router's
softmax its ``router_probs`` site ``[B, L, E]``.

The layers run under ``lax.scan`` (compile time does not grow with depth); a layer whose
sites are patched with Python functions runs on its own between scanned segments. With
per-layer weights (a tuple) every layer runs on its own: compile time grows with depth, but on
XLA CPU no layer's weights are copied out of a stack first (a dynamic slice is a copy there:
5-9% of a GPT-2-sized attribution, README "Native decoder: compile time and speed"). Sites
(:mod:`jaxattr.internals.sites`) are applied by a ``hook(kind, value)`` callback: original
value -> patch -> + delta -> captured, as the protocol states.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from ..methods import deeplift_rules as rules
from .moe import moe_mlp
from .rope import apply_rope, rope_tables
from .spec import DecoderSpec

__all__ = ["rms_norm", "lookup", "head_logits", "hidden_states", "stack_layers", "split_layers",
           "NO_WINDOW", "Past"]

NO_WINDOW = 2 ** 30
# Every nonlinearity goes through jaxattr.methods.deeplift_rules: the plain operation, and
# DeepLIFT's rules when the forward runs paired with a reference (method="deeplift").
_ACT = {"silu": rules.silu, "gelu_tanh": rules.gelu_tanh, "gelu": rules.gelu,
        "relu": rules.relu}


def _einsum(spec: str):
    return lambda a, b: jnp.einsum(spec, a, b)


def rms_norm(x: jax.Array, w: jax.Array, spec: DecoderSpec) -> jax.Array:
    """RMSNorm over the last axis in float32, in the family's variant (``spec.norm_style``)."""
    xf = x.astype(jnp.float32)
    ms = jnp.mean(rules.product(jnp.multiply, xf, xf), axis=-1, keepdims=True)
    n = rules.product(jnp.multiply, xf,
                      rules.rescale(lambda t: jax.lax.rsqrt(t + spec.norm_eps), ms),
                      order="b_first")
    if spec.norm_style == "gemma":
        return (n * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    if spec.norm_style == "olmo2":
        return (w.astype(jnp.float32) * n).astype(x.dtype)
    return w * n.astype(x.dtype)


def lookup(spec: DecoderSpec, params: dict, ids: jax.Array) -> jax.Array:
    """What PyTorch's ``get_input_embeddings()(ids)`` returns ``[B, L, H]`` (Gemma 3: times
    ``sqrt(H)`` in the parameter dtype)."""
    table = params["embed"]
    out = jnp.take(table, ids.astype(jnp.int32), axis=0)
    if spec.embed_scale_in_lookup:
        out = out * jnp.asarray(spec.embed_scale, table.dtype)
    return out


def head_logits(spec: DecoderSpec, head_params: dict, hidden: jax.Array) -> jax.Array:
    """Logits ``[..., V]`` of the final-norm output: the head matmul (the embedding matrix when
    tied) and the final soft-cap."""
    w = head_params["head"]
    logits = hidden @ w.T if spec.tied else hidden @ w
    if spec.final_softcap:
        c = spec.final_softcap
        logits = rules.tanh(logits / c) * c
    return logits


def _linear(x, p, name):
    y = x @ p[name]
    return y + p[name + "_bias"] if name + "_bias" in p else y


class Past(NamedTuple):
    """What a position block's attention reads of the earlier positions (exact causal
    truncation, :mod:`jaxattr.models.causal_chunks`), for one layer.

    ``k, v [B, s, kv, hd]``: their keys (rotated) and values, constants of the block.
    ``d_scores [B, kv, heads // kv, n, s]``: added to the block's raw query-key products with
    them, and ``d_heads [B, n, heads, hd]``: added to the heads' outputs; zeros whose
    cotangents (the products' and the heads') give, with the returned queries and
    probabilities, the cotangents of ``k`` and ``v`` — without forming them per step here."""
    k: jax.Array
    v: jax.Array
    d_scores: jax.Array
    d_heads: jax.Array


def _attention(spec: DecoderSpec, p: dict, h, cos, sin, allowed, hook,
               past: Optional[Past] = None):
    """Self-attention of ``h [B, n, H]``. With ``past`` the queries also see the earlier
    positions (``allowed [B, n, s + n]``) and ``(out, (k, v, q, probs))`` is returned: the
    block's keys and values ``[B, n, kv, hd]`` (rotated), its queries ``[B, n, kv, heads // kv,
    hd]`` (rotated) and its probabilities on the earlier positions ``[B, kv, heads // kv, n,
    s]``."""
    b, n, _ = h.shape
    nh, kv, hd = spec.n_heads, spec.n_kv_heads, spec.head_dim
    q, k, v = _linear(h, p, "q"), _linear(h, p, "k"), hook("value", _linear(h, p, "v"))
    if spec.qk_norm == "full":
        q, k = rms_norm(q, p["q_norm"], spec), rms_norm(k, p["k_norm"], spec)
    q, k, v = q.reshape(b, n, nh, hd), k.reshape(b, n, kv, hd), v.reshape(b, n, kv, hd)
    if spec.qk_norm == "head":
        q, k = rms_norm(q, p["q_norm"], spec), rms_norm(k, p["k_norm"], spec)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = q.reshape(b, n, kv, nh // kv, hd)     # head h reads kv head h // (nh / kv)
    qk, pv = _einsum("bqkgd,bskd->bkgqs"), _einsum("bkgqs,bskd->bqkgd")
    scores = rules.product(qk, q, k)
    if past is not None:      # the earlier columns apart: no cotangent of their keys here
        scores = jnp.concatenate([rules.product(qk, q, past.k) + past.d_scores, scores], -1)
    scores = scores * jnp.asarray(spec.attn_scale, q.dtype)
    if spec.attn_softcap:
        c = spec.attn_softcap
        scores = rules.tanh(scores / c) * c
    scores = jnp.where(allowed[:, None, None], scores.astype(jnp.float32),
                       jnp.finfo(jnp.float32).min)
    probs = rules.softmax(scores, axis=-1).astype(v.dtype)
    hook("attn_pattern", probs.reshape(b, nh, n, probs.shape[-1]))
    if past is None:
        heads = rules.product(pv, probs, v)
    else:
        s = past.k.shape[1]
        heads = (rules.product(pv, probs[..., :s], past.v)
                 + rules.product(pv, probs[..., s:], v))
    heads = heads.reshape(b, n, nh, hd)
    if past is not None:
        heads = heads + past.d_heads
    heads = hook("head_out", heads)
    out = _linear(heads.reshape(b, n, nh * hd), p, "o")
    return out if past is None else (out, (k, v, q, probs[..., :past.k.shape[1]]))


def _mlp(spec: DecoderSpec, p: dict, h, hook):
    if spec.n_experts:
        return moe_mlp(spec, p, h, act=_ACT[spec.act], hook=hook)
    gate, up = _linear(h, p, "gate"), _linear(h, p, "up")
    return _linear(rules.product(jnp.multiply, _ACT[spec.act](gate), up), p, "down")


def _block(spec: DecoderSpec, p: dict, x, cos, sin, allowed, hook,
           past: Optional[Past] = None):
    """One layer on ``x [B, n, H]``; with ``past`` also what :func:`_attention` returns
    besides its output."""
    x = hook("resid_pre", x)
    h = rms_norm(x, p["attn_in"], spec) if "attn_in" in spec.norms else x
    a = _attention(spec, p, h, cos, sin, allowed, hook, past)
    if past is not None:
        a, extra = a
    if "attn_out" in spec.norms:
        a = rms_norm(a, p["attn_out"], spec)
    x = x + hook("attn_out", a)
    h = rms_norm(x, p["mlp_in"], spec) if "mlp_in" in spec.norms else x
    m = _mlp(spec, p, h, hook)
    if "mlp_out" in spec.norms:
        m = rms_norm(m, p["mlp_out"], spec)
    x = x + hook("mlp_out", m)
    x = hook("resid_post", x)
    return x if past is None else (x, extra)


def stack_layers(layers) -> dict:
    """``params["layers"]`` as weights stacked ``[n_layers, ...]`` (a copy when they are a
    tuple of per-layer dicts; returned as they are when already stacked)."""
    if isinstance(layers, (tuple, list)):
        return {k: jnp.stack([layer[k] for layer in layers]) for k in layers[0]}
    return layers


def split_layers(layers, n_layers: int) -> tuple:
    """``params["layers"]`` as a tuple of ``n_layers`` per-layer dicts (slices of the stacked
    weights; returned as they are when already split)."""
    if isinstance(layers, (tuple, list)):
        return tuple(layers)
    return tuple({k: v[i] for k, v in layers.items()} for i in range(n_layers))


def _tables(spec: DecoderSpec, mask):
    """``cos, sin`` ``[3, B, L, rot]``: index 0 no rotation (NoPE), 1 global, 2 local."""
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    seq_len = jnp.sum(mask, axis=-1)
    cos_g, sin_g = rope_tables(spec.rope, positions, seq_len)
    cos_l, sin_l = (rope_tables(spec.rope_local, positions, seq_len)
                    if spec.rope_local is not None else (cos_g, sin_g))
    return (jnp.stack([jnp.ones_like(cos_g), cos_g, cos_l]),
            jnp.stack([jnp.zeros_like(sin_g), sin_g, sin_l]))


def hidden_states(spec: DecoderSpec, params: dict, embeds: jax.Array, mask: jax.Array, *,
                  top_hook: Callable, layer_hook: Callable, patched_layers=frozenset(),
                  scan_deltas: Optional[dict] = None, scan_capture=frozenset()):
    """The final-norm output ``[B, L, H]`` for the attributed embeddings ``embeds [B, L, H]``
    and the padding mask ``mask [B, L]`` (real tokens 1; positions count real tokens, so
    left and right padding both work).

    Args:
      top_hook: ``(name, value) -> value`` for ``embed`` and ``final_norm``.
      layer_hook: ``(layer, kind, value) -> value`` for a layer run on its own (Python int).
      patched_layers: layers that run on their own (their sites have Python patches); with
        per-layer weights (``params["layers"]`` a tuple) every layer does, and
        ``scan_deltas`` / ``scan_capture`` must be empty (the hooks apply them).
      scan_deltas: ``{kind: [n_layers, ...]}`` added at that kind in scanned layers.
      scan_capture: kinds whose values the scanned layers return.

    Returns:
      ``(hidden [B, L, H], {kind: {layer: value}})`` with the scanned layers' captures.
    """
    mask = mask.astype(jnp.int32)
    x = top_hook("embed", embeds)
    if spec.embed_scale != 1.0 and not spec.embed_scale_in_lookup:
        x = x * jnp.asarray(spec.embed_scale, x.dtype)
    b, n = mask.shape
    # materialised once: fused into their consumers, cos / sin would be evaluated again per
    # element of every rotated query and key and of their cotangents
    cos, sin = jax.lax.optimization_barrier(_tables(spec, mask))
    idx = jnp.arange(n)
    causal = idx[None, :] <= idx[:, None]                                     # [q, k]
    base = causal[None] & (mask[:, None, :] > 0)                               # [B, q, k]
    dist = idx[:, None] - idx[None, :]
    windows = jnp.asarray([NO_WINDOW if w is None else w for w in spec.layer_window], jnp.int32)
    ropes = jnp.asarray(spec.layer_rope, jnp.int32)
    layers = params["layers"]
    captured: dict = {}
    scan_deltas = scan_deltas or {}
    if isinstance(layers, (tuple, list)):          # per-layer weights: no scan
        if len(layers) != spec.n_layers:
            raise ValueError(f"params['layers'] holds {len(layers)} layers; the spec has "
                             f"{spec.n_layers}.")
        if scan_deltas or scan_capture:
            raise ValueError("with per-layer weights every layer runs on its own: pass "
                             "patched_layers=range(n_layers) and apply deltas and captures "
                             "in layer_hook, not scan_deltas / scan_capture.")
        patched_layers = frozenset(range(spec.n_layers))

    def run_one(layer, x):
        p = (layers[layer] if isinstance(layers, (tuple, list))
             else jax.tree_util.tree_map(lambda a: a[layer], layers))
        allowed = base & (dist < windows[layer])[None]
        r = spec.layer_rope[layer]
        return _block(spec, p, x, cos[r], sin[r], allowed,
                      lambda kind, v: layer_hook(layer, kind, v))

    def run_scan(start, stop, x):
        xs = (jax.tree_util.tree_map(lambda a: a[start:stop], layers), windows[start:stop],
              ropes[start:stop], {k: d[start:stop] for k, d in scan_deltas.items()})

        def body(x, sl):
            p, w, r, deltas = sl
            out = {}

            def hook(kind, v):
                if kind in deltas:
                    v = v + deltas[kind].astype(v.dtype)
                if kind in scan_capture:
                    out[kind] = v
                return v

            allowed = base & (dist < w)[None]
            x = _block(spec, p, x, cos[r], sin[r], allowed, hook)
            return x, out

        x, ys = jax.lax.scan(body, x, xs)
        for kind, stacked in ys.items():
            for i in range(stop - start):
                captured.setdefault(kind, {})[start + i] = stacked[i]
        return x

    start = 0
    for layer in range(spec.n_layers + 1):
        if layer == spec.n_layers or layer in patched_layers:
            if layer > start:
                x = run_scan(start, layer, x)
            if layer < spec.n_layers:
                x = run_one(layer, x)
            start = layer + 1
    h = rms_norm(x, params["final_norm"], spec)
    return top_hook("final_norm", h), captured
