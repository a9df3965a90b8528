"""Monotonic paths through a vocabulary's embedding space (discretized integrated gradients).

Sanyal & Ren (2021) interpolate from a baseline token to an input token through *anchor*
words of the vocabulary, each pulled onto the monotone box between the current point and the
baseline. This module builds those paths as Inseq 0.7.1 (and the authors' code) does, as
vectorised JAX programs: the k-nearest-neighbour graph of the vocabulary (Inseq: scikit-learn
on CPU, pickled), the anchor words of every token (one ``lax.scan`` over the path, vmapped over
tokens), and the monotonised path embeddings.

All functions are pure; they take the (scaled) embedding table ``vocabulary[V, H]``.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["STRATEGIES", "knn_graph", "monotonic_dims", "make_monotonic",
           "monotonic_word_paths", "monotonic_path_embeddings"]

#: Anchor-selection strategies: ``greedy`` picks the neighbour closest to its monotonised
#: self; ``maxcount`` the neighbour with the most dimensions already monotone.
STRATEGIES = ("greedy", "maxcount")


def knn_graph(vocabulary: jax.Array, n_neighbors: int = 50, *, row_batch: int = 512,
              refine: int = 8) -> tuple[jax.Array, jax.Array]:
    """The ``n_neighbors`` nearest other rows of ``vocabulary[V, H]`` by Euclidean distance.

    Candidates come from ``|a|² + |b|² − 2 a·b`` (a matrix product: fast on an accelerator),
    ``n_neighbors + refine`` per row; their distances are then recomputed as
    ``‖a − b‖`` from the differences and sorted (ties: lower index first), so order and
    distances do not carry the cancellation error of the product form. A row is never its
    own neighbour (scikit-learn's ``kneighbors_graph`` on the fitted data, as Inseq uses).
    Rows are processed ``row_batch`` at a time (memory ``row_batch · V``).

    Returns:
      ``(indices int32 [V, K], distances float32 [V, K])``, nearest first.
    """
    table = jnp.asarray(vocabulary, jnp.float32)
    V = table.shape[0]
    k = int(n_neighbors)
    if not 1 <= k < V:
        raise ValueError(f"n_neighbors must be in [1, {V - 1}] for a vocabulary of {V} rows, "
                         f"got {n_neighbors!r}.")
    n_cand = min(k + int(refine), V - 1)
    sq = jnp.sum(table * table, axis=1)

    def row(i):
        a = table[i]
        d2 = sq[i] + sq - 2.0 * (table @ a)
        d2 = d2.at[i].set(jnp.inf)
        _, cand = jax.lax.top_k(-d2, n_cand)
        cand = jnp.sort(cand)  # index order, so the stable sort below breaks ties by index
        diff = table[cand] - a
        dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
        order = jnp.argsort(dist, stable=True)[:k]
        return cand[order].astype(jnp.int32), dist[order]

    return jax.lax.map(row, jnp.arange(V), batch_size=min(int(row_batch), V))


def monotonic_dims(anchor: jax.Array, baseline: jax.Array, point: jax.Array) -> jax.Array:
    """Dimensions where ``anchor`` lies between ``point`` and ``baseline`` (inclusive; equal
    everywhere when they are equal)."""
    return (((baseline > point) & (baseline >= anchor) & (anchor >= point))
            | ((baseline < point) & (baseline <= anchor) & (anchor <= point))
            | ((baseline == point) & (baseline == anchor) & (anchor == point)))


def make_monotonic(anchor: jax.Array, baseline: jax.Array, point: jax.Array,
                   n_steps: int) -> jax.Array:
    """``anchor`` with each non-monotone dimension moved to ``point − (point − baseline)/n``."""
    keep = monotonic_dims(anchor, baseline, point)
    return jnp.where(keep, anchor, point - (1.0 / n_steps) * (point - baseline))


def _scores(strategy: str, cand_emb: jax.Array, base_emb: jax.Array,
            word_emb: jax.Array, n_steps: int) -> jax.Array:
    """Lower is better: ``[K]`` for candidate embeddings ``[K, H]``."""
    if strategy == "greedy":
        mono = make_monotonic(cand_emb, base_emb[None], word_emb[None], n_steps)
        diff = cand_emb - mono
        return jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    n_mono = monotonic_dims(cand_emb, base_emb[None], word_emb[None]).sum(-1)
    return (10000 - n_mono).astype(jnp.float32)


def _check(n_steps, strategy):
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 3:
        raise ValueError(f"n_steps must be an integer >= 3 (a DIG path has the baseline, "
                         f"n_steps - 2 anchors and the input), got {n_steps!r}.")


def monotonic_word_paths(ids: jax.Array, baseline_ids: jax.Array, vocabulary: jax.Array,
                         knn_indices: jax.Array, *, n_steps: int = 50,
                         strategy: str = "greedy",
                         special_ids: Sequence[int] = ()) -> jax.Array:
    """Anchor words from each token towards its baseline: ``int32 [*ids.shape, n_steps - 1]``.

    Entry 0 is the token itself. Each next anchor is, among the current word's neighbours
    (``knn_indices[V, K]``, nearest first) that are not yet on the path and not the
    baseline, the best by ``strategy`` (ties: the nearer neighbour); the baseline when none is
    left or once reached. Special tokens stay themselves along the whole path.
    """
    _check(n_steps, strategy)
    table = jnp.asarray(vocabulary)
    knn_indices = jnp.asarray(knn_indices, jnp.int32)
    special = jnp.asarray(sorted({int(s) for s in special_ids}) or [-1], jnp.int32)
    n_words = n_steps - 1

    def one(w0, b):
        base_emb = table[b]

        def step(carry, s):
            w, path = carry
            cand = knn_indices[w]
            taken = (cand[:, None] == path[None, :]).any(-1) | (cand == b)
            score = jnp.where(taken, jnp.inf,
                              _scores(strategy, table[cand], base_emb, table[w], n_steps))
            best = cand[jnp.argmin(score)]
            nxt = jnp.where((w == b) | taken.all(), b, best)
            return (nxt, path.at[s].set(nxt)), None

        path0 = jnp.full((n_words,), -1, jnp.int32).at[0].set(w0)
        (_, path), _ = jax.lax.scan(step, (w0, path0), jnp.arange(1, n_words))
        return jnp.where(jnp.isin(w0, special), jnp.full_like(path, w0), path)

    ids = jnp.asarray(ids, jnp.int32)
    flat = jax.vmap(one)(ids.reshape(-1), jnp.asarray(baseline_ids, jnp.int32).reshape(-1))
    return flat.reshape(ids.shape + (n_words,))


def monotonic_path_embeddings(words: jax.Array, baseline_ids: jax.Array,
                              vocabulary: jax.Array, *, n_steps: int = 50) -> jax.Array:
    """Path points ``[n_steps, *baseline_ids.shape, H]`` from the baseline (point 0) to the
    input token (point ``n_steps − 1``) for anchor ``words[..., n_steps − 1]``.

    Walking from the input, each anchor is made monotone with respect to the previous point
    and the baseline (:func:`make_monotonic`); the baseline embedding closes the path.
    """
    table = jnp.asarray(vocabulary)
    words = jnp.asarray(words, jnp.int32)
    if words.shape[-1] != n_steps - 1:
        raise ValueError(f"words has {words.shape[-1]} anchors per token; a path of "
                         f"n_steps={n_steps} needs {n_steps - 1}.")
    base = table[jnp.asarray(baseline_ids, jnp.int32)]  # [..., H]
    start = table[words[..., 0]]

    def step(prev, anchor_ids):
        nxt = make_monotonic(table[anchor_ids], base, prev, n_steps)
        return nxt, nxt

    _, mids = jax.lax.scan(step, start, jnp.moveaxis(words[..., 1:], -1, 0))
    forward = jnp.concatenate([start[None], mids, base[None]])  # input ... baseline
    return forward[::-1]
