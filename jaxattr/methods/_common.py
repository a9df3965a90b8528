"""Shared helpers for methods: baselines, PRNG keys, token positions and chunked sums.

Internal: nothing here is public API.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import jax.scipy.special  # noqa: F401  (ndtr)
import numpy as np

_tmap = jax.tree_util.tree_map


def resolve_baseline(x: Any, baseline: Any) -> Any:
    """A pytree like ``x`` with full-shape leaves of ``x``'s dtypes.

    ``None`` means zeros; a pytree with ``x``'s structure is broadcast leaf by leaf; a single
    array or scalar is broadcast to every leaf.
    """
    if baseline is None:
        return _tmap(jnp.zeros_like, x)
    x_def = jax.tree_util.tree_structure(x)
    b_def = jax.tree_util.tree_structure(baseline)
    if b_def == x_def:
        return _tmap(lambda xi, bi: jnp.broadcast_to(jnp.asarray(bi, xi.dtype), xi.shape),
                     x, baseline)
    if b_def.num_leaves == 1 and b_def.num_nodes == 1:
        return _tmap(lambda xi: jnp.broadcast_to(jnp.asarray(baseline, xi.dtype), xi.shape), x)
    raise ValueError(f"baseline must be None, a scalar/array, or a pytree like x; got structure "
                     f"{b_def} for x with structure {x_def}.")


def as_key(key: Any) -> jax.Array:
    """A PRNG key from a key or an integer seed (ints keep static kwargs hashable)."""
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def plain(score_fn: Callable, has_aux: bool) -> Callable:
    """``score_fn`` without its auxiliary output."""
    return (lambda z: score_fn(z)[0]) if has_aux else score_fn


def with_aux(attr: Any, score_fn: Callable, x: Any, has_aux: bool):
    """``(attr, aux at x)`` when ``has_aux`` (one extra forward), else ``attr``."""
    if not has_aux:
        return attr
    return attr, score_fn(x)[1]


def token_axes(x: Any, token_axis: int) -> list[int]:
    """Non-negative token axis of every leaf of ``x`` (validated)."""
    axes = []
    for leaf in jax.tree_util.tree_leaves(x):
        nd = jnp.ndim(leaf)
        if not -nd <= token_axis < nd:
            raise ValueError(f"token_axis={token_axis} is out of range for an input leaf of "
                             f"shape {jnp.shape(leaf)}.")
        axes.append(token_axis % nd)
    return axes


def position_masks(x: Any, token_axis: int, index: jax.Array) -> Any:
    """Pytree like ``x`` of boolean masks selecting flat token position ``index``.

    Token positions are numbered across leaves in ``tree_leaves`` order: positions
    ``0 .. L_0 - 1`` are leaf 0's, the next ``L_1`` are leaf 1's, and so on. Each mask has
    the leaf's rank with size 1 on every axis but the token axis (so it broadcasts).
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    masks, offset = [], 0
    for leaf, ax in zip(leaves, token_axes(x, token_axis)):
        n = leaf.shape[ax]
        m = jnp.arange(n) == (index - offset)
        shape = [1] * leaf.ndim
        shape[ax] = n
        masks.append(m.reshape(shape))
        offset += n
    return jax.tree_util.tree_unflatten(treedef, masks)


def n_positions(x: Any, token_axis: int) -> int:
    leaves = jax.tree_util.tree_leaves(x)
    return sum(leaf.shape[ax] for leaf, ax in zip(leaves, token_axes(x, token_axis)))


def _acc_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def weighted_sum(fn: Callable, items: Any, weights: Any, batch_size: int | None = None) -> Any:
    """``Σ_i weights[i] · fn(items[i])`` over the leading axis of ``items``, vmapped.

    ``batch_size=None`` vmaps all items at once; an integer scans over chunks of that many
    items (vmapped within a chunk) and accumulates, so peak memory is bounded by the chunk
    size, not by the number of items. Accumulation is in at least float32; the result has
    ``fn``'s output dtypes.
    """
    weights = jnp.asarray(weights)
    n = weights.shape[0]

    def wfn(item, w):
        return _tmap(lambda v: v.astype(_acc_dtype(v.dtype)) * w.astype(_acc_dtype(v.dtype)),
                     fn(item))

    out_dtypes = _tmap(lambda s: s.dtype,
                       jax.eval_shape(fn, _tmap(lambda a: a[0], items)))
    if batch_size is None or batch_size >= n:
        total = _tmap(lambda v: v.sum(0), jax.vmap(wfn)(items, weights))
    else:
        k = int(batch_size)
        if k < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}.")
        n_chunks = -(-n // k)
        pad = n_chunks * k - n

        def chunk(a):
            # Padding repeats item 0 (a valid input) with weight 0.
            a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]) if pad else a
            return a.reshape((n_chunks, k) + a.shape[1:])

        c_items = _tmap(chunk, items)
        c_weights = (jnp.concatenate([weights, jnp.zeros((pad,), weights.dtype)])
                     if pad else weights).reshape(n_chunks, k)

        def body(carry, xs):
            part = jax.vmap(wfn)(*xs)
            return _tmap(lambda c, p: c + p.sum(0), carry, part), None

        init = jax.eval_shape(wfn, _tmap(lambda a: a[0], items), weights[0])
        init = _tmap(lambda s: jnp.zeros(s.shape, s.dtype), init)
        total, _ = jax.lax.scan(body, init, (c_items, c_weights))
    return _tmap(lambda v, d: v.astype(d), total, out_dtypes)


def chunked_map(fn: Callable, items: Any, batch_size: int | None = None) -> Any:
    """``vmap(fn)(items)``, or ``lax.map`` in chunks of ``batch_size`` items."""
    n = jax.tree_util.tree_leaves(items)[0].shape[0]
    if batch_size is None or batch_size >= n:
        return jax.vmap(fn)(items)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}.")
    return jax.lax.map(fn, items, batch_size=int(batch_size))


def is_static_zero(stdevs: Any) -> bool:
    """Whether ``stdevs`` is a Python zero (or all zeros): then no noise is drawn at all."""
    vals = stdevs if isinstance(stdevs, (tuple, list)) else [stdevs]
    return all(isinstance(v, (int, float, np.number)) and v == 0 for v in vals)


def draw_noise(x: Any, key: jax.Array, stdevs: Any, *, with_alpha: bool = False):
    """``x`` plus N(0, stdev²) noise per element (absolute stdev, as Captum's ``stdevs``).

    ``stdevs`` is one number for every leaf or a sequence with one per leaf (``tree_leaves``
    order); leaves whose stdev is a Python zero get no noise. With ``with_alpha`` a scalar
    ``α ~ U(0, 1)`` is drawn too (``Φ(z)`` of one extra standard normal). Everything comes
    from a single ``jax.random.normal`` call (each PRNG call is costly to compile).

    Returns ``(noisy_x, alpha)`` (``alpha`` is ``None`` unless requested).
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    if isinstance(stdevs, (tuple, list)):
        if len(stdevs) != len(leaves):
            raise ValueError(f"stdevs has {len(stdevs)} entries for {len(leaves)} input leaves.")
        sds = list(stdevs)
    else:
        sds = [stdevs] * len(leaves)
    noisy = [i for i, sd in enumerate(sds) if not is_static_zero(sd)]
    sizes = [int(np.prod(jnp.shape(leaves[i]))) for i in noisy]
    total = sum(sizes) + int(with_alpha)
    if total == 0:
        return x, None
    dtype = jnp.result_type(jnp.float32, *[leaves[i].dtype for i in noisy])
    z = jax.random.normal(key, (total,), dtype)
    alpha = jax.scipy.special.ndtr(z[0]) if with_alpha else None
    out, offset = list(leaves), int(with_alpha)
    for i, size in zip(noisy, sizes):
        noise = z[offset:offset + size].reshape(jnp.shape(leaves[i]))
        out[i] = (leaves[i] + sds[i] * noise).astype(leaves[i].dtype)
        offset += size
    return jax.tree_util.tree_unflatten(treedef, out), alpha
