"""Integrated gradients (Sundararajan et al., 2017), vectorised and memory-bounded."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from ._common import plain, resolve_baseline, weighted_sum
from ._vjp import per_output_grads
from .quadrature import quadrature as quadrature_nodes, quadrature_rule
from .needs import declare

__all__ = ["integrated_gradients"]

_tmap = jax.tree_util.tree_map


@declare(baseline=True, completeness=True)
def integrated_gradients(
    score_fn: Callable[..., Any],
    x: Any,
    baseline: Any = None,
    *,
    n_steps: int = 50,
    quadrature: str = "gausslegendre",
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
    has_aux: bool = False,
    output_batch_size: int | None = None,
    method: str | None = None,
):
    """``(x − x') ⊙ ∫_0^1 ∂s(x' + α(x − x'))/∂x dα`` for every output of ``score_fn``.

    Args:
      score_fn: ``x -> scores[..., T]`` (``(scores, aux)`` when ``has_aux``).
      x: array or pytree of arrays.
      baseline: same structure as ``x`` (or one array/scalar for every leaf), broadcast to
        ``x``'s shapes; ``None`` means zeros.
      n_steps: quadrature nodes.
      quadrature: the rule, ``gausslegendre`` (default) or
        ``riemann_left|right|middle|trapezoid`` (:func:`jaxattr.methods.quadrature`).
      internal_batch_size: interpolation steps evaluated at once. ``None`` vmaps all
        ``n_steps``; an integer scans over chunks of that many steps and accumulates, so
        peak memory is bounded by the chunk, not by ``n_steps``.
      return_convergence_delta: also return ``δ[T] = Σ attributions[t] −
        Σ_{leading} (s(x)[..., t] − s(x')[..., t])`` (0 for exact integration).
      has_aux: ``score_fn`` returns ``(scores, aux)``; ``aux`` at ``x`` is returned last.
      output_batch_size: bound on simultaneous backward passes per step.
      method: deprecated spelling of ``quadrature`` (warns).

    Returns:
      ``attributions`` (``[T, *leaf.shape]`` per leaf), then ``delta`` if requested, then
      ``aux`` if ``has_aux`` — as a tuple when more than one is returned.
    """
    baseline = resolve_baseline(x, baseline)
    alphas, weights = quadrature_nodes(
        n_steps, quadrature_rule(quadrature, method, where="integrated_gradients"))
    diff = _tmap(lambda a, b: a - b, x, baseline)
    plain_fn = plain(score_fn, has_aux)

    def step_grads(alpha):
        xa = _tmap(lambda b, d: b + alpha.astype(d.dtype) * d, baseline, diff)
        return per_output_grads(plain_fn, xa, output_batch_size=output_batch_size)[1]

    total = weighted_sum(step_grads, jnp.asarray(alphas), jnp.asarray(weights),
                         internal_batch_size)
    attr = _tmap(lambda g, d: g * d[None], total, diff)
    outputs = [attr]
    if return_convergence_delta or has_aux:
        out_x = score_fn(x)
        scores_x, aux = out_x if has_aux else (out_x, None)
    if return_convergence_delta:
        outputs.append(convergence_delta(attr, scores_x, plain_fn(baseline)))
    if has_aux:
        outputs.append(aux)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def convergence_delta(attr: Any, scores_x: jax.Array, scores_baseline: jax.Array) -> jax.Array:
    """``δ[T] = Σ attr[t] − Σ_{leading} (s(x)[..., t] − s(x')[..., t])`` (Captum's sign)."""
    n_out = scores_x.shape[-1]
    change = (scores_x - scores_baseline).reshape(-1, n_out).sum(0)
    attr_sum = sum(a.reshape(n_out, -1).sum(-1) for a in jax.tree_util.tree_leaves(attr))
    return attr_sum - change
