"""Discretized integrated gradients (Sanyal & Ren, 2021): IG along monotonic word paths."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from ._common import plain, weighted_sum
from ._vjp import per_output_grads
from .monotonic_paths import (STRATEGIES, knn_graph, monotonic_path_embeddings,
                              monotonic_word_paths)

__all__ = ["discretized_integrated_gradients", "dig_paths"]

_tmap = jax.tree_util.tree_map


def _per_leaf(value: Any, x: Any, name: str) -> list:
    """``value`` as one entry per leaf of ``x``: a pytree like ``x``, or one array for all."""
    x_def = jax.tree_util.tree_structure(x)
    if jax.tree_util.tree_structure(value) == x_def:
        return jax.tree_util.tree_leaves(value)
    leaves = jax.tree_util.tree_leaves(value)
    if len(leaves) == 1:
        return leaves * x_def.num_leaves
    raise ValueError(f"{name} must be one array or a pytree like x ({x_def}); got "
                     f"{jax.tree_util.tree_structure(value)}.")


def dig_paths(x: Any, *, token_ids: Any, baseline_ids: Any, vocabulary: Any, knn: Any = None,
              n_steps: int = 50, strategy: str = "greedy", n_neighbors: int = 50,
              special_ids: Sequence[int] = ()) -> Any:
    """DIG's path points: a pytree like ``x`` with leaves ``[n_steps, *leaf.shape]``, point 0
    the baseline token's embedding and point ``n_steps − 1`` the input's
    (:mod:`jaxattr.methods.monotonic_paths`). Arguments as in
    :func:`discretized_integrated_gradients`."""
    leaves, treedef = jax.tree_util.tree_flatten(x)
    ids = _per_leaf(token_ids, x, "token_ids")
    bids = _per_leaf(baseline_ids, x, "baseline_ids")
    vocabs = _per_leaf(vocabulary, x, "vocabulary")
    knns = [None] * len(leaves) if knn is None else _per_leaf(knn, x, "knn")
    paths = []
    for leaf, i, b, voc, nn in zip(leaves, ids, bids, vocabs, knns):
        if jnp.shape(i) != leaf.shape[:-1] or jnp.shape(b) != leaf.shape[:-1]:
            raise ValueError(f"token_ids and baseline_ids must have the shape of x without its "
                             f"hidden axis, {leaf.shape[:-1]}; got {jnp.shape(i)} and "
                             f"{jnp.shape(b)}.")
        if jnp.shape(voc)[-1] != leaf.shape[-1]:
            raise ValueError(f"vocabulary rows have {jnp.shape(voc)[-1]} features, x has "
                             f"{leaf.shape[-1]}: give the table x was looked up in (with the "
                             "model's embedding scale).")
        if nn is None:
            nn = knn_graph(voc, n_neighbors)[0]
        words = monotonic_word_paths(i, b, voc, nn, n_steps=n_steps, strategy=strategy,
                                     special_ids=special_ids)
        p = monotonic_path_embeddings(words, b, voc, n_steps=n_steps)
        paths.append(p.astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, paths)


def discretized_integrated_gradients(
    score_fn: Callable[..., Any],
    x: Any,
    *,
    token_ids: Any,
    baseline_ids: Any,
    vocabulary: Any,
    knn: Any = None,
    n_steps: int = 50,
    strategy: str = "greedy",
    n_neighbors: int = 50,
    special_ids: Sequence[int] = (),
    multiply_by_inputs: bool = False,
    internal_batch_size: int | None = None,
    has_aux: bool = False,
    output_batch_size: int | None = None,
):
    """``Σ_k ∇s(p_k) ⊙ (p_{k+1} − p_k)`` along DIG's monotonic path ``p_0 … p_{n−1}``.

    The path (:func:`dig_paths`) runs from the baseline token's embedding ``p_0`` through
    ``n_steps − 2`` monotonised anchor words to the input token's embedding ``p_{n−1}`` (the
    entries of ``x``), per position; the sum is DIG's left Riemann sum (the last point has
    no step after it, so it is not evaluated). Inseq's defaults: ``n_steps=50``,
    ``strategy="greedy"``, 50 neighbours, no multiplication by inputs. Every path point of
    every position is one vmapped program (chunked by ``internal_batch_size``).

    Args:
      score_fn: ``x -> scores[..., T]`` (``(scores, aux)`` when ``has_aux``).
      x: embeddings ``[..., L, H]`` (array or pytree), equal to ``vocabulary[token_ids]``.
      token_ids: int ``[..., L]`` per leaf: the tokens of ``x``.
      baseline_ids: int ``[..., L]`` per leaf: the baseline token of each position (through
        ``model.attribute``: UNK, or PAD, with special tokens kept).
      vocabulary: ``[V, H]`` table ``x`` is looked up in (times the model's embedding
        scale), one for all leaves or a pytree like ``x``.
      knn: int ``[V, K]`` neighbour lists (:func:`~jaxattr.methods.monotonic_paths.knn_graph`,
        nearest first) per leaf or one for all; ``None`` computes them here (through
        ``model.attribute`` they are computed once per model and cached).
      n_steps: path points, baseline and input included (``>= 3``).
      strategy: ``"greedy"`` or ``"maxcount"`` (:data:`STRATEGIES`).
      n_neighbors: ``K`` when ``knn`` is computed here.
      special_ids: tokens whose path stays at the token (no anchors).
      multiply_by_inputs: multiply the sum by ``x − p_0`` (Captum's "global" DIG).
      internal_batch_size: path points evaluated at once (``None``: all).
      has_aux: ``score_fn`` returns ``(scores, aux)``; ``aux`` at ``x`` is returned too.
      output_batch_size: bound on simultaneous backward passes per point.

    Returns:
      ``[T, *leaf.shape]`` per leaf (and ``aux`` when ``has_aux``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    paths = dig_paths(x, token_ids=token_ids, baseline_ids=baseline_ids, vocabulary=vocabulary,
                      knn=knn, n_steps=n_steps, strategy=strategy, n_neighbors=n_neighbors,
                      special_ids=special_ids)
    plain_fn = plain(score_fn, has_aux)
    points = _tmap(lambda p: p[:-1], paths)
    steps = _tmap(lambda p: p[1:] - p[:-1], paths)

    def point_term(item):
        point, step = item
        grads = per_output_grads(plain_fn, point, output_batch_size=output_batch_size)[1]
        return _tmap(lambda g, d: g * d[None], grads, step)

    total = weighted_sum(point_term, (points, steps), jnp.ones((n_steps - 1,), jnp.float32),
                         internal_batch_size)
    if multiply_by_inputs:
        total = _tmap(lambda t, p: t * (p[-1] - p[0])[None], total, paths)
    if has_aux:
        return total, score_fn(x)[1]
    return total
