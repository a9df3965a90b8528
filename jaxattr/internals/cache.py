"""Activations of a run, as a frozen pytree, and the jitted forward that fills it.

:func:`run_sites` is the pure program behind ``model.run_with_cache`` and
``model.run_with_patches``: one traced forward of a backend (:class:`ModelFunctions`) that
captures, patches and adds deltas at many sites. :class:`ActivationCache` holds what it
captured, right-padded, with the masks and token ids needed to read it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import struct

from ..xla_safety import safe_jit
from .sites import SiteError, parse_site, resolve_sites

__all__ = ["ActivationCache", "run_sites"]


@struct.dataclass
class ActivationCache:
    """Captured site values of one run (a ``flax.struct`` pytree: jit / vmap / device_get
    work on it; it is frozen).

    Attributes:
      values: ``{site name: array}``; ``[B, L, ...]`` along the target (decoder-only: the
        whole text) or, for ``encoder.`` sites, ``[B, S, ...]`` along the source; rows are
        right-padded (attention patterns ``[B, heads, L, L]``).
      tokens, mask: ``[B, L]`` token ids and 1/0 validity of the target / decoder side.
      source_tokens, source_mask: ``[B, S]`` of the encoder side (encoder-decoder), else ``None``.
    """
    values: dict
    tokens: jax.Array
    mask: jax.Array
    source_tokens: Optional[jax.Array] = None
    source_mask: Optional[jax.Array] = None

    def __getitem__(self, name: str) -> jax.Array:
        try:
            return self.values[name]
        except KeyError:
            raise SiteError(f"{name!r} was not captured; this cache holds "
                            f"{sorted(self.values)} (pass sites=... to capture more).") from None

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def keys(self):
        """The captured site names (a dict pytree: in sorted order)."""
        return self.values.keys()

    def mask_of(self, name: str) -> jax.Array:
        """``[B, L]`` validity of the token axis of site ``name`` (source or target)."""
        stack = parse_site(name).stack
        return self.source_mask if stack == "encoder" else self.mask


def _as_patch(value) -> Callable:
    return value if callable(value) else (lambda _old, v=value: jnp.asarray(v))


def _run(model, target_ids, target_mask, source_ids, source_mask, patch_values, delta, *,
         capture: tuple, patch_fns: tuple):
    patch = dict(patch_fns)
    patch.update({k: _as_patch(v) for k, v in patch_values.items()})
    out = model.forward(target_ids=target_ids, target_mask=target_mask, source_ids=source_ids,
                        source_mask=source_mask, capture=capture, patch=patch, delta=delta)
    return out["logits"], out["captured"]


_run_jit = safe_jit(_run, static_argnames=("capture", "patch_fns"))


def run_sites(model: Any, *, target_ids: jax.Array, target_mask: jax.Array,
              source_ids: Optional[jax.Array] = None, source_mask: Optional[jax.Array] = None,
              capture: tuple = (), patch: Optional[Mapping[str, Any]] = None,
              delta: Optional[Mapping[str, jax.Array]] = None, jit: bool = True):
    """One forward with sites: ``(logits [B, L, V], ActivationCache)``.

    Args:
      model: a backend (:class:`~jaxattr.internals.ModelFunctions`).
      target_ids, target_mask, source_ids, source_mask: right-padded ``[B, L]`` arrays.
      capture: resolved site names to return.
      patch: ``{site or glob: fn or array}`` (globs expanded here, so every backend sees
        names); an array replaces the site's value (traced, so
        new values never recompile), a function ``value -> value`` is traced in (a new
        function object compiles anew).
      delta: ``{site: array}`` added to the site's value.
      jit: compile (default) or run eagerly.
    """
    available = model.sites()
    patch = {name: value for key, value in (patch or {}).items()
             for name in resolve_sites(key, available, allow_raw=True, patchable=True)}
    fns = tuple(sorted(((k, v) for k, v in patch.items() if callable(v)), key=lambda kv: kv[0]))
    values = {k: v for k, v in patch.items() if not callable(v)}
    fn = _run_jit if jit else _run
    logits, captured = fn(model, target_ids, target_mask, source_ids, source_mask, values,
                          dict(delta or {}), capture=tuple(capture), patch_fns=fns)
    cache = ActivationCache(values=captured, tokens=target_ids, mask=target_mask,
                            source_tokens=source_ids, source_mask=source_mask)
    return logits, cache
