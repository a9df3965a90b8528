"""Noise tunnel: SmoothGrad, SmoothGrad², VarGrad around any method (as Captum's NoiseTunnel).

``smoothgrad(method)`` returns a *method* with the same contract, so it can be used wherever a
method is expected, including ``model.attribute(method=smoothgrad(saliency))``::

    sg = smoothgrad(saliency, n_samples=20, stdevs=0.05)
    attr = sg(score_fn, x)                    # [T, *x.shape]
    attr = sg(score_fn, x, n_samples=50)      # the noise settings can be overridden per call

Noise ``N(0, stdevs²)`` (absolute standard deviation, Captum's ``stdevs``) is added to ``x``
only, never to a baseline. Samples are vmapped (or scanned in chunks of
``nt_samples_batch_size``); results are deterministic given ``key`` (a ``jax.random`` key or
an integer seed, which keeps the settings hashable for the jitted pipeline) and, for
vmap-invariant key implementations (threefry, the default; not ``rbg``), independent of
``nt_samples_batch_size``. Sample ``k`` uses ``jax.random.fold_in(key, k)``.

``key`` may also be a batch of keys ``[B]``, one per example along ``x``'s leading axis: each
example's noise then comes from its own key only, so an example's result does not depend on
the other rows of its batch. The model pipeline passes keys folded with each example's
identity (a hash of its tokens), which makes noisy methods batch- and padding-invariant.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ._common import (as_key, count, draw_noise, fold_in, is_static_zero, plain, weighted_sum,
                      with_aux)
from .needs import needs_of

__all__ = ["smoothgrad", "smoothgrad_sq", "vargrad", "noise_tunnel", "NOISE_TUNNEL_TYPES"]

_tmap = jax.tree_util.tree_map

NOISE_TUNNEL_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
_NT_PARAMS = ("n_samples", "stdevs", "key", "nt_samples_batch_size")


def noise_tunnel(
    method: Callable[..., Any],
    nt_type: str = "smoothgrad",
    *,
    n_samples: int = 10,
    stdevs: Any = 0.1,
    key: Any = 0,
    nt_samples_batch_size: int | None = None,
) -> Callable[..., Any]:
    """Wrap ``method`` so that it is evaluated on ``n_samples`` noisy copies of ``x``.

    With ``a_k = method(score_fn, x + ε_k, ...)``:

    - ``smoothgrad``: ``mean_k a_k`` (Smilkov et al., 2017);
    - ``smoothgrad_sq``: ``mean_k a_k²``;
    - ``vargrad``: ``mean_k a_k² − (mean_k a_k)²`` (Adebayo et al., 2018), clipped at 0.

    Args:
      method: a method ``method(score_fn, x, [baseline,] *, has_aux, ...)``, or its name, returning
        attributions only (extra outputs such as a convergence delta are reduced the same way).
      nt_type: one of ``smoothgrad``, ``smoothgrad_sq``, ``vargrad``.
      n_samples, stdevs, key, nt_samples_batch_size: defaults of the returned method, which
        also accepts them as keywords. ``stdevs`` is one number or one per leaf of ``x``.

    Returns:
      A method that takes ``method``'s keywords (a ``baseline`` is passed through) plus the
      four noise settings. Its declaration (``.needs``, :class:`~jaxattr.methods.needs.MethodNeeds`)
      is ``method``'s with the noise settings added as options, a ``key`` needed, and no
      completeness (an average over noisy inputs does not add up to ``s(x) - s(baseline)``,
      so no ``deltas`` are recorded). ``aux`` (``has_aux=True``) is computed at the clean ``x``.
    """
    if isinstance(method, str):   # smoothgrad("saliency")
        from . import get_method
        method = get_method(method)
    cache_key = (method, nt_type, n_samples, stdevs, key, nt_samples_batch_size)
    try:
        return _WRAPPED[cache_key]
    except (KeyError, TypeError):  # TypeError: unhashable settings (e.g. a key array)
        pass
    wrapped = _make(method, nt_type, n_samples, stdevs, key, nt_samples_batch_size)
    try:
        _WRAPPED[cache_key] = wrapped
    except TypeError:
        pass
    return wrapped


# The same wrapping returns the same function object, so the jitted model pipeline (which
# treats the method as a static argument) does not recompile when it is rebuilt per call.
_WRAPPED: dict = {}


def _make(method, nt_type, n_samples, stdevs, key, nt_samples_batch_size):
    if nt_type not in NOISE_TUNNEL_TYPES:
        raise ValueError(f"Unknown noise tunnel type {nt_type!r}; choose one of "
                         f"{NOISE_TUNNEL_TYPES}.")
    base = needs_of(method)
    clash = sorted(set(_NT_PARAMS) & base.options)
    if clash:
        raise ValueError(f"{getattr(method, '__name__', method)!r} already takes {clash}; a "
                         "noise tunnel around it would be ambiguous.")
    defaults = dict(n_samples=n_samples, stdevs=stdevs, key=key,
                    nt_samples_batch_size=nt_samples_batch_size)

    def wrapped(score_fn, x, *args, has_aux=False, n_samples=defaults["n_samples"],
                stdevs=defaults["stdevs"], key=defaults["key"],
                nt_samples_batch_size=defaults["nt_samples_batch_size"], **kwargs):
        plain_fn = plain(score_fn, has_aux)
        key = as_key(key)
        n = count(n_samples, "n_samples")

        def sample(i):
            noisy = x if is_static_zero(stdevs) else draw_noise(
                x, fold_in(key, i), stdevs)[0]
            a = method(plain_fn, noisy, *args, **kwargs)
            if nt_type == "smoothgrad":
                return a
            sq = _tmap(jnp.square, a)
            return sq if nt_type == "smoothgrad_sq" else (a, sq)

        mean = weighted_sum(sample, jnp.arange(n), jnp.full((n,), 1.0 / n),
                            nt_samples_batch_size)
        if nt_type == "vargrad":
            mean = _tmap(lambda m, m2: jnp.maximum(m2 - jnp.square(m), 0), *mean)
        return with_aux(mean, score_fn, x, has_aux)

    # Declare what the wrapper needs (no forged signature): the base method's needs, a key
    # (the noise draws), the noise settings as options, and no completeness: the mean
    # attribution over noisy inputs does not add up to ``s(x) - s(baseline)`` at the clean
    # input, so a completeness delta would be meaningless.
    wrapped.needs = dataclasses.replace(base, completeness=False, key=True,
                                        key_default=defaults["key"],
                                        options=base.options | frozenset(_NT_PARAMS))
    base_name = getattr(method, "__name__", type(method).__name__)
    wrapped.__name__ = wrapped.__qualname__ = f"{nt_type}_{base_name}"
    wrapped.__doc__ = (f"{nt_type} noise tunnel around {base_name} "
                       f"(defaults {defaults}).\n\n{noise_tunnel.__doc__}")
    wrapped.base_method = method
    wrapped.nt_type = nt_type
    return wrapped


def smoothgrad(method: Callable[..., Any], *, n_samples: int = 10, stdevs: Any = 0.1,
               key: Any = 0, nt_samples_batch_size: int | None = None) -> Callable[..., Any]:
    """SmoothGrad around ``method``: the mean attribution over noisy inputs.

    See :func:`noise_tunnel`. ``smoothgrad(saliency)`` is itself a method.
    """
    return noise_tunnel(method, "smoothgrad", n_samples=n_samples, stdevs=stdevs, key=key,
                        nt_samples_batch_size=nt_samples_batch_size)


def smoothgrad_sq(method: Callable[..., Any], *, n_samples: int = 10, stdevs: Any = 0.1,
                  key: Any = 0, nt_samples_batch_size: int | None = None) -> Callable[..., Any]:
    """SmoothGrad²: the mean squared attribution over noisy inputs (see :func:`noise_tunnel`)."""
    return noise_tunnel(method, "smoothgrad_sq", n_samples=n_samples, stdevs=stdevs, key=key,
                        nt_samples_batch_size=nt_samples_batch_size)


def vargrad(method: Callable[..., Any], *, n_samples: int = 10, stdevs: Any = 0.1,
            key: Any = 0, nt_samples_batch_size: int | None = None) -> Callable[..., Any]:
    """VarGrad: the variance of the attribution over noisy inputs (see :func:`noise_tunnel`)."""
    return noise_tunnel(method, "vargrad", n_samples=n_samples, stdevs=stdevs, key=key,
                        nt_samples_batch_size=nt_samples_batch_size)
