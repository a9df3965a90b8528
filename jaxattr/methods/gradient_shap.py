"""Gradient SHAP (Lundberg & Lee, 2017), with Captum's estimator."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from ._common import (as_key, check_finite, count, draw_noise, fold_in, plain, resolve_baseline,
                      weighted_sum, with_aux)
from ._vjp import per_output_grads
from .needs import declare

__all__ = ["gradient_shap"]

_tmap = jax.tree_util.tree_map


@declare(baseline=True, baseline_sets=True, key=True)
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
    with per-example keys each example draws its own, as Captum does). With a set of
    baselines (a distribution, as in Captum and Inseq) each sample also draws its ``x'``
    uniformly from the set.

    Args:
      score_fn: ``x -> scores[..., T]`` (``(scores, aux)`` when ``has_aux``).
      x: array or pytree of arrays.
      baseline: like ``x`` (or one array/scalar broadcast to every leaf); ``None``: zeros.
        A set of baselines ``[n_baselines, *x.shape]`` (per leaf: one extra leading axis,
        each entry broadcast to the leaf's shape) is sampled from.
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
    key = as_key(key)
    plain_fn = plain(score_fn, has_aux)
    n = count(n_samples, "n_samples")
    baselines = baseline_set(x, baseline)
    if baselines is None:
        baseline = resolve_baseline(x, baseline)

    def sample(i):
        k = fold_in(key, i)
        noisy, alpha = draw_noise(x, k, stdevs, with_alpha=True)
        base = baseline if baselines is None else _pick(baselines, k)
        diff = _tmap(lambda xi, bi: xi - bi, noisy, base)
        point = _tmap(lambda bi, d: bi + _lead(alpha, d) * d, base, diff)
        grads = per_output_grads(plain_fn, point, output_batch_size=output_batch_size)[1]
        return _tmap(lambda g, d: g * d[None], grads, diff)

    attr = weighted_sum(sample, jnp.arange(n), jnp.full((n,), 1.0 / n), internal_batch_size)
    return with_aux(attr, score_fn, x, has_aux)


def baseline_set(x: Any, baseline: Any):
    """``baseline`` as a set of baselines (a pytree like ``x`` whose leaves have one extra
    leading axis ``[n_baselines, *leaf.shape]``), or ``None`` when it is a single baseline."""
    if baseline is None:
        return None
    x_leaves = jax.tree_util.tree_leaves(x)
    if jax.tree_util.tree_structure(baseline) == jax.tree_util.tree_structure(x):
        b_leaves = jax.tree_util.tree_leaves(baseline)
    elif len(jax.tree_util.tree_leaves(baseline)) == 1 and len(x_leaves) == 1:
        b_leaves = jax.tree_util.tree_leaves(baseline)
    else:
        return None
    ranks = [jnp.ndim(b) - jnp.ndim(xl) for b, xl in zip(b_leaves, x_leaves)]
    if not any(r == 1 for r in ranks):
        return None
    sizes = {jnp.shape(b)[0] for b, r in zip(b_leaves, ranks) if r == 1}
    if any(r != 1 for r in ranks) or len(sizes) != 1:
        raise ValueError("a set of baselines needs every leaf as [n_baselines, *x_leaf.shape] "
                         f"with one n_baselines; got leaf shapes "
                         f"{[jnp.shape(b) for b in b_leaves]} for x leaves "
                         f"{[jnp.shape(xl) for xl in x_leaves]}.")
    n_base = sizes.pop()
    if n_base < 1:
        raise ValueError("the set of baselines is empty (n_baselines = 0).")
    check_finite(b_leaves, "baseline")
    full = [jnp.broadcast_to(jnp.asarray(b, xl.dtype), (n_base,) + xl.shape)
            for b, xl in zip(b_leaves, x_leaves)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(x), full)


_PICK = 0x5EED  # fold_in data of the baseline index draw (apart from noise and alpha)


def _pick(baselines: Any, key: jax.Array) -> Any:
    """One baseline drawn uniformly from the set per sample (one per example with a batch of
    keys ``[B]``: each example draws its own, as Captum does)."""
    n_base = jax.tree_util.tree_leaves(baselines)[0].shape[0]
    if key.ndim == 0:
        j = jax.random.randint(jax.random.fold_in(key, _PICK), (), 0, n_base)
        return _tmap(lambda b: b[j], baselines)
    j = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, _PICK), (), 0, n_base))(key)
    return _tmap(lambda b: b[j, jnp.arange(key.shape[0])], baselines)


def _lead(alpha: jax.Array, d: jax.Array) -> jax.Array:
    """``alpha`` (``()`` or one per example ``[B]``) shaped to broadcast against ``d``."""
    return alpha.reshape(alpha.shape + (1,) * (d.ndim - alpha.ndim)).astype(d.dtype)
