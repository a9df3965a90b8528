"""Per-output gradients: one forward, one VJP, vmapped over one-hot cotangents.

This is the primitive every gradient method is built on. For a score function
``score_fn(x) -> scores[..., T]`` it returns ``grads`` with shape ``[T, *x.shape]``
(for every leaf of a pytree ``x``), where ``grads[t]`` is the gradient of
``scores[..., t].sum()`` with respect to ``x``. When the leading axes of ``scores``
index independent examples (a batch), ``grads[t]`` is therefore the per-example
gradient of output ``t``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["per_output_grads"]


def _one_hot_cotangents(scores: jax.Array) -> jax.Array:
    """``[T, *scores.shape]`` cotangents, the t-th selecting output t on every leading index."""
    n_out = scores.shape[-1]
    eye = jnp.eye(n_out, dtype=scores.dtype)  # [T, T]
    return jnp.broadcast_to(eye.reshape((n_out,) + (1,) * (scores.ndim - 1) + (n_out,)),
                            (n_out,) + scores.shape)


def per_output_grads(
    score_fn: Callable[..., Any],
    x: Any,
    *,
    has_aux: bool = False,
    output_batch_size: int | None = None,
):
    """Return ``(scores, grads, aux)`` for ``score_fn`` at ``x``.

    Args:
      score_fn: ``x -> scores[..., T]`` (or ``(scores, aux)`` when ``has_aux``).
      x: array or pytree of arrays.
      has_aux: whether ``score_fn`` also returns an auxiliary pytree.
      output_batch_size: backward passes alive at once; ``None`` runs all ``T`` in one
        ``vmap``. Smaller values bound memory (``lax.map`` over chunks).

    Returns:
      ``scores[..., T]``, ``grads`` (pytree like ``x``, each leaf ``[T, *leaf.shape]``), and
      ``aux`` (``None`` unless ``has_aux``).

    A ``score_fn`` carrying a ``per_output_grads`` attribute (``x -> (scores, grads, aux)``,
    the same values by another program; the pipeline sets it for the native decoder's exact
    causal truncation) is served by it instead.
    """
    custom = getattr(score_fn, "per_output_grads", None)
    if custom is not None:
        # the score function brings its own program for the same gradients (the native
        # decoder's exact causal truncation, jaxattr.models.causal_chunks)
        scores, grads, aux = custom(x)
        return scores, grads, (aux if has_aux else None)
    if has_aux:
        scores, vjp_fn, aux = jax.vjp(score_fn, x, has_aux=True)
    else:
        scores, vjp_fn = jax.vjp(score_fn, x)
        aux = None
    if scores.ndim == 0:
        raise ValueError(
            "score_fn must return scores with a trailing output axis [..., T]; got a scalar. "
            "Wrap it as `lambda x: f(x)[None]` to attribute a single output.")
    cotangents = _one_hot_cotangents(scores)
    pull = lambda ct: vjp_fn(ct)[0]
    if output_batch_size is None or output_batch_size >= scores.shape[-1]:
        grads = jax.vmap(pull)(cotangents)
    else:
        grads = jax.lax.map(pull, cotangents, batch_size=int(output_batch_size))
    return scores, grads, aux
