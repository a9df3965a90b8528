"""ReAGent (Zhao & Shan, 2024): recursive attribution by replacing tokens, all probes batched."""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from ._common import as_key, chunked_map, count

__all__ = ["reagent"]

_tmap = jax.tree_util.tree_map


def _sample_tokens(key, ids, groups, n_vocab):
    """A random token for every entry of ``ids``: uniform over the vocabulary, or over the
    tokens of the same group (``groups = (group_of [V], offsets [G], sizes [G], members
    [V])``, Inseq's POS-tag sampler layout)."""
    u = jax.random.uniform(key, ids.shape)
    if groups is None:
        return jnp.minimum((u * n_vocab).astype(jnp.int32), n_vocab - 1)
    group_of, offsets, sizes, members = groups
    g = group_of[ids]
    idx = (u * sizes[g] + offsets[g]).astype(jnp.int32)
    return members[jnp.minimum(idx, offsets[g] + sizes[g] - 1)]


def replacement_groups(group_of: Any) -> tuple:
    """``group_of[V]`` (an int group per token, e.g. its POS tag) as the sampler's layout
    ``(group_of, offsets, sizes, members)``: ``members`` lists the tokens group by group."""
    import numpy as np
    g = np.asarray(group_of, np.int64)
    order = np.argsort(g, kind="stable")
    n_groups = int(g.max()) + 1
    sizes = np.bincount(g, minlength=n_groups)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return tuple(jnp.asarray(a, jnp.int32) for a in (g, offsets, sizes, order))


def reagent(
    score_fn: Callable[..., Any],
    x: Any,
    *,
    logits_fn: Callable[[Any], jax.Array],
    target_ids: jax.Array,
    token_ids: Any,
    vocabulary: Any,
    visible: Any,
    key: Any = 0,
    keep_top_n: int = 5,
    stopping_condition_top_k: int = 3,
    replacing_ratio: float = 0.3,
    max_probe_steps: int = 3000,
    num_probes: int = 16,
    replacement_groups: Optional[tuple] = None,
    has_aux: bool = False,
    internal_batch_size: Optional[int] = None,
):
    """ReAGent importance of every visible input token for every generated token.

    For each example ``b``, generated step ``t`` and each of ``num_probes`` probes (all of
    them one vmapped program): start from ``U(0, 1)`` logit scores over the positions step
    ``t`` sees; repeatedly replace each position with probability ``replacing_ratio`` by a
    random token (uniform over the vocabulary, or over its ``replacement_groups`` group: Inseq
    uses POS tags), measure ``Δ = p(x) − p(x̃)`` of the target token, and add
    ``logit((±Δ + 1)/2)`` to the scores (``+`` at replaced positions, ``−`` elsewhere); the
    probe stops once the target is among the ``stopping_condition_top_k`` predictions with
    only its ``keep_top_n`` most important positions kept (all others replaced). The result is
    the mean over stopped probes of ``softmax(scores)`` over the visible positions (NaN for a
    step where no probe stopped within ``max_probe_steps``, as in Inseq), repeated over the
    hidden features as Inseq does. Inseq 0.7.1's defaults.

    Args:
      score_fn: ``x -> scores`` (only its ``aux`` is used, when ``has_aux``).
      x: embeddings ``{side: [B, L, H]}`` (or one array), ``vocabulary[token_ids]``.
      logits_fn: ``x -> logits [B, T, V]`` of the generated tokens' predictions.
      target_ids: int ``[B, T]``: the generated tokens.
      token_ids: int ``[B, L]`` per leaf of ``x``.
      vocabulary: ``[V, H]`` per leaf (or one for all): replacement tokens' embeddings.
      visible: bool ``[B, T, L]`` per leaf: positions step ``t`` sees (its prefix, real
        tokens only); the others are never replaced and get no score.
      key: PRNG key or one per example (``[B]``); probe ``k`` of step ``t`` draws from
        ``fold_in(fold_in(key[b], t), k)`` only, so an example's numbers do not depend on
        the batch it is in.
      keep_top_n / stopping_condition_top_k / replacing_ratio / max_probe_steps /
      num_probes: as in Inseq.
      replacement_groups: :func:`replacement_groups` of a per-token group id, or ``None``
        (uniform over the vocabulary).
      internal_batch_size: probes whose forwards run at once (``None``: all ``T · probes``).

    Returns:
      ``[T, *leaf.shape]`` per leaf (and ``aux`` when ``has_aux``).
    """
    keep_top_n = count(keep_top_n, "keep_top_n")
    top_k = count(stopping_condition_top_k, "stopping_condition_top_k")
    max_steps = count(max_probe_steps, "max_probe_steps")
    n_probes = count(num_probes, "num_probes")
    if not 0.0 < float(replacing_ratio) <= 1.0:
        raise ValueError(f"replacing_ratio must be in (0, 1], got {replacing_ratio!r}.")
    leaves, treedef = jax.tree_util.tree_flatten(x)
    x_def = treedef

    def per_leaf(v, name):
        if jax.tree_util.tree_structure(v) == x_def:
            return jax.tree_util.tree_leaves(v)
        lv = jax.tree_util.tree_leaves(v)
        if len(lv) == 1:
            return lv * len(leaves)
        raise ValueError(f"{name} must be one array or a pytree like x.")

    ids = [jnp.asarray(i, jnp.int32) for i in per_leaf(token_ids, "token_ids")]
    vocabs = per_leaf(vocabulary, "vocabulary")
    vis = [jnp.asarray(v, bool) for v in per_leaf(visible, "visible")]
    B, T = target_ids.shape
    sizes = [leaf.shape[1] for leaf in leaves]
    n_vocab = vocabs[0].shape[0]
    key = as_key(key)
    keys = key if key.ndim == 1 else jnp.broadcast_to(key, (B,))

    p_orig = _target_probs(logits_fn(x), target_ids)  # [B, T]
    vis_all = jnp.concatenate(vis, -1)  # [B, T, N]

    def split(flat):  # [..., N] -> per leaf [..., L_j]
        out, o = [], 0
        for n in sizes:
            out.append(flat[..., o:o + n])
            o += n
        return out

    def replaced_inputs(k, mask):
        """x with positions ``mask [B, N]`` replaced by random tokens drawn from ``k [B]``."""
        new = []
        for j, (leaf, i, voc, m) in enumerate(zip(leaves, ids, vocabs, split(mask))):
            tok = jax.vmap(lambda kb, ib: _sample_tokens(jax.random.fold_in(kb, j), ib,
                                                        replacement_groups, n_vocab))(k, i)
            new.append(jnp.where(m[..., None], voc[tok].astype(leaf.dtype), leaf))
        return jax.tree_util.tree_unflatten(treedef, new)

    def probe_logits(k, mask, t):
        """Logits ``[B, V]`` of step ``t`` for x with ``mask`` replaced."""
        return jnp.take(logits_fn(replaced_inputs(k, mask)), t, axis=1)

    def run_probe(tk):
        t, k_idx = tk
        pkeys = jax.vmap(lambda kb: jax.random.fold_in(jax.random.fold_in(kb, t), k_idx))(keys)
        valid = vis_all[:, t]  # [B, N]
        tgt = target_ids[:, t]
        p0 = p_orig[:, t]
        N = valid.shape[-1]
        init = jax.vmap(lambda kb: jax.random.uniform(jax.random.fold_in(kb, 0), (N,)))(pkeys)

        def body(state):
            step, logit, stopped = state
            ik = jax.vmap(lambda kb: jax.random.fold_in(kb, step + 1))(pkeys)
            k_mask, k_tok, k_stop = (jax.vmap(lambda kb, s=s: jax.random.fold_in(kb, s))(ik)
                                     for s in (0, 1, 2))
            mask = (jax.vmap(lambda kb: jax.random.uniform(kb, (N,)))(k_mask)
                    < replacing_ratio) & valid
            p_rep = _target_probs(probe_logits(k_tok, mask, t)[:, None], tgt[:, None])[:, 0]
            delta = p0 - p_rep
            d = jnp.where(mask, delta[:, None], -delta[:, None])
            upd = logit + jax.scipy.special.logit(d * 0.5 + 0.5)
            logit = jnp.where(stopped[:, None], logit, upd)
            imp = _masked_softmax(logit, valid)
            # stopping condition: keep the top-n visible positions, replace the others
            order = jnp.argsort(-jnp.where(valid, imp, -jnp.inf), axis=-1, stable=True)
            top = jnp.zeros_like(valid).at[jnp.arange(B)[:, None], order[:, :keep_top_n]].set(True)
            logits_kept = probe_logits(k_stop, valid & ~top, t)  # [B, V]
            rank = (logits_kept > jnp.take_along_axis(logits_kept, tgt[:, None], 1)).sum(-1)
            stopped = stopped | (rank < top_k)
            return step + 1, logit, stopped

        def cond(state):
            step, _, stopped = state
            return (step < max_steps) & ~stopped.all()

        _, logit, stopped = jax.lax.while_loop(
            cond, body, (jnp.int32(0), init, jnp.zeros((B,), bool)))
        return _masked_softmax(logit, valid), stopped  # [B, N], [B]

    grid_t, grid_k = jnp.meshgrid(jnp.arange(T), jnp.arange(n_probes), indexing="ij")
    imp, stopped = chunked_map(run_probe, (grid_t.reshape(-1), grid_k.reshape(-1)),
                               internal_batch_size)
    imp = imp.reshape(T, n_probes, B, -1)
    stopped = stopped.reshape(T, n_probes, B).astype(imp.dtype)
    mean = (imp * stopped[..., None]).sum(1) / stopped.sum(1)[..., None]  # [T, B, N]
    mean = jnp.where(vis_all.transpose(1, 0, 2), mean, 0.0)
    attrs = [jnp.broadcast_to(m[..., None], (T,) + leaf.shape).astype(leaf.dtype)
             for m, leaf in zip(split(mean), leaves)]
    attr = jax.tree_util.tree_unflatten(treedef, attrs)
    return (attr, score_fn(x)[1]) if has_aux else attr


def _target_probs(logits: jax.Array, target_ids: jax.Array) -> jax.Array:
    """``softmax(logits)[target]``: ``[B, T, V], [B, T] -> [B, T]``."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(p, target_ids[..., None].astype(jnp.int32), -1)[..., 0]


def _masked_softmax(logit: jax.Array, valid: jax.Array) -> jax.Array:
    z = jnp.where(valid, logit, -jnp.inf)
    return jnp.where(valid, jax.nn.softmax(z, axis=-1), 0.0)
