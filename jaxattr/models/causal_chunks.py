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
decrease), with the key / value cotangents of every step accumulated per position: 8 large
backward calls instead of one chain of small ones per group (which made the program slower
than the one-pass one despite its fewer FLOPs).

Cost per forward + one backward per step, in token passes (a backward ~ 2 forwards):
``L + 2 · Σ_t P_t`` instead of ``L · (1 + 2 T)`` (16 + 16 tokens, blocks of 2 steps: 24% fewer
matmul FLOPs; ``benchmarks/causal_chunks.py`` measures the whole program).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .decoder import NO_WINDOW, _block, _tables, rms_norm
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


def _chunk(spec: DecoderSpec, layers, x, past_k, past_v, cos, sin, allowed, windows, ropes,
           dist):
    """Layers over one position block. ``x [B, n, H]``; ``past_k/v [nL, B, s, kv, hd]``;
    ``allowed [B, n, s + n]``; ``dist [n, s + n]``. Returns ``(h, (k, v))``: the final-norm
    input ``[B, n, H]`` and the block's keys / values ``[nL, B, n, kv, hd]``."""
    def body(x, sl):
        p, w, r, pk, pv = sl
        keep = allowed & (dist < w)[None]
        x, kv = _block(spec, p, x, cos[r], sin[r], keep, lambda kind, v: v, past=(pk, pv))
        return x, kv

    return jax.lax.scan(body, x, (layers, windows, ropes, past_k, past_v))


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
    layers = params["layers"]
    edges = [0] + sorted({p for _, _, p in groups})
    kv, hd = spec.n_kv_heads, spec.head_dim
    past_k = past_v = jnp.zeros((spec.n_layers, b, 0, kv, hd), x.dtype)
    hs, vjps = [], []
    for s, e in zip(edges[:-1], edges[1:]):
        def block(xj, pk, pv, s=s, e=e):
            h, (k, v) = _chunk(spec, layers, xj, pk, pv, cos[:, :, s:e], sin[:, :, s:e],
                               base[:, s:e, :e], windows, ropes, dist[s:e, :e])
            return rms_norm(h, params["final_norm"], spec), (k, v)

        (h, (k, v)), vjp = jax.vjp(block, x[:, s:e], past_k, past_v)
        past_k = jnp.concatenate([past_k, k], axis=2)
        past_v = jnp.concatenate([past_v, v], axis=2)
        hs.append(h)
        vjps.append(vjp)
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
    acc_k = jnp.zeros((n_steps, spec.n_layers, b, edges[-1], kv, hd), x.dtype)
    acc_v = jnp.zeros_like(acc_k)
    pieces = []
    for j in range(len(edges) - 2, -1, -1):
        s, e = edges[j], edges[j + 1]
        first = int(np.searchsorted(tops, j))          # steps [first, T) read block j
        if first == n_steps:
            pieces.append(jnp.zeros((n_steps, b, e - s, x.shape[-1]), x.dtype))
            continue
        act = jnp.arange(first, n_steps)
        rows = jax.nn.one_hot(q[:, act].T - s, e - s, dtype=g.dtype)    # [n, B, e - s]
        ct_h = rows[..., None] * jnp.swapaxes(g[:, act], 0, 1)[:, :, None, :]
        ct_x, ct_pk, ct_pv = jax.vmap(vjps[j])(
            (ct_h, (acc_k[first:, :, :, s:e], acc_v[first:, :, :, s:e])))
        acc_k = acc_k.at[first:, :, :, :s].add(ct_pk)
        acc_v = acc_v.at[first:, :, :, :s].add(ct_pv)
        pieces.append(jnp.pad(ct_x, ((first, 0), (0, 0), (0, 0), (0, 0))))
    out = jnp.concatenate(pieces[::-1], axis=2)                     # [T, B, P_max, H]
    if scale is not None:
        out = out * scale
    grads = [jnp.pad(out, ((0, 0), (0, 0), (0, length - edges[-1]), (0, 0)))]
    return scores, hidden, jnp.concatenate(grads, axis=0)
