"""LIME (Ribeiro et al., 2016) for token inputs: random token masking and a ridge surrogate."""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ._common import as_key, chunked_map, count, plain, resolve_baseline, token_axes
from .needs import declare

__all__ = ["lime", "weighted_ridge", "SIMILARITIES"]

#: Sample weights of the surrogate fit: ``"uniform"`` (every sample 1) or ``"count"``
#: (the number of input elements a sample leaves unchanged: kept positions times their
#: features, Inseq's/Captum's ``token_similarity_kernel``).
SIMILARITIES = ("uniform", "count")


def weighted_ridge(design: jax.Array, y: jax.Array, weights: jax.Array,
                   alpha: float) -> tuple[jax.Array, jax.Array]:
    """Ridge regression with a free intercept and sample weights, batched.

    Minimises ``Σ_s w_s (y_s − β_0 − design_s · β)² + alpha ‖β‖²`` for ``design[..., S, N]``,
    ``y[..., S, T]``, ``weights[..., S]``: the data are centred by their weighted means and
    scaled by ``√w`` (scikit-learn's ``Ridge(alpha).fit(X, y, sample_weight=w)``), then the
    normal equations are solved in the smaller of the two forms (``N × N``, or ``S × S``
    through ``(AᵀA + αI)⁻¹Aᵀ = Aᵀ(AAᵀ + αI)⁻¹`` when there are more features than samples).

    Returns:
      ``(coef [..., N, T], intercept [..., T])``.
    """
    w = weights.astype(y.dtype)
    wsum = w.sum(-1)[..., None]
    x_mean = jnp.einsum("...s,...sn->...n", w, design) / wsum
    y_mean = jnp.einsum("...s,...st->...t", w, y) / wsum
    sw = jnp.sqrt(w)[..., None]
    A = (design - x_mean[..., None, :]) * sw
    b = (y - y_mean[..., None, :]) * sw
    S, N = A.shape[-2:]
    if N <= S:
        gram = jnp.einsum("...si,...sj->...ij", A, A) + alpha * jnp.eye(N, dtype=A.dtype)
        coef = jnp.linalg.solve(gram, jnp.einsum("...si,...st->...it", A, b))
    else:
        kern = jnp.einsum("...si,...ri->...sr", A, A) + alpha * jnp.eye(S, dtype=A.dtype)
        coef = jnp.einsum("...si,...st->...it", A, jnp.linalg.solve(kern, b))
    intercept = y_mean - jnp.einsum("...n,...nt->...t", x_mean, coef)
    return coef, intercept

_tmap = jax.tree_util.tree_map


@declare(baseline=True, key=True, position_mask=True)
def lime(
    score_fn: Callable[..., Any],
    x: Any,
    baseline: Any = None,
    *,
    n_samples: int = 64,
    keep_probability: float = 0.5,
    alpha: float = 1.0,
    similarity: str = "uniform",
    key: Any = 0,
    position_mask: Any = None,
    token_axis: int = -2,
    has_aux: bool = False,
    internal_batch_size: int | None = None,
):
    """Coefficients of a ridge surrogate fitted to scores of randomly token-masked inputs.

    For each example, ``n_samples`` binary vectors ``z ∈ {0, 1}^N`` over its ``N`` token
    positions (numbered across the leaves of ``x``) are drawn with ``P(z_n = 1) =
    keep_probability``; position ``n`` keeps ``x`` where ``z_n = 1`` and takes the baseline
    (through ``model.attribute``: the UNK/PAD embedding, special tokens kept) where ``z_n = 0``.
    Every output ``t`` is then regressed on ``z``: ``s_t ≈ β_0 + Σ_n β_n z_n`` with ridge
    penalty ``alpha`` on ``β_n`` (not on the intercept; :func:`weighted_ridge`) and sample
    weights ``similarity``: uniform by default, or ``"count"``, the number of input elements
    the sample leaves unchanged (Inseq's ``token_similarity_kernel``). All samples of all examples are one vmapped program (chunked by
    ``internal_batch_size``). A score that is linear in ``z`` gets its exact coefficients as
    ``alpha → 0``.

    The attribution stores ``β_n / H`` at every feature of position ``n`` (``H`` features per
    position), so summing a position's attributions over its features gives ``β_n``.

    Args:
      score_fn: ``x -> scores[..., T]`` whose leading axes equal the leaf axes before
        ``token_axis`` (``x[B, L, H] -> scores[B, T]`` or ``x[L, H] -> scores[T]``).
      x: array or pytree of arrays with a token axis.
      baseline: like ``x`` (or one array/scalar for every leaf); ``None``: zeros.
      n_samples: masked inputs per example.
      keep_probability: probability that a position keeps its token, in ``(0, 1)``.
      alpha: ridge penalty (``> 0``).
      similarity: ``"uniform"`` or ``"count"`` sample weights (:data:`SIMILARITIES`).
      key: seed, PRNG key, or one key per example (``[B]``); example ``b``'s masks come from
        its own key only, so an example gets the same masks alone and in any batch.
      position_mask: like ``x`` with the token axis only (``[B, L]`` per leaf), 1 at real
        tokens and 0 at padding; padded positions are never masked and get no coefficient, so
        padding does not change the fit. ``None``: every position is real.
      token_axis: the position axis of every leaf (default ``-2``: ``[..., L, H]``).
      has_aux: ``score_fn`` returns ``(scores, aux)``; ``aux`` at ``x`` is returned too.
      internal_batch_size: masked samples evaluated at once (``None``: all).

    Returns:
      ``[T, *leaf.shape]`` per leaf (and ``aux`` when ``has_aux``).
    """
    n_samples = count(n_samples, "n_samples", 2)
    if not 0.0 < float(keep_probability) < 1.0:
        raise ValueError(f"keep_probability must be in (0, 1), got {keep_probability!r}.")
    if not float(alpha) > 0.0:
        raise ValueError(f"alpha (the ridge penalty) must be > 0, got {alpha!r}.")
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
    baseline = resolve_baseline(x, baseline)
    plain_fn = plain(score_fn, has_aux)
    out = score_fn(x)
    scores, aux = out if has_aux else (out, None)
    if jnp.ndim(scores) == 0:
        raise ValueError("score_fn must return scores with a trailing output axis [..., T].")
    lead = scores.shape[:-1]
    if len(lead) > 1:
        raise ValueError(f"lime needs scores [B, T] or [T]; got {scores.shape}.")
    leaves, treedef = jax.tree_util.tree_flatten(x)
    axes = token_axes(x, token_axis)
    for leaf, ax in zip(leaves, axes):
        if leaf.shape[:ax] != lead:
            raise ValueError(f"lime needs the leading axes of the scores {scores.shape} to "
                             f"match the axes before the token axis of every input leaf; got "
                             f"a leaf of shape {leaf.shape} with token_axis={token_axis}.")
    batched = bool(lead)
    B = lead[0] if batched else 1
    if position_mask is None:
        pmask = [jnp.ones((B, leaf.shape[ax]), bool) for leaf, ax in zip(leaves, axes)]
    else:
        pmask = [jnp.asarray(m).reshape(B, -1) > 0
                 for m in jax.tree_util.tree_leaves(position_mask)]
    key = as_key(key)
    keys = key if key.ndim == 1 else jnp.broadcast_to(key, (B,))
    if keys.shape[0] != B:
        raise ValueError(f"{keys.shape[0]} per-example keys for {B} examples.")

    def draw(k, j, n):  # [S, n]; drawn as [n, S] so position p's bits do not depend on n
        u = jax.random.bernoulli(jax.random.fold_in(k, j), keep_probability, (n, n_samples))
        return u.T

    # z per leaf: [S, B, n_j], True = keep; padded positions always kept.
    zs = [jnp.moveaxis(jax.vmap(lambda k, j=j, n=leaf.shape[ax]: draw(k, j, n))(keys), 0, 1)
          | ~m[None] for j, (leaf, ax, m) in enumerate(zip(leaves, axes, pmask))]

    def sample_scores(z):  # z: list of [B, n_j] -> scores [B, T]
        new = []
        for leaf, base, ax, zj in zip(leaves, jax.tree_util.tree_leaves(baseline), axes, z):
            zj = zj if batched else zj[0]
            keep = zj.reshape(zj.shape + (1,) * (leaf.ndim - ax - 1))
            new.append(jnp.where(keep, leaf, base))
        s = plain_fn(jax.tree_util.tree_unflatten(treedef, new))
        return s if batched else s[None]

    y = chunked_map(sample_scores, zs, internal_batch_size)  # [S, B, T]
    design = jnp.concatenate([z & m[None] for z, m in zip(zs, pmask)], -1)  # [S, B, N]
    design = jnp.moveaxis(design.astype(y.dtype), 0, 1)  # [B, S, N]
    if similarity == "count":  # unchanged elements: kept real positions x their features
        feats = jnp.concatenate([jnp.full((n,), math.prod(leaf.shape[ax + 1:]), y.dtype)
                                 for leaf, ax, n in zip(leaves, axes,
                                                        [m.shape[1] for m in pmask])])
        weights = design @ feats  # [B, S]
    else:
        weights = jnp.ones(design.shape[:2], y.dtype)
    coef, _ = weighted_ridge(design, jnp.moveaxis(y, 0, 1), weights, alpha)  # [B, N, T]
    coef = coef * jnp.concatenate(pmask, -1)[..., None]
    attrs, offset = [], 0
    for leaf, ax in zip(leaves, axes):
        n = leaf.shape[ax]
        c = jnp.moveaxis(coef[:, offset:offset + n], -1, 0)  # [T, B, n]
        c = c if batched else c[:, 0]
        post = leaf.shape[ax + 1:]
        c = c.reshape(c.shape + (1,) * len(post)) / math.prod(post)
        dtype = leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.inexact) else c.dtype
        attrs.append(jnp.broadcast_to(c, (c.shape[0],) + leaf.shape).astype(dtype))
        offset += n
    attr = jax.tree_util.tree_unflatten(treedef, attrs)
    return (attr, aux) if has_aux else attr
