"""Compatibility fixes for transformers 4.x Flax code running on current JAX.

transformers' Flax models are frozen (removed in v5) while JAX keeps moving. Every fix lives
here, is applied idempotently by :func:`apply`, and is covered by ``tests/test_compat.py``.

Fixes:
- ``jnp.clip(x, a_min=..., a_max=...)``: JAX removed the ``a_min``/``a_max`` keywords (now
  ``min``/``max``). Flax T5/mT5/LongT5 call the old form in their relative position buckets.
  Those modules get a ``jnp`` namespace whose ``clip`` accepts both spellings.
- Attaching parameters to a model built with ``_do_init=False``: its ``params`` setter refuses
  (``_is_initialized`` is False), so :func:`attach_params` marks it initialised first; used to
  load PyTorch weights without transformers' random initialisation
  (:func:`jaxattr.loading.load_pt_without_init`).
- transformers 4.x warns on every run that its Flax classes are deprecated; jaxattr pins
  ``transformers<5`` for them, so that warning is not the user's business.
  :func:`silence_flax_deprecation` drops exactly that message (every other transformers
  warning still shows); applied when jaxattr is imported.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import types

import jax.numpy as jnp

__all__ = ["apply", "jnp_with_legacy_clip", "attach_params", "PATCHED_MODULES",
           "silence_flax_deprecation", "FLAX_DEPRECATION"]

FLAX_DEPRECATION = "TensorFlow and JAX classes are deprecated"
# The transformers modules that emit it for Flax models and their tokenizers.
_DEPRECATION_LOGGERS = ("transformers.modeling_flax_utils", "transformers.tokenization_utils_base",
                        "transformers.feature_extraction_utils")


def _not_flax_deprecation(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(FLAX_DEPRECATION)


def silence_flax_deprecation() -> None:
    """Drop transformers' "TensorFlow and JAX classes are deprecated" warning (only that
    message, only on the loggers that emit it); idempotent."""
    for name in _DEPRECATION_LOGGERS:
        log = logging.getLogger(name)
        if _not_flax_deprecation not in log.filters:
            log.addFilter(_not_flax_deprecation)

PATCHED_MODULES = (
    "transformers.models.t5.modeling_flax_t5",
    "transformers.models.longt5.modeling_flax_longt5",
)
# Which of them each model type runs (mT5's Flax classes reuse the T5 module's code).
_MODULES_BY_TYPE = {"t5": PATCHED_MODULES[:1], "mt5": PATCHED_MODULES[:1],
                    "longt5": PATCHED_MODULES[1:]}


def attach_params(model, params) -> None:
    """Give a Flax ``PreTrainedModel`` built with ``_do_init=False`` its parameters, as if it
    had been initialised (the setter still checks that every required parameter is there)."""
    model._is_initialized = True
    model.params = params


def _clip(a, a_min=None, a_max=None, *, min=None, max=None, **kwargs):  # noqa: A002
    lo = a_min if min is None else min
    hi = a_max if max is None else max
    return jnp.clip(a, lo, hi, **kwargs)


def jnp_with_legacy_clip() -> types.ModuleType:
    """A module proxy of ``jax.numpy`` whose ``clip`` also takes ``a_min``/``a_max``."""
    proxy = types.ModuleType("jax.numpy")
    proxy.__dict__.update({k: getattr(jnp, k) for k in dir(jnp) if not k.startswith("__")})
    proxy.clip = _clip
    proxy._jaxattr_compat = True
    return proxy


def _clip_needs_fix() -> bool:
    return "a_max" not in inspect.signature(jnp.clip).parameters


def apply(model_type: str | None = None) -> None:
    """Apply the fixes; safe to call repeatedly.

    Args:
      model_type: a config's ``model_type``: fix only the modules that type runs (none for
        most types), so loading GPT-2 does not import the T5 code. ``None``: every fix.
    """
    if not _clip_needs_fix():
        return
    names = PATCHED_MODULES if model_type is None else _MODULES_BY_TYPE.get(model_type, ())
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if not getattr(mod.jnp, "_jaxattr_compat", False):
            mod.jnp = jnp_with_legacy_clip()
