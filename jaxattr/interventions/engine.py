"""The one program behind every intervention grid: many patched forwards, vmapped in chunks.

A *cell* of a grid is a set of (site, position[, head]) entries whose value is replaced by a
*source* value — a clean run's activation in activation patching, the clean run's state in
causal tracing, an intervened run's activation in mediation. Every cell of a grid is the same
program with a different mask, so :func:`patched_metrics` traces one forward with a masked mix
``o + m · (src − o)`` at every site of the grid and maps it over the cells' masks with
``jax.lax.map(..., batch_size=chunk)``: one compiled program, ``chunk`` forwards per vectorised
call, memory bounded by the chunk — instead of one Python-level forward per cell.

:func:`site_gradients` is the companion for first-order methods: the metric's gradient at
every site from one backward, through zero ``delta`` arrays (the internals contract).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

__all__ = ["patched_metrics", "site_gradients"]


def _mix(mask_l, src):
    """A patch function ``o -> o + m · (src − o)``; ``mask_l`` is ``[L]`` or ``[L, heads]``
    (broadcast over the trailing feature axis), ``src`` ``[B or 1, L, ...]``."""
    def fn(o):
        m = mask_l.astype(o.dtype)
        m = m.reshape((1,) + m.shape + (1,) * (o.ndim - 1 - m.ndim))
        return o + m * (src.astype(o.dtype) - o)
    return fn


def patched_metrics(backend, run: Mapping[str, jax.Array], *, sources: Mapping[str, jax.Array],
                    masks: Mapping[str, jax.Array], metric: Callable, positions: jax.Array,
                    base_patch: Optional[Mapping[str, Callable]] = None,
                    chunk: int = 32) -> jax.Array:
    """The metric of every cell of a grid, ``[C, B]``.

    Args:
      backend: a :class:`~jaxattr.internals.ModelFunctions` (``model.adapter``).
      run: forward keyword arrays of the run being patched (``target_ids``, ``target_mask``
        and, for encoder-decoder models, ``source_ids`` / ``source_mask``), each ``[B, ...]``.
      sources: ``{site: [B or 1, L, ...]}`` the values patched in.
      masks: ``{site: [C, L] or [C, L, heads]}`` how much of the source each cell takes at
        each position (and head); 0 keeps the run's own value. Sites absent from a cell have
        an all-zero row.
      metric: ``logits [B, V] -> [B]`` at ``positions``.
      positions: ``[B]`` the position whose logits the metric reads.
      base_patch: patches applied in every cell first (e.g. causal tracing's noise on
        ``embed``); a site in both gets ``base_patch`` then the cell's mix.
      chunk: cells per vectorised call (memory ∝ chunk × B forwards).
    """
    names = tuple(masks)
    base = dict(base_patch or {})

    def one(cell_masks):
        patch = dict(base)
        for n in names:
            mix = _mix(cell_masks[n], sources[n])
            if n in base:
                first = base[n]
                patch[n] = lambda o, first=first, mix=mix: mix(first(o))
            else:
                patch[n] = mix
        out = backend.forward(**run, positions=positions[:, None], patch=patch)
        return metric(out["logits"][:, 0])

    return jax.lax.map(one, dict(masks), batch_size=max(1, int(chunk)))


def site_gradients(backend, run: Mapping[str, jax.Array], *, like: Mapping[str, jax.Array],
                   metric: Callable, positions: jax.Array,
                   base_patch: Optional[Mapping[str, Callable]] = None,
                   embeds: Optional[jax.Array] = None) -> tuple:
    """``(metric [B], {site: ∂Σ_b metric_b / ∂site [B, L, ...]})`` from one backward.

    ``like`` gives, per site, an array of the site's shape and dtype (the run's own captured
    activations); the gradient is taken at a zero ``delta`` of that shape. Each sequence's
    metric depends only on its own row, so the gradient of the batch sum is every row's own
    gradient. ``embeds`` (``[B, L, H]``) replaces the attributed embeddings (integrated
    attribution patching walks them from one run to the other).
    """
    zeros = {n: jnp.zeros_like(v) for n, v in like.items()}

    def f(delta):
        kwargs = dict(run)
        if embeds is not None:
            kwargs["target_embeds"] = embeds
        out = backend.forward(**kwargs, positions=positions[:, None], delta=delta,
                              patch=dict(base_patch or {}))
        m = metric(out["logits"][:, 0])
        return m.sum(), m

    (_, m), grads = jax.value_and_grad(f, has_aux=True)(zeros)
    return m, grads
