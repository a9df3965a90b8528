"""Exact causal truncation: every step back-propagates only through the positions it sees,
from one forward of the native decoder.

The one-pass pipeline takes one forward over all ``L`` positions and then, per attributed
step, a backward pass over all ``L`` positions, although in a causal decoder step ``t`` (the
token at position ``p_t``, predicted from position ``p_t - 1``) depends on positions
``< p_t`` only. Prefix groups (:mod:`jaxattr.prefix_groups`) cut that backward with one more
forward per group. Here the forward itself runs in position blocks ``[e_{j-1}, e_j)``, each
block's layers reading the keys and values of the earlier blocks (a KV cache), and each
block's VJP is kept. The steps of a group that needs the prefix ``[0, P)`` (``P`` a block
end) back-propagate through the blocks below ``P`` only: through each block's own rows, with
the earlier positions reached through the cotangents of the keys and values that block read.
No position at or after ``P`` enters their backward; no forward is repeated. Each block's
VJP runs once, vmapped over the steps that read it (a suffix of the steps, since ``P`` does not
decrease): 8 large backward calls instead of one chain of small ones per group (which made the
program slower than the one-pass one despite its fewer FLOPs).

The earlier keys and values are constants of a block's VJP: what a block's backward hands to
the earlier positions is, per step and layer, the cotangent of its raw query-key products with
them ``[kv, g, n, s]`` and of its heads' outputs ``[n, heads, hd]`` (zero deltas in
:class:`~jaxattr.models.decoder.Past`), not per-step key / value cotangents ``[s, kv, hd]``
for every earlier position. An earlier block forms its own keys' and values' cotangents from
them once, contracting over the later queries with their forward queries and probabilities
(``Σ_q ct_scores[q, p] q[q]``, ``Σ_q probs[q, p] ct_heads[q]``, one contraction per run of
steps with the same last block). So the per-step key / value cotangents are formed for each
block's own positions only, never accumulated position by position, and stay in the
layer-major layout the layer scan's VJP takes (no transposition): XLA's count of bytes
accessed at 16 + 16 tokens, IG with 16 nodes, went from 27.6 GB to 16.7 GB.

Matmul cost of the forward and one backward per step, in token passes (the backward takes
input cotangents only, about one forward): ``L + Σ_t P_t`` instead of ``L · (1 + T)``
(16 + 16 tokens, blocks of 2 steps: 416 instead of 544, 23.5% fewer, as the compiled
programs' matmuls counted with their loops' trip counts; ``benchmarks/causal_chunks.py``
measures the whole program).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .decoder import NO_WINDOW, Past, _block, _tables, rms_norm, stack_layers
from .spec import DecoderSpec

__all__ = ["plan_causal_chunks", "causal_step_grads", "MAX_CHUNKS"]

MAX_CHUNKS = 8   # step groups (each adds its chain of block backward passes to the program)


def plan_causal_chunks(step_positions, length: int, *, max_chunks: int = MAX_CHUNKS) -> tuple:
    """Contiguous step groups ``((a, b, P), ...)``: steps ``[a, b)`` read positions ``< P``.

    Args:
      step_positions: ``[B, T]`` host array, position of each step's attributed token (padded
        steps may hold any position ``< length``; they count, which keeps ``P`` safe).
      length: ``L``, the padded target length.
      max_chunks: at most this many groups (equal numbers of steps).

    Returns:
      The groups, ``P`` non-decreasing in ``[1, L]``.
    """
    pos = np.asarray(step_positions)
    if pos.ndim != 2 or pos.shape[1] == 0:
        raise ValueError(f"step_positions must be [batch, steps] with steps >= 1; got "
                         f"{pos.shape}.")
    n = pos.shape[1]
    k = min(int(max_chunks), n)
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    out, prev = [], 1
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            need = min(length, max(prev, int(pos[:, a:b].max())))
            out.append((int(a), int(b), need))
            prev = need
    return tuple(out)


def _chunk(spec: DecoderSpec, layers, x, past: Past, cos, sin, allowed, windows, ropes, dist):
    """Layers over one position block. ``x [B, n, H]``; ``past``: :class:`Past` stacked over
    layers (``k, v [nL, B, s, kv, hd]``, ``d_scores [nL, B, kv, g, n, s]``, ``d_heads [nL, B,
    n, heads, hd]``); ``allowed [B, n, s + n]``; ``dist [n, s + n]``.

    Returns ``(h, (k, v, q, probs))``: the final-norm input ``[B, n, H]``, the block's keys /
    values ``[nL, B, n, kv, hd]``, queries ``[nL, B, n, kv, g, hd]`` and probabilities on the
    earlier positions ``[nL, B, kv, g, n, s]`` (``g = heads // kv``)."""
    def body(x, sl):
        p, w, r, past_l = sl
        keep = allowed & (dist < w)[None]
        return _block(spec, p, x, cos[r], sin[r], keep, lambda kind, v: v, past=past_l)

    return jax.lax.scan(body, x, (layers, windows, ropes, past))


def _step_runs(tops, j):
    """``[(m, a, b), ...]``: the steps ``[a, b)`` whose last block is ``m``, for ``m >= j``
    (``tops [T]`` non-decreasing, the last block each step reads)."""
    return [(m, int(np.searchsorted(tops, m)), int(np.searchsorted(tops, m, side="right")))
            for m in range(j, int(tops[-1]) + 1)]


def _own_cotangents(later, tops, j, s, e, shape, dtype):
    """The cotangents of block ``j``'s own keys and values (positions ``[s, e)``), each
    ``shape = [nL, T - first, B, e - s, kv, hd]`` for the steps ``[first, T)`` that read it,
    from the later blocks' backward passes.

    ``later[m] = (first_m, ct_scores [nL, T - first_m, B, kv, g, n_m, s_m], ct_heads [nL,
    T - first_m, B, n_m, heads, hd], q [nL, B, n_m, kv, g, hd], probs [nL, B, kv, g, n_m,
    s_m])``: block ``m``'s cotangents of its raw products with the earlier keys and of its
    heads' outputs per step, and its forward queries and probabilities. The key cotangent at
    position ``p`` is ``Σ_q ct_scores[q, p] · q[q]``, the value's ``Σ_q probs[q, p] ·
    ct_heads[q]``, over the later blocks' queries ``q``. A step whose last block is ``m``
    gets blocks ``j + 1 .. m``: one contraction per such run of steps, over exactly the
    queries those steps back-propagate through."""
    nl, _, b, n, kv, hd = shape
    out_k, out_v = [], []
    for m, a, bnd in _step_runs(tops, j):
        if bnd == a:
            continue
        if m == j:           # these steps read no later block
            zeros = jnp.zeros((nl, bnd - a, b, n, kv, hd), dtype)
            out_k.append(zeros)
            out_v.append(zeros)
            continue
        cts, cth, qs, ps = [], [], [], []
        for i in range(j + 1, m + 1):
            first_i, ct_s, ct_h, q_i, p_i = later[i]
            steps = slice(a - first_i, bnd - first_i)
            cts.append(ct_s[:, steps, ..., s:e])
            cth.append(ct_h[:, steps].reshape(ct_h.shape[0], bnd - a, b, -1, kv,
                                              q_i.shape[4], hd))
            qs.append(q_i)
            ps.append(p_i[..., s:e])
        out_k.append(jnp.einsum("ltbkgqp,lbqkgd->ltbpkd", jnp.concatenate(cts, axis=5),
                                jnp.concatenate(qs, axis=2)))
        out_v.append(jnp.einsum("lbkgqp,ltbqkgd->ltbpkd", jnp.concatenate(ps, axis=4),
                                jnp.concatenate(cth, axis=3)))
    return jnp.concatenate(out_k, axis=1), jnp.concatenate(out_v, axis=1)


def causal_step_grads(spec: DecoderSpec, params: dict, embeds: jax.Array, mask: jax.Array,
                      query: jax.Array, score_of: Callable, groups: Sequence[tuple]):
    """Scores and their per-step input gradients with exact causal truncation.

    Args:
      spec, params: the native decoder.
      embeds: ``[B, L, H]`` attributed embeddings (what ``lookup`` returns).
      mask: ``[B, L]`` padding mask.
      query: ``[B, T]`` the position whose output predicts each step (``step_positions - 1``).
      score_of: ``hidden [B, T, H] -> scores [B, T]``, step ``t`` reading ``hidden[:, t]``
        only (the head and a step-separable target).
      groups: static ``((a, b, P), ...)`` from :func:`plan_causal_chunks` (``query < P``).

    Returns:
      ``(scores [B, T], hidden [B, T, H], grads [T, B, L, H])`` with ``grads[t] =
      ∂ Σ_b scores[b, t] / ∂ embeds`` — what a VJP of the one-pass forward with a one-hot
      cotangent per step gives.
    """
    b, length, _ = embeds.shape
    mask = mask.astype(jnp.int32)
    x = embeds
    if spec.embed_scale != 1.0 and not spec.embed_scale_in_lookup:
        x = x * jnp.asarray(spec.embed_scale, x.dtype)
    cos, sin = _tables(spec, mask)                                  # [3, B, L, rot]
    idx = jnp.arange(length)
    base = (idx[None, :] <= idx[:, None])[None] & (mask[:, None, :] > 0)   # [B, q, k]
    dist = idx[:, None] - idx[None, :]
    windows = jnp.asarray([NO_WINDOW if w is None else w for w in spec.layer_window], jnp.int32)
    ropes = jnp.asarray(spec.layer_rope, jnp.int32)
    layers = stack_layers(params["layers"])   # per-layer weights: the blocks scan a stack
    edges = [0] + sorted({p for _, _, p in groups})
    kv, hd, nh = spec.n_kv_heads, spec.head_dim, spec.n_heads
    past_k = past_v = jnp.zeros((spec.n_layers, b, 0, kv, hd), x.dtype)
    hs, vjps, fwd = [], [], []
    for s, e in zip(edges[:-1], edges[1:]):
        def block(xj, d_scores, d_heads, s=s, e=e, pk=past_k, pv=past_v):
            h, (k, v, q, probs) = _chunk(
                spec, layers, xj, Past(pk, pv, d_scores, d_heads), cos[:, :, s:e],
                sin[:, :, s:e], base[:, s:e, :e], windows, ropes, dist[s:e, :e])
            return (rms_norm(h, params["final_norm"], spec), (k, v)), (q, probs)

        d_scores = jnp.zeros((spec.n_layers, b, kv, nh // kv, e - s, s), x.dtype)
        d_heads = jnp.zeros((spec.n_layers, b, e - s, nh, hd), x.dtype)
        (h, (k, v)), vjp, aux = jax.vjp(block, x[:, s:e], d_scores, d_heads, has_aux=True)
        past_k = jnp.concatenate([past_k, k], axis=2)
        past_v = jnp.concatenate([past_v, v], axis=2)
        hs.append(h)
        vjps.append(vjp)
        fwd.append(aux)
    h = jnp.concatenate(hs, axis=1)                                 # [B, P_max, H]
    q = query.astype(jnp.int32)
    hidden = jnp.take_along_axis(h, q[..., None], axis=1)           # [B, T, H]
    scores, score_vjp = jax.vjp(score_of, hidden)
    (g,) = score_vjp(jnp.ones_like(scores))                         # [B, T, H]: row t of step t
    scale = (jnp.asarray(spec.embed_scale, x.dtype)
             if spec.embed_scale != 1.0 and not spec.embed_scale_in_lookup else None)

    # Block ``j`` is needed by the steps whose group reads past it: a suffix of the steps,
    # since ``P`` does not decrease. Each block's VJP runs once, vmapped over that suffix.
    tops = np.zeros(query.shape[1], dtype=int)
    for a, bnd, p in groups:
        tops[a:bnd] = edges.index(p) - 1
    n_steps = query.shape[1]
    later, pieces = {}, []
    for j in range(len(edges) - 2, -1, -1):
        s, e = edges[j], edges[j + 1]
        first = int(np.searchsorted(tops, j))          # steps [first, T) read block j
        if first == n_steps:
            pieces.append(jnp.zeros((n_steps, b, e - s, x.shape[-1]), x.dtype))
            continue
        act = jnp.arange(first, n_steps)
        rows = jax.nn.one_hot(q[:, act].T - s, e - s, dtype=g.dtype)    # [n, B, e - s]
        ct_h = rows[..., None] * jnp.swapaxes(g[:, act], 0, 1)[:, :, None, :]
        ct_k, ct_v = _own_cotangents(later, tops, j, s, e,
                                     (spec.n_layers, n_steps - first, b, e - s, kv, hd),
                                     x.dtype)
        # layer-major cotangents in and out: the layout of the layer scan's VJP
        ct_x, ct_scores, ct_heads = jax.vmap(vjps[j], in_axes=((0, (1, 1)),),
                                             out_axes=(0, 1, 1))((ct_h, (ct_k, ct_v)))
        later[j] = (first, ct_scores, ct_heads) + fwd[j]
        pieces.append(jnp.pad(ct_x, ((first, 0), (0, 0), (0, 0), (0, 0))))
    out = jnp.concatenate(pieces[::-1], axis=2)                     # [T, B, P_max, H]
    if scale is not None:
        out = out * scale
    grads = [jnp.pad(out, ((0, 0), (0, 0), (0, length - edges[-1]), (0, 0)))]
    return scores, hidden, jnp.concatenate(grads, axis=0)
