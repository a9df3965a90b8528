"""Activation patching: which sites and positions carry the information that separates two runs.

Patch one (site, position[, head]) of the run being patched with the other run's value and read
a metric at the last position. ``direction="denoise"`` patches clean values into the corrupted
run (how much of the clean behaviour does this site restore?), ``"noise"`` corrupted values into
the clean run (how much does breaking it hurt?). Every cell of the grid is one masked forward of
one compiled program (:func:`jaxattr.interventions.engine.patched_metrics`); cells that patch
layer ``l`` restart from the patched run's cached ``blocks.{l}.resid_pre`` (or the patched
residual site itself), so the layers below are not recomputed
(:func:`jaxattr.interventions.engine.restarted_metrics`).

``method="attribution"`` is attribution patching (Nanda, 2023): the first-order estimate
``(a_src − a_run) · ∂M/∂a`` at every cell from one forward and one backward of the patched run
— exact wherever the metric is linear in the site (e.g. ``final_norm`` with a logit metric).
``method="integrated"`` averages that gradient over runs whose attributed embeddings walk from
the patched run's to the source run's (``n_steps`` midpoints): integrated gradients along the
input path, read at every site (EAP-IG, Hanna et al., 2024).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ..xla_safety import safe_jit
from ..encoding import InputError
from ..internals.sites import parse_site, resolve_sites
from .engine import restart_groups, restarted_metrics, site_gradients
from .results import PatchingResult
from .runs import answer_ids, encode_prompts, metric_function, require_decoder_only

__all__ = ["activation_patching"]

_METHODS = ("exact", "attribution", "integrated")


def _positions(positions, length: int):
    """Host list of patched positions, or ``None`` for all positions patched together."""
    if isinstance(positions, str):
        if positions == "all":
            return list(range(length))
        if positions == "together":
            return None
        raise InputError(f"positions must be 'all', 'together' or a list of positions, got "
                         f"{positions!r}.")
    pos = [int(p) for p in np.atleast_1d(positions)]
    for p in pos:
        if not -length <= p < length:
            raise InputError(f"position {p} is outside the prompts (length {length}).")
    return [p % length for p in pos]


def _masks(sites, pos, length, heads):
    """``{site: [C, L(, heads)]}`` one-hot cell masks, cells ordered site-major, then
    position, then head."""
    n_pos = 1 if pos is None else len(pos)
    n_head = heads or 1
    c = len(sites) * n_pos * n_head
    out = {}
    for s, name in enumerate(sites):
        m = np.zeros((c, length) + ((heads,) if heads else ()), np.float32)
        for p in range(n_pos):
            for h in range(n_head):
                cell = (s * n_pos + p) * n_head + h
                sel = slice(None) if pos is None else pos[p]
                if heads:
                    m[cell, sel, h] = 1.0
                else:
                    m[cell, sel] = 1.0
        out[name] = m
    return out


def _layer(name: str, n_layers: int) -> int:
    """Forward order of a site's stage: ``embed`` −1, block sites their layer, ``final_norm``
    after the last block."""
    site = parse_site(name)
    return -1 if site.kind == "embed" else n_layers if site.layer is None else site.layer


def _start_site(layer: int, used: tuple) -> str:
    """Where cells whose first patched stage is ``layer`` restart: the patched site itself
    when it is a residual-stream site (or ``embed`` / ``final_norm``), else the block's input."""
    if len(used) == 1 and parse_site(used[0]).kind in ("embed", "resid_pre", "resid_post",
                                                       "final_norm"):
        return used[0]
    return f"blocks.{layer}.resid_pre"


@partial(safe_jit, static_argnames=("sites", "metric", "chunk", "groups"))
def _exact(backend, run, src_run, answer, foil, last, group_masks, order, *, sites, metric,
           chunk, groups):
    src = backend.forward(**src_run, positions=last[:, None], capture=sites)
    starts = tuple(dict.fromkeys(g[0] for g in groups))
    base = backend.forward(**run, positions=last[:, None], capture=starts)
    m_src = metric(src["logits"][:, 0], answer, foil)
    m_run = metric(base["logits"][:, 0], answer, foil)
    scores = restarted_metrics(backend, run, groups=groups, group_masks=group_masks,
                               order=order, sources=src["captured"], starts=base["captured"],
                               metric=lambda lg: metric(lg, answer, foil), positions=last,
                               chunk=chunk)
    return scores, m_src, m_run


@partial(safe_jit, static_argnames=("sites", "metric", "n_steps"))
def _first_order(backend, run, src_run, answer, foil, last, *, sites, metric, n_steps):
    src = backend.forward(**src_run, positions=last[:, None], capture=sites)
    own = backend.forward(**run, positions=last[:, None], capture=sites)
    m_src = metric(src["logits"][:, 0], answer, foil)
    fn = lambda lg: metric(lg, answer, foil)   # noqa: E731
    if n_steps == 0:
        m_run, grads = site_gradients(backend, run, like=own["captured"], metric=fn,
                                      positions=last)
    else:
        e_run = backend.embed(run["target_ids"])
        e_src = backend.embed(src_run["target_ids"])
        alphas = (jnp.arange(n_steps, dtype=jnp.float32) + 0.5) / n_steps

        def step(acc, a):
            _, g = site_gradients(backend, run, like=own["captured"], metric=fn,
                                  positions=last, embeds=e_run + a * (e_src - e_run))
            return jax.tree.map(lambda x, y: x + y / n_steps, acc, g), None
        zero = jax.tree.map(jnp.zeros_like, own["captured"])
        grads, _ = jax.lax.scan(step, zero, alphas)
        m_run = fn(backend.forward(**run, positions=last[:, None])["logits"][:, 0])
    effects = {n: (src["captured"][n] - own["captured"][n]) * grads[n] for n in sites}
    return effects, m_src, m_run


def activation_patching(model, clean: Union[str, Sequence[str]],
                        corrupted: Union[str, Sequence[str]], *,
                        answer, foil=None, sites="blocks.*.resid_pre",
                        positions="all", metric: Union[str, Callable, None] = None,
                        method: str = "exact", direction: str = "denoise",
                        n_steps: int = 16, chunk: int = 32) -> PatchingResult:
    """Patch activations between a clean and a corrupted run, cell by cell.

    Args:
      model: a decoder-only :class:`~jaxattr.AttributionModel`.
      clean, corrupted: prompts (one or a list of pairs); each pair must have the same number
        of tokens (patching is position by position).
      answer: the token the metric reads (``" Paris"``, one per pair or one for all).
      foil: the alternative token for ``metric="logit_diff"`` (e.g. the corrupted answer).
      sites: site names or globs (``"blocks.*.resid_pre"``, ``"blocks.*.head_out"`` for
        per-head patching); all head sites or none.
      positions: ``"all"`` (each position separately), ``"together"`` (all positions of a site
        at once) or a list of positions.
      metric: ``"logit"``, ``"logit_diff"`` (default with a foil), ``"probability"``,
        ``"logprob"`` or ``fn(logits [B, V], answer [B], foil [B]) -> [B]``.
      method: ``"exact"`` (one patched forward per cell), ``"attribution"`` (first order) or
        ``"integrated"`` (first order with gradients averaged over ``n_steps`` runs).
      direction: ``"denoise"`` (clean values into the corrupted run) or ``"noise"``.
      chunk: cells per vectorised call of the exact grid.

    Returns:
      :class:`PatchingResult` with ``scores [B, n_sites, n_positions]`` (``[..., heads]`` for
      head sites; NaN at positions past a pair's length), ``clean`` and ``corrupted`` metrics
      ``[B]``; ``normalized()`` is ``(M − M_corr) / (M_clean − M_corr)``.
    """
    require_decoder_only(model, "activation_patching")
    if method not in _METHODS:
        raise InputError(f"method must be one of {_METHODS}, got {method!r}.")
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be 'denoise' or 'noise', got {direction!r}.")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise InputError(f"n_steps must be a positive integer, got {n_steps!r}.")
    p_clean = encode_prompts(model, clean, name="clean")
    p_corr = encode_prompts(model, corrupted, name="corrupted")
    if len(p_clean.lengths) != len(p_corr.lengths):
        raise InputError(f"got {len(p_clean.lengths)} clean and {len(p_corr.lengths)} "
                         "corrupted prompts; give one corrupted prompt per clean prompt.")
    for i, (a, b) in enumerate(zip(p_clean.tokens, p_corr.tokens)):
        if len(a) != len(b):
            raise InputError(
                f"pair {i}: clean has {len(a)} tokens and corrupted {len(b)}; activation "
                f"patching swaps values position by position, so both must tokenise to the "
                f"same length.\n  clean:     {list(a)}\n  corrupted: {list(b)}")
    length = int(p_clean.ids.shape[1])
    n = len(p_clean.lengths)
    ans = answer_ids(model, answer, n, name="answer")
    has_foil = foil is not None
    fo = answer_ids(model, foil, n, name="foil") if has_foil else ans
    metric = metric if metric is not None else ("logit_diff" if has_foil else "logit")
    fn = metric_function(metric, has_foil=has_foil)
    backend = model.adapter
    names = resolve_sites(sites, backend.sites(), patchable=True)
    kinds = {parse_site(s).kind for s in names}
    if "head_out" in kinds and kinds != {"head_out"}:
        raise InputError("sites mixes head_out with other kinds; patch heads in a call of "
                         "their own (sites='blocks.*.head_out').")
    pos = _positions(positions, length)
    run, src = p_corr.run(), p_clean.run()
    if direction == "noise":
        run, src = src, run
    last = jnp.asarray(p_clean.last)
    if method == "exact":
        heads = None
        if kinds == {"head_out"}:
            probe = backend.forward(**run, positions=last[:, None], capture=names[:1])
            heads = int(probe["captured"][names[0]].shape[2])
        n_layers = 1 + max([parse_site(x).layer for x in backend.sites()
                            if parse_site(x).layer is not None], default=-1)
        groups, group_masks, order = restart_groups(
            _masks(names, pos, length, heads), {x: _layer(x, n_layers) for x in names},
            _start_site)
        cells, m_src, m_run = _exact(backend, run, src, jnp.asarray(ans), jnp.asarray(fo),
                                     last, jax.tree_util.tree_map(jnp.asarray, group_masks),
                                     jnp.asarray(order), sites=names, metric=fn,
                                     chunk=int(chunk), groups=groups)
        cells = np.asarray(cells).T                                # [B, C]
        shape = (n, len(names), 1 if pos is None else len(pos)) + ((heads,) if heads else ())
        scores = cells.reshape(shape)
    else:
        effects, m_src, m_run = _first_order(
            backend, run, src, jnp.asarray(ans), jnp.asarray(fo), last, sites=names,
            metric=fn, n_steps=0 if method == "attribution" else int(n_steps))
        per = []
        for name in names:
            e = np.asarray(effects[name], np.float64)       # [B, L, ...]
            e = e.sum(-1)                                    # [B, L] or [B, L, heads]
            e = e.sum(1, keepdims=True) if pos is None else e[:, pos]
            per.append(e)
        scores = np.stack(per, axis=1)
        base = np.asarray(m_run, np.float64)
        scores = scores + base.reshape((n,) + (1,) * (scores.ndim - 1))
    if pos is not None:
        past = np.asarray(pos)[None, :] >= p_clean.lengths[:, None]     # [B, P]
        past = past[:, None, :, None] if scores.ndim == 4 else past[:, None, :]
        scores = np.where(past, np.nan, scores)
    m_clean, m_corr = (m_src, m_run) if direction == "denoise" else (m_run, m_src)
    return PatchingResult(
        scores=np.asarray(scores, np.float32), clean=np.asarray(m_clean, np.float32),
        corrupted=np.asarray(m_corr, np.float32), sites=tuple(names),
        positions=tuple(range(1)) if pos is None else tuple(pos),
        clean_tokens=p_clean.tokens, corrupted_tokens=p_corr.tokens,
        info={"method": method, "direction": direction,
              "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "fn"),
              "positions": positions if isinstance(positions, str) else "list",
              "model": getattr(model, "name", None), "n_steps": n_steps})
