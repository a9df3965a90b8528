"""How hard XLA optimises jaxattr's compiled programs for a given model.

On the CPU, compiling an attribution program for a tiny model (the bundled ``toy-*`` models,
the tests' random models) takes seconds while running it takes a fraction of a second. For
one interactive run, XLA's backend optimisation passes cost more than they save. Measured on
the README's first command (``toy-recall``, integrated gradients with 100 steps, one
sequence): with XLA's backend optimisation level 0 the attribution program compiles in half
the CPU time (3.95 s -> 2.01 s) and runs about 1.4x slower (0.45 s -> 0.65 s) — a win for one
call, a loss for a dataset of many batches. Results are the same programs, so the numbers
agree to float rounding (the test suite runs every model at level 0).

The policy is jaxattr's own setting (it never touches ``jax.config`` or ``XLA_FLAGS``):

- ``"full"`` (default in Python): always XLA's full optimisation;
- ``"auto"``: fast compilation for small models (fewer than :data:`SMALL_MODEL_PARAMS`
  parameters) on the CPU, full otherwise — what ``jaxattr attribute`` uses (its
  ``--compile-effort`` option), where a single cold call is the whole run;
- ``"fast"``: fast compilation on the CPU whatever the model size.

Other platforms always get full optimisation. Choose the policy with
:func:`set_compile_effort` or the environment variable ``JAXATTR_COMPILE_EFFORT`` (read when
jaxattr is imported).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import jax
from .xla_safety import safe_jit

__all__ = ["SMALL_MODEL_PARAMS", "EFFORTS", "set_compile_effort", "get_compile_effort",
           "compile_effort", "fast_compile_applies", "EffortJit"]

SMALL_MODEL_PARAMS = 20_000_000
EFFORTS = ("auto", "full", "fast")
_FAST_OPTIONS = {"xla_backend_optimization_level": 0}


def _validated(effort: Any, where: str) -> str:
    if effort not in EFFORTS:
        raise ValueError(f"{where} must be one of {EFFORTS}, got {effort!r}: 'auto' compiles "
                         f"small models (< {SMALL_MODEL_PARAMS:,} parameters) on the CPU with "
                         "XLA's backend optimisation off, 'full' never does, 'fast' always does.")
    return effort


_effort = _validated(os.environ.get("JAXATTR_COMPILE_EFFORT", "full"),
                     "the environment variable JAXATTR_COMPILE_EFFORT")


def set_compile_effort(effort: str) -> None:
    """Choose how hard XLA optimises jaxattr's programs: ``"auto"`` | ``"full"`` | ``"fast"``
    (see the module docstring). Programs already compiled keep their optimisation."""
    global _effort
    _effort = _validated(effort, "effort")


def get_compile_effort() -> str:
    """The current policy: ``"auto"``, ``"full"`` or ``"fast"``."""
    return _effort


@contextlib.contextmanager
def compile_effort(effort: str) -> Iterator[None]:
    """Use ``effort`` inside a ``with`` block, then restore the previous policy."""
    previous = _effort
    set_compile_effort(effort)
    try:
        yield
    finally:
        set_compile_effort(previous)


def _n_params(params: Any) -> int:
    return sum(int(getattr(x, "size", 0)) for x in jax.tree_util.tree_leaves(params))


def _on_cpu(params: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(params)
    devices = getattr(leaves[0], "devices", None) if leaves else None
    if callable(devices):
        try:
            return all(d.platform == "cpu" for d in devices())
        except Exception:  # a tracer or an abstract value: decide by the default backend
            pass
    return jax.default_backend() == "cpu"


def fast_compile_applies(params: Any) -> bool:
    """Whether a program over ``params`` (a pytree of arrays) is compiled with XLA's backend
    optimisation off under the current policy."""
    if _effort == "full" or not _on_cpu(params):
        return False
    return _effort == "fast" or _n_params(params) < SMALL_MODEL_PARAMS


class EffortJit:
    """Two ``jax.jit`` wrappers of one function, full and fast; :meth:`pick` chooses by the
    model's parameters. Each keeps its own compilation cache, so switching never recompiles
    what the other has compiled."""

    def __init__(self, fn: Callable, **jit_kwargs: Any):
        self.full = safe_jit(fn, **jit_kwargs)
        self.fast = safe_jit(fn, compiler_options=_FAST_OPTIONS, **jit_kwargs)

    def pick(self, params: Any) -> Callable:
        """The wrapper for a program over ``params``."""
        return self.fast if fast_compile_applies(params) else self.full
