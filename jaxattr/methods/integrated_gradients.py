"""Integrated gradients (Sundararajan et al., 2017), vectorised and memory-bounded."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._vjp import per_output_grads
from .quadrature import quadrature

__all__ = ["integrated_gradients"]

_tmap = jax.tree_util.tree_map


def integrated_gradients(
    score_fn: Callable[..., Any],
    x: Any,
    baseline: Any = None,
    *,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
    has_aux: bool = False,
    output_batch_size: int | None = None,
):
    """``(x − x') ⊙ ∫_0^1 ∂s(x' + α(x − x'))/∂x dα`` for every output of ``score_fn``.

    Args:
      score_fn: ``x -> scores[..., T]`` (``(scores, aux)`` when ``has_aux``).
      x: array or pytree of arrays.
      baseline: same structure as ``x``; ``None`` means zeros.
      n_steps: quadrature nodes.
      method: ``gausslegendre`` (default) or ``riemann_left|right|middle|trapezoid``.
      internal_batch_size: interpolation steps evaluated at once. ``None`` vmaps all
        ``n_steps``; an integer scans over chunks of that many steps and accumulates, so
        peak memory is bounded by the chunk, not by ``n_steps``.
      return_convergence_delta: also return ``δ[T] = Σ attributions[t] −
        Σ_{leading} (s(x)[..., t] − s(x')[..., t])`` (0 for exact integration).
      has_aux: ``score_fn`` returns ``(scores, aux)``; ``aux`` at ``x`` is returned last.
      output_batch_size: bound on simultaneous backward passes per step.

    Returns:
      ``attributions`` (``[T, *leaf.shape]`` per leaf), then ``delta`` if requested, then
      ``aux`` if ``has_aux`` — as a tuple when more than one is returned.
    """
    if baseline is None:
        baseline = _tmap(jnp.zeros_like, x)
    alphas, weights = quadrature(n_steps, method)
    diff = _tmap(lambda a, b: a - b, x, baseline)
    plain_fn = (lambda z: score_fn(z)[0]) if has_aux else score_fn

    def weighted_step_grads(alpha, weight):
        xa = _tmap(lambda b, d: b + alpha.astype(d.dtype) * d, baseline, diff)
        _, g, _ = per_output_grads(plain_fn, xa, output_batch_size=output_batch_size)
        return _tmap(lambda gi: gi * weight.astype(gi.dtype), g)

    if internal_batch_size is None or internal_batch_size >= len(alphas):
        per_step = jax.vmap(weighted_step_grads)(jnp.asarray(alphas), jnp.asarray(weights))
        total = _tmap(lambda g: g.sum(0), per_step)
    else:
        k = int(internal_batch_size)
        if k < 1:
            raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}.")
        n_chunks = -(-len(alphas) // k)
        pad = n_chunks * k - len(alphas)
        a = np.concatenate([alphas, np.zeros(pad)]).reshape(n_chunks, k)
        w = np.concatenate([weights, np.zeros(pad)]).reshape(n_chunks, k)

        def body(carry, chunk):
            ga = jax.vmap(weighted_step_grads)(*chunk)
            return _tmap(lambda c, g: c + g.sum(0), carry, ga), None

        init = jax.eval_shape(weighted_step_grads, jnp.float32(0), jnp.float32(0))
        init = _tmap(lambda s: jnp.zeros(s.shape, s.dtype), init)
        total, _ = jax.lax.scan(body, init, (jnp.asarray(a), jnp.asarray(w)))

    attr = _tmap(lambda g, d: g * d[None], total, diff)
    outputs = [attr]
    need_scores = return_convergence_delta or has_aux
    if need_scores:
        out_x = score_fn(x)
        scores_x, aux = out_x if has_aux else (out_x, None)
    if return_convergence_delta:
        scores_b = plain_fn(baseline)
        n_out = scores_x.shape[-1]
        lead = tuple(range(scores_x.ndim - 1))
        change = (scores_x - scores_b).sum(axis=lead) if lead else scores_x - scores_b
        attr_sum = sum(a.reshape(n_out, -1).sum(-1) for a in jax.tree_util.tree_leaves(attr))
        outputs.append(attr_sum - change)
    if has_aux:
        outputs.append(aux)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
