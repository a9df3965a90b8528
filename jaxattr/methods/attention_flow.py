"""Attention flow (Abnar & Zuidema, 2020): maximum flow through the layered attention graph.

The graph has one node per token per layer, ``(l, p)`` for ``l = 0 … n`` (the inputs and the
output of each of the ``n`` blocks) and ``p = 0 … L−1``; the edge ``(l, j) → (l+1, i)`` has
capacity ``Â_l[i, j]``, the head-averaged, residual-augmented attention of block ``l``
(``Â = (1 − residual)·A + residual·I``, rows renormalised; the same ``Â`` as
:func:`~jaxattr.methods.attention_rollout`). The flow of input token ``j`` into the state at
position ``i`` is the maximum flow from ``(0, j)`` to ``(n, i)``. Where rollout sums the
products along all paths, flow is bounded by the narrowest cut between the two nodes (with one
layer the two agree: the single edge's capacity ``Â[i, j]``).

Max-flow is combinatorial (augmenting paths), not an array program, so it runs on the host
with :func:`scipy.sparse.csgraph.maximum_flow` (Dinic's algorithm), one call per
(query, input token) pair with a path between them. SciPy needs integer ``int32``
capacities: each capacity is scaled by ``scale``, rounded, and the flow divided back. Rounding
moves each capacity by at most ``1/(2·scale)``, so every cut's capacity by at most
``|cut|/(2·scale)`` and the maximum flow (= minimum cut) by at most
``E/(2·scale)``, ``E`` the number of edges with positive capacity (≤ ``n·L²``; causal
``n·L(L+1)/2``). That is the worst case (5e-5 for 3 dense layers of 6 tokens); only the
edges of the minimum cut count and their errors partly cancel (measured there against an exact
float64 Edmonds–Karp: ≤ 2.8e-6 over 20 random graphs, float32 ``Â`` included).

Pure maths over attention patterns (numpy out); the model pipeline
(:func:`jaxattr.pipeline.attribute_batch` with ``method="attention_flow"``) computes the
patterns and ``Â`` in one jitted forward, then the flows of the rows that predict each step
on the host.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .attention_rollout import _mixing, checked_patterns

__all__ = ["attention_flow", "flow_from_mixing", "mixing_matrices", "default_scale"]

_INT32_ROOM = 2 ** 30  # capacities and the flows through any node must stay below 2**31


def default_scale(length: int) -> int:
    """The capacity scale for ``L`` tokens: ``2**20``, or for long sequences the largest
    power of two with ``scale·L ≤ 2**30`` (a node's total capacity is at most ``L``: int32
    room for SciPy's flows)."""
    scale = 2 ** 20
    while scale * max(int(length), 1) > _INT32_ROOM and scale > 1:
        scale //= 2
    return scale


def mixing_matrices(patterns: Sequence[jax.Array] | jax.Array, *,
                    residual: float = 0.5) -> jax.Array:
    """``Â`` of every layer: ``[n, ..., L, L]`` from ``n`` patterns ``[..., heads, L, L]`` (head
    mean, plus ``residual·I``, rows renormalised; an all-zero row stays zero)."""
    layers = checked_patterns(patterns, residual=residual, method="attention_flow")
    dtype = jnp.promote_types(jnp.asarray(layers[0]).dtype, jnp.float32)
    return jnp.stack([_mixing(a, residual, dtype) for a in layers])


def _layered_graph(caps: np.ndarray):
    """The layered graph as a CSR array over ``(n+1)·L`` nodes from integer capacities
    ``caps[n, L, L]`` (``caps[l, i, j]``: edge ``(l, j) → (l+1, i)``)."""
    import scipy.sparse as sp
    n, L, _ = caps.shape
    layer, i, j = np.nonzero(caps)
    rows = layer * L + j
    cols = (layer + 1) * L + i
    return sp.csr_array((caps[layer, i, j].astype(np.int32), (rows, cols)),
                        shape=((n + 1) * L, (n + 1) * L))


def _reach(mix: np.ndarray, i: int) -> np.ndarray:
    """``[L]`` bool: input tokens with a path of positive capacities to ``(n, i)``."""
    v = np.zeros(mix.shape[-1], bool)
    v[i] = True
    for a in mix[::-1]:  # last block first: v ← (Â_l > 0)ᵀ v
        v = (a[v] > 0).any(0)
    return v


def flow_from_mixing(mix, *, query_positions=None, key_mask=None,
                     scale: Optional[int] = None) -> np.ndarray:
    """Attention flow from the per-layer ``Â`` (see :func:`mixing_matrices`); host-side.

    Args:
      mix: ``[..., n, L, L]`` (per example: layers, query, key), numpy or JAX.
      query_positions: ``None`` (every position, ``Lq = L``) or ints ``[..., Lq]`` (or
        ``[Lq]`` for every example): the top-layer positions whose flows are wanted; a
        negative position gives a zero row (padding steps).
      key_mask: optional bool ``[..., L]``: input tokens to compute (others get 0).
      scale: integer capacity scale (default :func:`default_scale`); the result is within
        ``E/(2·scale)`` of the exact maximum flow (module docstring).

    Returns:
      ``[..., Lq, L]`` float64: row = query position at the top layer, column = input token.
    """
    from scipy.sparse.csgraph import maximum_flow
    mix = np.asarray(mix, np.float64)
    if mix.ndim < 3 or mix.shape[-1] != mix.shape[-2]:
        raise ValueError(f"mix must be [..., layers, L, L]; got shape {mix.shape}.")
    batch, (n, L, _) = mix.shape[:-3], mix.shape[-3:]
    scale = default_scale(L) if scale is None else int(scale)
    if not 1 <= scale or scale * L > 2 ** 31 - 1:
        raise ValueError(f"scale must be a positive integer with scale·L < 2**31 (SciPy's "
                         f"int32 capacities; L={L}): got {scale}; use default_scale(L).")
    if query_positions is None:
        q = np.broadcast_to(np.arange(L), batch + (L,))
    else:
        q = np.asarray(query_positions)
        if not np.issubdtype(q.dtype, np.integer):
            raise ValueError(f"query_positions must be integers [..., Lq]; got {q.dtype}.")
        q = np.broadcast_to(q, batch + q.shape[-1:])
        if (q >= L).any():
            raise ValueError(f"query_positions must be < L={L}; got max {q.max()}.")
    keys = (np.ones(batch + (L,), bool) if key_mask is None
            else np.broadcast_to(np.asarray(key_mask, bool), batch + (L,)))
    mix_f = mix.reshape((-1, n, L, L))
    q_f, keys_f = q.reshape((-1, q.shape[-1])), keys.reshape((-1, L))
    out = np.zeros((mix_f.shape[0], q_f.shape[-1], L))
    for b in range(mix_f.shape[0]):
        caps = np.rint(mix_f[b] * scale)
        graph = _layered_graph(caps)
        sink_of = {}
        for r, i in enumerate(q_f[b]):
            i = int(i)
            if i < 0:
                continue
            if i not in sink_of:
                sources = np.nonzero(_reach(caps, i) & keys_f[b])[0]
                sink_of[i] = np.zeros(L)
                for j in sources:
                    res = maximum_flow(graph, int(j), n * L + i)
                    sink_of[i][j] = res.flow_value / scale
            out[b, r] = sink_of[i]
    return out.reshape(batch + (q.shape[-1], L))


def attention_flow(patterns: Sequence[jax.Array] | jax.Array, *, query_positions=None,
                   residual: float = 0.5, key_mask=None,
                   scale: Optional[int] = None) -> np.ndarray:
    """Attention flow of every input token into the states at ``query_positions``.

    Args:
      patterns: a sequence of ``n`` layers' patterns ``[..., heads, L, L]`` (query, key), or one
        array ``[n, ..., heads, L, L]``; numpy or JAX. The leading ``...`` axes (batch) are kept.
      query_positions: ``None`` (all ``L`` positions) or ints ``[..., Lq]`` / ``[Lq]``: the
        positions after the last layer whose flows are computed (only those max-flows run);
        negative entries give zero rows.
      residual: weight of the identity in ``Â``, in ``[0, 1]`` (Abnar & Zuidema's 0.5).
      key_mask: optional bool ``[..., L]``: the input tokens to compute (others 0).
      scale: integer capacity scale for SciPy (default ``2**20``, smaller for ``L > 1024``);
        absolute error at most ``E/(2·scale)`` (module docstring).

    Returns:
      numpy ``[..., Lq, L]``: row = query position after the last layer, column = input
      token; each entry in ``[0, 1]`` when ``Â``'s rows sum to 1 (the top node's in-capacity).
    """
    mix = np.asarray(mixing_matrices(patterns, residual=residual))   # [n, ..., L, L]
    mix = np.moveaxis(mix, 0, -3)                                     # [..., n, L, L]
    return flow_from_mixing(mix, query_positions=query_positions, key_mask=key_mask,
                            scale=scale)
