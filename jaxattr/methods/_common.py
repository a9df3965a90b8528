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


def check_finite(value: Any, name: str) -> None:
    """Raise when a concrete (not traced) array or pytree holds NaN or inf: one such entry
    would make every attribution NaN with no other sign. Traced values pass unchecked."""
    for leaf in jax.tree_util.tree_leaves(value):
        if isinstance(leaf, jax.core.Tracer):
            continue
        try:
            a = np.asarray(leaf)
        except Exception:  # not array-like: left to the shape checks that follow
            continue
        if a.dtype.kind not in "fc":
            if a.dtype.kind not in "biu":
                raise ValueError(f"{name} must hold numbers, got an array of dtype {a.dtype}.")
            continue
        bad = ~np.isfinite(a)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or inf; "
                             f"first at index {where}): every attribution would be NaN. Give "
                             f"a finite {name}.")


def resolve_baseline(x: Any, baseline: Any) -> Any:
    """A pytree like ``x`` with full-shape leaves of ``x``'s dtypes.

    ``None`` means zeros; a pytree with ``x``'s structure is broadcast leaf by leaf; a single
    array or scalar is broadcast to every leaf.
    """
    if baseline is None:
        return _tmap(jnp.zeros_like, x)
    check_finite(baseline, "baseline")
    x_def = jax.tree_util.tree_structure(x)
    b_def = jax.tree_util.tree_structure(baseline)
    if b_def == x_def:
        return _tmap(lambda xi, bi: jnp.broadcast_to(jnp.asarray(bi, xi.dtype), xi.shape),
                     x, baseline)
    if b_def.num_leaves == 1 and b_def.num_nodes == 1:
        return _tmap(lambda xi: jnp.broadcast_to(jnp.asarray(baseline, xi.dtype), xi.shape), x)
    raise ValueError(f"baseline must be None, a scalar/array, or a pytree like x; got structure "
                     f"{b_def} for x with structure {x_def}.")


def count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum``; a float (``2.5``, even ``2.0``), bool or string is
    an error naming the argument (it would otherwise be truncated silently)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r} "
                         f"({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")
    return int(value)


def as_key(key: Any) -> jax.Array:
    """A typed PRNG key (shape ``()``) or a batch of keys (shape ``[B]``: one per example).

    Accepts an integer seed (ints keep static kwargs hashable), a typed key or key array, or
    a raw ``uint32`` key (``jax.random.PRNGKey``: ``[2]``, or ``[B, 2]`` for a batch).
    """
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    if not jax.dtypes.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    if key.ndim > 1:
        raise ValueError(f"key must be one PRNG key or a 1-D batch of keys (one per example, "
                         f"along x's leading axis); got a key array of shape {key.shape}.")
    return key


def fold_in(key: jax.Array, data: Any) -> jax.Array:
    """``jax.random.fold_in`` for one key or a batch of keys (each folded with ``data``)."""
    if key.ndim == 0:
        return jax.random.fold_in(key, data)
    return jax.vmap(jax.random.fold_in, (0, None))(key, data)


def example_identity(ids: jax.Array, mask: jax.Array) -> jax.Array:
    """A ``uint32`` hash ``[B]`` of each row's unmasked tokens ``ids[B, L]`` and their order.

    Padding (wherever it is) does not change it, nor does the row an example lands on in a
    batch: it names the example itself, so per-example random draws keyed on it are the same
    alone, in any batch, with any batch size, and sharded.
    """
    m = jnp.asarray(mask) > 0
    rank = (jnp.cumsum(m, axis=1) - 1).astype(jnp.uint32)
    v = _mix(jnp.asarray(ids).astype(jnp.uint32) * jnp.uint32(0x9E3779B1)
             + _mix(rank + jnp.uint32(0x7F4A7C15)))
    h = jnp.sum(jnp.where(m, v, jnp.uint32(0)), axis=1, dtype=jnp.uint32)
    return _mix(h + m.sum(1).astype(jnp.uint32) * jnp.uint32(0x85EBCA77))


def _mix(v: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser (murmur3's fmix32), elementwise on ``uint32``."""
    v = v ^ (v >> 16)
    v = v * jnp.uint32(0x85EBCA6B)
    v = v ^ (v >> 13)
    v = v * jnp.uint32(0xC2B2AE35)
    return v ^ (v >> 16)


def plain(score_fn: Callable, has_aux: bool) -> Callable:
    """``score_fn`` without its auxiliary output (keeping its ``per_output_grads``, a
    program of its own for the per-output gradients, see :func:`jaxattr.methods.per_output_grads`)."""
    if not has_aux:
        return score_fn
    fn = lambda z: score_fn(z)[0]  # noqa: E731
    custom = getattr(score_fn, "per_output_grads", None)
    if custom is not None:
        fn.per_output_grads = custom
    return fn


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
    ``α ~ U(0, 1)`` is drawn too (``Φ(z)`` of one extra standard normal).

    ``key`` is one key, or a batch of keys ``[B]`` (see :func:`as_key`): then example ``b``
    (index ``b`` of every leaf's leading axis) draws from ``key[b]`` alone and ``alpha`` is
    ``[B]``. ``alpha`` draws from ``fold_in(key, 0)`` and leaf ``j`` from ``fold_in(key, j + 1)``,
    with the leaf's own shape, so its noise does not
    depend on the other leaves' shapes, and (with threefry's partitionable bits, JAX's
    default) element ``[l, ...]`` does not depend on how far the leaf is padded.

    Returns ``(noisy_x, alpha)`` (``alpha`` is ``None`` unless requested).
    """
    key = as_key(key)
    if key.ndim == 1:
        for leaf in jax.tree_util.tree_leaves(x):
            if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != key.shape[0]:
                raise ValueError(f"{key.shape[0]} per-example keys need every input leaf to "
                                 f"have that many examples on its leading axis; got a leaf "
                                 f"of shape {jnp.shape(leaf)}.")
        return jax.vmap(lambda k, xb: draw_noise(xb, k, stdevs, with_alpha=with_alpha))(key, x)
    leaves, treedef = jax.tree_util.tree_flatten(x)
    if isinstance(stdevs, (tuple, list)):
        if len(stdevs) != len(leaves):
            raise ValueError(f"stdevs has {len(stdevs)} entries for {len(leaves)} input leaves.")
        sds = list(stdevs)
    else:
        sds = [stdevs] * len(leaves)
    out = list(leaves)
    for i, sd in enumerate(sds):
        if is_static_zero(sd):
            continue
        dtype = jnp.result_type(jnp.float32, leaves[i].dtype)
        noise = jax.random.normal(jax.random.fold_in(key, i + 1), jnp.shape(leaves[i]), dtype)
        out[i] = (leaves[i] + sd * noise).astype(leaves[i].dtype)
    alpha = None
    if with_alpha:
        alpha = jax.scipy.special.ndtr(
            jax.random.normal(jax.random.fold_in(key, 0), (), jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, out), alpha
