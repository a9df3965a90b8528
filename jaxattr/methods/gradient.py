"""Single-gradient methods: saliency and input × gradient."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from ._vjp import per_output_grads
from .needs import declare

__all__ = ["saliency", "input_x_gradient"]


@declare()
def saliency(
    score_fn: Callable[..., Any],
    x: Any,
    *,
    abs: bool = True,  # noqa: A002 - the name is the public contract (Inseq/Captum use it too)
    has_aux: bool = False,
    output_batch_size: int | None = None,
):
    """Gradient of each output with respect to ``x`` (Simonyan et al., 2014).

    Args:
      score_fn: ``x -> scores[..., T]``; any JAX-traceable function.
      x: array or pytree of arrays.
      abs: return ``|∂s/∂x|`` (Inseq's convention) instead of the signed gradient.
      has_aux: ``score_fn`` returns ``(scores, aux)``; then ``(attributions, aux)`` is returned.
      output_batch_size: bound on simultaneous backward passes (memory), see
        :func:`jaxattr.methods.per_output_grads`.

    Returns:
      Attributions shaped like ``x`` with a leading output axis: ``[T, *x.shape]`` per leaf.
    """
    _, grads, aux = per_output_grads(score_fn, x, has_aux=has_aux,
                                     output_batch_size=output_batch_size)
    if abs:
        grads = jax.tree_util.tree_map(jnp.abs, grads)
    return (grads, aux) if has_aux else grads


@declare()
def input_x_gradient(
    score_fn: Callable[..., Any],
    x: Any,
    *,
    has_aux: bool = False,
    output_batch_size: int | None = None,
):
    """``x ⊙ ∂s/∂x`` for each output (Shrikumar et al., 2016).

    Returns ``[T, *x.shape]`` per leaf of ``x`` (and ``aux`` when ``has_aux``).
    """
    _, grads, aux = per_output_grads(score_fn, x, has_aux=has_aux,
                                     output_batch_size=output_batch_size)
    attr = jax.tree_util.tree_map(lambda g, xi: g * xi[None], grads, x)
    return (attr, aux) if has_aux else attr
