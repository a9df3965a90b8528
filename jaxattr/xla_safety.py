"""XLA options jaxattr compiles with so that its numbers are right on every backend.

**The defect.** XLA's CPU backend in jaxlib 0.10 fuses elementwise chains with reductions
into YNNPACK kernels (the ``xla_cpu_experimental_ynn_fusion_type`` option). For some shapes
these fused kernels compute wrong values: found on integrated gradients, where the pipeline
vmaps the interpolation steps around a vmapped backward pass. A 2-layer decoder with
RMSNorm (or LayerNorm) gave IG attributions 0.3–0.75 (relative, max-abs) away from the same
program looped over the steps, for 4–32 steps, while 2, 3, 50 and 64 steps were right; a
10-line pure-JAX function (``x + rmsnorm(x)`` twice, the gradient of each of 16 outputs,
vmapped over 8 scalings of the input, under ``jax.jit``) reproduces it without jaxattr.
``tests/test_xla_safety.py`` keeps that reproduction. Turning the YNNPACK fusions off (the
option set to the empty string) gives the looped values to 1e-6.

**What jaxattr does.**

* Every program jaxattr compiles goes through :func:`safe_jit`, ``jax.jit`` with
  :func:`compiler_options` added: the YNNPACK fusions off where this jaxlib knows the option
  (decided once, on first use, by compiling an empty program with it). This holds whatever
  the process did before importing jaxattr.
* When jaxattr is imported before JAX has started a backend, it also appends
  ``--xla_cpu_experimental_ynn_fusion_type=`` to ``XLA_FLAGS`` (only for the jaxlib
  versions in :data:`ENV_FLAG_JAXLIB`, where the flag is known to exist: an unknown flag
  there stops XLA), so researchers' own ``jax.jit`` programs around the functional API
  (``jaxattr.integrated_gradients(score_fn, x)`` inside their jit) are right too. A value
  already in ``XLA_FLAGS`` for that flag is left as it is. When the backend had started
  before, a warning says to set the flag before JAX starts.

Eager code is not affected (each operation compiles on its own, no fusion).
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Callable, Optional

import jax

__all__ = ["YNN_OPTION", "ENV_FLAG_JAXLIB", "compiler_options", "safe_jit",
           "install_env_flag"]

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
#: jaxlib minor versions (major, minor) whose XLA is known to have the option.
ENV_FLAG_JAXLIB = ((0, 10),)
_FLAG = f"--{YNN_OPTION}="


def _enabled() -> bool:
    """``JAXATTR_XLA_SAFETY=0`` turns this module off (env flag and compiler options)."""
    return os.environ.get("JAXATTR_XLA_SAFETY", "1") != "0"


def _jaxlib_version() -> tuple:
    try:
        from jax._src.lib import version as v  # (major, minor, patch)
        return tuple(int(x) for x in v[:2])
    except Exception:  # pragma: no cover - any unusual jaxlib: no env flag
        return (0, 0)


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # pragma: no cover
        return True


def install_env_flag() -> str:
    """Append ``--xla_cpu_experimental_ynn_fusion_type=`` to ``XLA_FLAGS`` when that is safe
    and useful (see the module docstring).

    Returns:
      What happened: ``"set"``, ``"user"`` (the flag was already in ``XLA_FLAGS``),
      ``"unknown-jaxlib"`` (not a version in :data:`ENV_FLAG_JAXLIB`), ``"too-late"`` (the
      backend had started; warns) or ``"off"`` (``JAXATTR_XLA_SAFETY=0``).
    """
    if not _enabled():
        return "off"
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_OPTION in flags:
        return "user"
    if _jaxlib_version() not in ENV_FLAG_JAXLIB:
        return "unknown-jaxlib"
    if _backend_started():
        if jax.default_backend() == "cpu":
            warnings.warn(
                "JAX started its CPU backend before jaxattr was imported, so XLA's YNNPACK "
                "fusions, which compute wrong values for some vmapped gradient programs "
                "(see jaxattr.xla_safety), stay on for programs jaxattr does not compile "
                "itself (your own jax.jit around jaxattr's functional API). jaxattr's own "
                "programs are compiled without them. To cover everything, import jaxattr "
                f"before running any JAX computation, or start Python with XLA_FLAGS={_FLAG}",
                stacklevel=3)
        return "too-late"
    os.environ["XLA_FLAGS"] = (flags + " " + _FLAG).strip()
    return "set"


@functools.lru_cache(maxsize=None)
def _supported_options() -> tuple:
    if not _enabled():
        return ()
    opts = {YNN_OPTION: ""}
    try:
        jax.jit(lambda x: x + 1, compiler_options=opts).lower(0.0).compile()
    except Exception:  # this jaxlib does not know the option: nothing to turn off
        return ()
    return tuple(opts.items())


def compiler_options(extra: Optional[dict] = None) -> dict:
    """The options jaxattr compiles with (YNNPACK fusions off where known), plus ``extra``."""
    out = dict(_supported_options())
    out.update(extra or {})
    return out


try:  # resolved once: _SafeJit asks on every call
    from jax._src.core import trace_state_clean as _trace_state_clean
except Exception:  # pragma: no cover - another jax: treat every call as top level
    _trace_state_clean = None


def _tracing() -> bool:
    """Whether a JAX trace is in progress (an outer ``jit``, ``vmap``, ``grad``…)."""
    return _trace_state_clean is not None and not _trace_state_clean()


class _SafeJit:
    """``jax.jit(fn, compiler_options=compiler_options(...), **kwargs)``, built on first use
    (so importing jaxattr starts no backend). Called inside another trace (an outer
    ``jax.jit``, which alone may carry compiler options), the same function is jitted
    without options: the outer program's options govern. Attribute access (``lower``,
    ``clear_cache``…) goes to the top-level ``jax.jit`` object."""

    def __init__(self, fn: Callable, kwargs: dict):
        self._fn, self._kwargs = fn, kwargs
        self._jitted = self._nested = None
        functools.update_wrapper(self, fn)

    def _get(self):
        if self._jitted is None:
            kw = dict(self._kwargs)
            kw["compiler_options"] = compiler_options(kw.pop("compiler_options", None))
            self._jitted = jax.jit(self._fn, **kw)
        return self._jitted

    def _get_nested(self):
        if self._nested is None:
            kw = dict(self._kwargs)
            kw.pop("compiler_options", None)
            self._nested = jax.jit(self._fn, **kw)
        return self._nested

    def __call__(self, *args, **kwargs):
        fn = self._get_nested() if _tracing() else self._get()
        return fn(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._get(), name)


def safe_jit(fn: Optional[Callable] = None, **kwargs: Any):
    """``jax.jit`` with jaxattr's :func:`compiler_options` (usable as ``@safe_jit``,
    ``@functools.partial(safe_jit, static_argnames=...)`` or ``safe_jit(fn, ...)``)."""
    if fn is None:
        return lambda f: _SafeJit(f, kwargs)
    return _SafeJit(fn, kwargs)
