"""Gradient SHAP (Lundberg & Lee, 2017), with Captum's estimator."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from ._common import (as_key, count, draw_noise, fold_in, plain, resolve_baseline, weighted_sum,
                      with_aux)
from ._vjp import per_output_grads

__all__ = ["gradient_shap"]

_tmap = jax.tree_util.tree_map


def gradient_shap(
    score_fn: Callable[..., Any],
    x: Any,
    baseline: Any = None,
    *,
    n_samples: int = 5,
    stdevs: Any = 0.0,
    key: Any = 0,
    has_aux: bool = False,
    internal_batch_size: int | None = None,
    output_batch_size: int | None = None,
):
    """Expected gradients between a baseline and (noisy) inputs, as Captum's ``GradientShap``.

    For ``k = 1..n_samples``: ``x̃_k = x + ε_k`` with ``ε_k ~ N(0, stdevs²)`` elementwise,
    ``α_k ~ U(0, 1)``, and the attribution is

        ``(1/n) Σ_k (x̃_k − x') ⊙ ∂s(x' + α_k (x̃_k − x'))/∂x``

    i.e. a Monte-Carlo estimate of integrated gradients on noisy inputs. With ``stdevs=0`` it
    converges to integrated gradients as ``n_samples`` grows. One ``α_k`` is drawn per sample
    and shared by every leaf (and, with a single ``key``, by every leading index of ``x``;
    with per-example keys each example draws its own, as Captum does). A single baseline is used (Captum samples one
    from a set of baselines per draw; pass that set's mean or call once per baseline).

    Args:
      score_fn: ``x -> scores[..., T]`` (``(scores, aux)`` when ``has_aux``).
      x: array or pytree of arrays.
      baseline: like ``x`` (or one array/scalar broadcast to every leaf); ``None``: zeros.
      n_samples: Monte-Carlo samples.
      stdevs: absolute standard deviation of the input noise: one number, or one per leaf.
      key: ``jax.random`` key or an integer seed (``jax.random.key(seed)``), or a batch of
        keys ``[B]``, one per example along ``x``'s leading axis (each example then draws its
        noise and ``α_k`` from its own key: batch-invariant results). The result is
        deterministic given ``key`` and the input shapes, and independent of
        ``internal_batch_size`` for vmap-invariant key implementations (threefry, the
        default; not ``rbg``).
      has_aux: ``score_fn`` returns ``(scores, aux)``; ``aux`` at ``x`` is returned too.
      internal_batch_size: samples evaluated at once (``None``: all, vmapped); smaller
        values scan over chunks and bound memory.
      output_batch_size: bound on simultaneous backward passes per sample.

    Returns:
      Attributions ``[T, *leaf.shape]`` per leaf (and ``aux`` when ``has_aux``).
    """
    baseline = resolve_baseline(x, baseline)
    key = as_key(key)
    plain_fn = plain(score_fn, has_aux)
    n = count(n_samples, "n_samples")

    def sample(i):
        noisy, alpha = draw_noise(x, fold_in(key, i), stdevs, with_alpha=True)
        diff = _tmap(lambda xi, bi: xi - bi, noisy, baseline)
        point = _tmap(lambda bi, d: bi + _lead(alpha, d) * d, baseline, diff)
        grads = per_output_grads(plain_fn, point, output_batch_size=output_batch_size)[1]
        return _tmap(lambda g, d: g * d[None], grads, diff)

    attr = weighted_sum(sample, jnp.arange(n), jnp.full((n,), 1.0 / n), internal_batch_size)
    return with_aux(attr, score_fn, x, has_aux)


def _lead(alpha: jax.Array, d: jax.Array) -> jax.Array:
    """``alpha`` (``()`` or one per example ``[B]``) shaped to broadcast against ``d``."""
    return alpha.reshape(alpha.shape + (1,) * (d.ndim - alpha.ndim)).astype(d.dtype)
