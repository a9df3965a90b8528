"""Occlusion (Zeiler & Fergus, 2014) of whole token positions."""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ._common import chunked_map, plain, position_masks, resolve_baseline, token_axes
from .needs import declare

__all__ = ["occlusion"]

_tmap = jax.tree_util.tree_map


@declare(baseline=True)
def occlusion(
    score_fn: Callable[..., Any],
    x: Any,
    baseline: Any = None,
    *,
    token_axis: int = -2,
    has_aux: bool = False,
    internal_batch_size: int | None = None,
):
    """Score change when one token position at a time is replaced by the baseline.

    For position ``i`` along ``token_axis`` (numbered across all leaves of a pytree ``x``),
    ``Δ_i = s(x) − s(x with position i set to the baseline)``, shape ``[..., T]``. The
    attribution stores ``Δ_i[..., t] / H`` at every feature of position ``i``, where ``H`` is
    the number of features per position (the product of the leaf's axes after
    ``token_axis``): **summing a position's attributions over its features gives the score
    change**. (Captum's ``Occlusion`` with a ``(1, H)`` window stores the full ``Δ_i`` at every
    feature instead, i.e. ``H`` times this value; both have the same per-position ranking.)

    Positions are occluded in every leading (batch) index at once, so the leading axes of the
    scores must equal the leaf axes before ``token_axis`` (``x[B, L, H] -> scores[B, T]``, or
    ``x[L, H] -> scores[T]``): example ``b``'s change is stored in example ``b``'s row.
    One forward pass per position, vmapped (``internal_batch_size`` positions at once when
    given), plus one at ``x``.

    Args:
      score_fn: ``x -> scores[..., T]`` (``(scores, aux)`` when ``has_aux``).
      x: array or pytree of arrays, each with a token axis ``token_axis``.
      baseline: like ``x`` (or one array/scalar broadcast to every leaf); ``None``: zeros.
      token_axis: the position axis of every leaf (default ``-2``: ``[..., L, H]``).
      has_aux: ``score_fn`` returns ``(scores, aux)``; ``aux`` at ``x`` is returned too.
      internal_batch_size: occluded forward passes evaluated at once (``None``: all).

    Returns:
      Attributions ``[T, *leaf.shape]`` per leaf (and ``aux`` when ``has_aux``), in the leaf's
      dtype for floating inputs and in the scores' (float) dtype for integer inputs.
    """
    baseline = resolve_baseline(x, baseline)
    plain_fn = plain(score_fn, has_aux)
    out = score_fn(x)
    scores, aux = out if has_aux else (out, None)
    if jnp.ndim(scores) == 0:
        raise ValueError("score_fn must return scores with a trailing output axis [..., T]; "
                         "got a scalar. Wrap it as `lambda x: f(x)[None]`.")
    lead = scores.shape[:-1]
    leaves, treedef = jax.tree_util.tree_flatten(x)
    axes = token_axes(x, token_axis)
    for leaf, ax in zip(leaves, axes):
        if leaf.shape[:ax] != lead:
            raise ValueError(
                f"occlusion needs the leading axes of the scores {scores.shape} to match the "
                f"axes before the token axis of every input leaf; got a leaf of shape "
                f"{leaf.shape} with token_axis={token_axis}.")

    def occluded_scores(pos):
        masks = position_masks(x, token_axis, pos)
        return plain_fn(_tmap(lambda xi, bi, m: jnp.where(m, bi, xi), x, baseline, masks))

    n_pos = sum(leaf.shape[ax] for leaf, ax in zip(leaves, axes))
    delta = scores[None] - chunked_map(occluded_scores, jnp.arange(n_pos),
                                       internal_batch_size)  # [N, *lead, T]
    delta = jnp.moveaxis(delta, -1, 0)  # [T, N, *lead]
    attrs, offset = [], 0
    for leaf, ax in zip(leaves, axes):
        n = leaf.shape[ax]
        d = jnp.moveaxis(delta[:, offset:offset + n], 1, 1 + len(lead))  # [T, *lead, n]
        post = leaf.shape[ax + 1:]
        d = d.reshape(d.shape + (1,) * len(post)) / math.prod(post)
        # Attributions are real numbers: a float leaf keeps its dtype, an integer or boolean
        # leaf gets the scores' float dtype (casting 400/3 to an int input's dtype gives 133).
        dtype = leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.inexact) else d.dtype
        attrs.append(jnp.broadcast_to(d, (d.shape[0],) + leaf.shape).astype(dtype))
        offset += n
    attr = jax.tree_util.tree_unflatten(treedef, attrs)
    return (attr, aux) if has_aux else attr
