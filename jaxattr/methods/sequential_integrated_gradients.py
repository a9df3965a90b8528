"""Sequential integrated gradients (Enguehard, 2023), vectorised over positions and steps."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._common import n_positions, plain, position_masks, resolve_baseline, weighted_sum, \
    with_aux
from ._vjp import per_output_grads
from .quadrature import quadrature as quadrature_nodes, quadrature_rule
from .needs import declare

__all__ = ["sequential_integrated_gradients"]

_tmap = jax.tree_util.tree_map


@declare(baseline=True)
def sequential_integrated_gradients(
    score_fn: Callable[..., Any],
    x: Any,
    baseline: Any = None,
    *,
    n_steps: int = 50,
    quadrature: str = "gausslegendre",
    token_axis: int = -2,
    has_aux: bool = False,
    internal_batch_size: int | None = None,
    output_batch_size: int | None = None,
    method: str | None = None,
):
    """Integrated gradients of one token position at a time, the others kept at ``x``.

    For each position ``i`` along ``token_axis``, the path ``γ_i(α)`` moves position ``i``
    from the baseline to ``x`` while every other position (in every leaf) stays at ``x``;
    position ``i``'s attribution is its integrated gradient along ``γ_i``:

        ``attr[t][..., i, ...] = (x_i − x'_i) ⊙ ∫_0^1 ∂s_t(γ_i(α))/∂x_i dα``

    so the attributions of position ``i`` sum to ``s(x) − s(x with position i at baseline)``
    (per output and per leading index), up to quadrature error. Positions are numbered across
    all leaves of a pytree ``x``; all (position, step) pairs are vmapped, not looped.

    Args:
      score_fn: ``x -> scores[..., T]`` (``(scores, aux)`` when ``has_aux``).
      x: array or pytree of arrays, each with a token axis ``token_axis``.
      baseline: like ``x`` (or one array/scalar broadcast to every leaf); ``None``: zeros.
      n_steps: quadrature nodes per position.
      quadrature: the rule, see :func:`jaxattr.methods.quadrature`.
      token_axis: the position axis of every leaf (default ``-2``: ``[..., L, H]``).
      has_aux: ``score_fn`` returns ``(scores, aux)``; ``aux`` at ``x`` is returned too.
      internal_batch_size: path points (position × step pairs, one forward and ``T``
        backward passes each) evaluated at once. ``None`` vmaps all ``L · n_steps``; an
        integer scans over chunks and bounds memory by the chunk.
      output_batch_size: bound on simultaneous backward passes per path point.
      method: deprecated spelling of ``quadrature`` (warns).

    Returns:
      Attributions ``[T, *leaf.shape]`` per leaf (and ``aux`` when ``has_aux``).
    """
    baseline = resolve_baseline(x, baseline)
    diff = _tmap(lambda a, b: a - b, x, baseline)
    plain_fn = plain(score_fn, has_aux)
    n_pos = n_positions(x, token_axis)
    alphas, weights = quadrature_nodes(
        n_steps, quadrature_rule(quadrature, method, where="sequential_integrated_gradients"))
    positions = np.repeat(np.arange(n_pos), len(alphas))
    point_alphas = np.tile(alphas, n_pos)
    point_weights = np.tile(weights, n_pos)

    def point_grads(item):
        pos, alpha = item
        masks = position_masks(x, token_axis, pos)
        # Position `pos` at baseline + α·diff (= x − (1 − α)·diff); all else exactly x.
        point = _tmap(lambda xi, d, m: xi - jnp.where(m, (1 - alpha.astype(d.dtype)) * d, 0),
                      x, diff, masks)
        grads = per_output_grads(plain_fn, point, output_batch_size=output_batch_size)[1]
        return _tmap(lambda g, m: jnp.where(m[None], g, 0), grads, masks)

    total = weighted_sum(point_grads, (jnp.asarray(positions), jnp.asarray(point_alphas)),
                         jnp.asarray(point_weights), internal_batch_size)
    attr = _tmap(lambda g, d: g * d[None], total, diff)
    return with_aux(attr, score_fn, x, has_aux)
