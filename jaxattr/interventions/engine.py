"""The one program behind every intervention grid: many patched forwards, vmapped in chunks.

A *cell* of a grid is a set of (site, position[, head]) entries whose value is replaced by a
*source* value — a clean run's activation in activation patching, the clean run's state in
causal tracing, an intervened run's activation in mediation. Every cell of a grid is the same
program with a different mask, so :func:`patched_metrics` traces one forward with a masked mix
``o + m · (src − o)`` at every site of the grid and maps it over the cells' masks with
``jax.lax.map(..., batch_size=chunk)``: one compiled program, ``chunk`` forwards per vectorised
call, memory bounded by the chunk — instead of one Python-level forward per cell.

A patched cell need not recompute what it cannot change. :func:`restart_groups` sorts the cells
by the first layer they touch, and :func:`restarted_metrics` runs each group from the base
run's cached state there: the group's start site is patched with a *constant* (the cached
value, with the cell's own mix on top when the start site is patched by the cell), so
everything upstream of it is dead code that XLA removes — a cell restoring layer ``l`` of an
``n``-layer model runs blocks ``l..n−1`` only (``l+1..n−1`` when it restores ``resid_post``).
This needs nothing from a backend beyond the patch contract, so the transformers-Flax adapter
and the native models both get it.

:func:`site_gradients` is the companion for first-order methods: the metric's gradient at
every site from one backward, through zero ``delta`` arrays (the internals contract).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["patched_metrics", "restart_groups", "restarted_metrics", "site_gradients"]


def _mix(mask_l, src, rows=None):
    """A patch function ``o -> o + m · (src − o)``; ``mask_l`` is ``[L]`` or ``[L, heads]``
    (broadcast over the trailing feature axis), ``src`` ``[B or 1, L, ...]``; ``rows``
    (``[B, L]`` or ``None``) further weights each sequence's positions."""
    def fn(o):
        m = mask_l.astype(o.dtype)
        m = m.reshape((1,) + m.shape + (1,) * (o.ndim - 1 - m.ndim))
        if rows is not None:
            m = m * rows.astype(o.dtype).reshape(rows.shape + (1,) * (o.ndim - 2))
        return o + m * (src.astype(o.dtype) - o)
    return fn


def patched_metrics(backend, run: Mapping[str, jax.Array], *, sources: Mapping[str, jax.Array],
                    masks: Mapping[str, jax.Array], metric: Callable, positions: jax.Array,
                    base_patch: Optional[Mapping[str, Callable]] = None,
                    rows: Optional[Mapping[str, jax.Array]] = None,
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
      rows: ``{site: [B, L]}`` optional per-sequence weights of the positions (every cell's
        mask is multiplied by them: e.g. one position per sequence, where the sequences'
        positions differ); sites absent keep their masks as they are.
      chunk: cells per vectorised call (memory ∝ chunk × B forwards).
    """
    names = tuple(masks)
    base = dict(base_patch or {})
    rows = dict(rows or {})

    def one(cell_masks):
        patch = dict(base)
        for n in names:
            mix = _mix(cell_masks[n], sources[n], rows.get(n))
            if n in base:
                first = base[n]
                patch[n] = lambda o, first=first, mix=mix: mix(first(o))
            else:
                patch[n] = mix
        out = backend.forward(**run, positions=positions[:, None], patch=patch)
        return metric(out["logits"][:, 0])

    return jax.lax.map(one, dict(masks), batch_size=max(1, int(chunk)))


def restart_groups(masks: Mapping[str, np.ndarray], layer_of: Mapping[str, int],
                   start_site: Callable[[int, tuple], str]) -> tuple:
    """Group the cells of a grid by the first layer they patch (host side, static).

    Args:
      masks: ``{site: [C, L, ...]}`` numpy masks of the grid (as for :func:`patched_metrics`).
      layer_of: ``{site: layer}`` of every site in ``masks``.
      start_site: ``(layer, sites of the group) -> site name`` where the group restarts: a site
        upstream of (or equal to) every site its cells patch, e.g. ``blocks.{l}.resid_pre``,
        or ``blocks.{l}.resid_post`` when that is the only site patched at layer ``l``.

    Returns:
      ``(groups, group_masks, order)``: ``groups`` a tuple of ``(start site, patched sites)``
      (static), ``group_masks`` a tuple of ``{site: [C_g, L, ...]}`` (the cells of each group,
      concatenated in group order), and ``order`` ``[C]`` int: cell ``c`` of the grid is row
      ``order[c]`` of the concatenated group results. A cell that patches nothing joins the
      deepest group (its value is the base run's, whatever it restarts from).
    """
    names = tuple(masks)
    c = int(next(iter(masks.values())).shape[0])
    n_top = max(layer_of[n] for n in names)
    first = np.full((c,), n_top, np.int64)
    for n in names:
        hit = np.asarray(masks[n]).reshape(c, -1).any(1)
        first = np.where(hit, np.minimum(first, layer_of[n]), first)
    groups, group_masks, cells = [], [], []
    for layer in sorted(set(first.tolist())):
        idx = np.nonzero(first == layer)[0]
        used = tuple(n for n in names if np.asarray(masks[n])[idx].any())
        if not used:                      # cells that patch nothing: any one site will do
            used = tuple(n for n in names if layer_of[n] == layer)[:1]
        groups.append((start_site(layer, used), used))
        group_masks.append({n: np.asarray(masks[n])[idx] for n in used})
        cells.append(idx)
    order = np.empty((c,), np.int64)
    order[np.concatenate(cells)] = np.arange(c)
    return tuple(groups), tuple(group_masks), order


def restarted_metrics(backend, run: Mapping[str, jax.Array], *, groups: tuple,
                      group_masks: tuple, order: jax.Array, sources: Mapping[str, jax.Array],
                      starts: Mapping[str, jax.Array], metric: Callable, positions: jax.Array,
                      chunk: int = 32) -> jax.Array:
    """:func:`patched_metrics` of a grid whose cells restart from the base run's cached state.

    Args:
      backend, run, sources, metric, positions, chunk: as in :func:`patched_metrics`; ``run``
        is the base run (its values feed only the dead code below each start site, and the
        shapes).
      groups, group_masks, order: from :func:`restart_groups`.
      starts: ``{start site: [B, L, ...]}`` the base run's own value at every start site (a
        capture of the base run, patches included).

    Returns:
      ``[C, B]`` in the grid's cell order; equal to :func:`patched_metrics` over the whole grid
      with the base run's patches, because a cell's patches are all at or downstream of its
      start site, where the base run's value is exactly what the forward would recompute.
    """
    outs = []
    for (start, used), gm in zip(groups, group_masks):
        value = starts[start]
        outs.append(patched_metrics(
            backend, run, sources={n: sources[n] for n in used}, masks=gm, metric=metric,
            positions=positions, base_patch={start: lambda o, v=value: v.astype(o.dtype)},
            chunk=chunk))
    return jnp.concatenate(outs, 0)[order]


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
