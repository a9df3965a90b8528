"""Step-separable scores: a cheap backward pass through the language-model head.

Most targets score step ``t`` from the logits of step ``t`` only, and the logits of step ``t``
come from the hidden state at one position only. So ``scores[b, t]`` depends on the gathered
hidden states ``h[B, T, H]`` through ``h[b, t]`` alone, and its gradient with respect to ``h``
is zero everywhere but row ``t``, where it is ``g[b, t] = ∂scores[b, t] / ∂h[b, t]``. One
backward pass with an all-ones cotangent yields every ``g[b, t]`` at once.

:func:`step_separable` wraps such a function in a ``jax.custom_vjp`` whose backward pass maps a
cotangent ``ct[B, T]`` to ``ct[..., None] * g``: an elementwise product instead of a backward
pass through the vocabulary-sized head. When a method vmaps the VJP over ``T`` one-hot
cotangents (:func:`jaxattr.methods.per_output_grads`), the head's backward runs once instead of
``T`` times, and the ``[T, B, T, V]`` logits cotangent is never built. Values and first-order
gradients are exactly those of the unwrapped function; the wrapped function stays
differentiable again (the backward rule is ordinary JAX code), e.g. for the gradient of an
attribution with respect to model parameters.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["step_separable", "is_separable", "separable"]


def separable(fn: Callable) -> Callable:
    """Mark a target ``fn(logits[B, T, V], batch, **kw) -> scores[B, T]`` as step-separable:
    ``scores[:, t]`` reads ``logits[:, t]`` and constants only (not other steps' logits).

    The pipeline then back-propagates through the language-model head once instead of once
    per step (see :func:`step_separable`). All built-in targets are separable. Marking a
    target that is not makes its gradients wrong, so only mark functions that score each step
    from its own logits.
    """
    fn.separable = True
    return fn


def is_separable(fn: Callable) -> bool:
    """Whether a target declared itself step-separable (:func:`separable`)."""
    return bool(getattr(fn, "separable", False))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _apply(f, h, consts):
    return f(h, consts)


def _fwd(f, h, consts):
    scores, vjp_fn = jax.vjp(f, h, consts)
    (g, _) = vjp_fn(jnp.ones_like(scores))  # g[b, t] = ∂scores[b, t] / ∂h[b, t]
    return scores, (g, vjp_fn)


def _bwd(f, res, ct):
    g, vjp_fn = res
    # The constants' cotangent needs the full backward pass; XLA removes it when (as in
    # attribution) only the hidden states are differentiated.
    _, ct_consts = vjp_fn(ct)
    ct_h = ct.reshape(ct.shape + (1,) * (g.ndim - ct.ndim)).astype(g.dtype) * g
    return ct_h, ct_consts


_apply.defvjp(_fwd, _bwd)


def step_separable(f: Callable[[jax.Array, Any], jax.Array], h: jax.Array, consts: Any = ()):
    """``f(h, consts)`` with a cheap VJP in ``h``, for step-separable ``f``.

    Args:
      f: ``(h[B, T, ...], consts) -> scores[B, T]`` where ``scores[b, t]`` depends on ``h``
        only through ``h[b, t]``. It must not close over traced arrays: pass them in
        ``consts`` (any pytree; differentiated normally).
      h: ``[B, T, ...]`` the per-step inputs (hidden states at the scored positions).
      consts: pytree of the other inputs (head weights, token ids, contrast logits, ...).

    Returns:
      ``scores[B, T]``, equal to ``f(h, consts)``.
    """
    return _apply(f, h, consts)
