"""Perturbed forwards: every (step, rationale) input of an evaluation, scored in jitted chunks.

Each perturbation is one *row*: the ids a step's prediction reads (its own prefix only, for
causal decoders), a keep probability per token (1 keep, 0 erase; in between for the soft
metrics), the position that predicts the step and the token it predicts. Rows of every step
and every bin are sorted by length, padded to a few length buckets and scored in chunks: one
compiled program per (rows, length) shape, the rows axis being the model's batch axis. There is
no Python loop over steps or bins, only over chunks.

Erasure happens on the embeddings inside the program: ``where(keep, embed(ids),
baseline(ids))`` — with a Bernoulli draw per embedding element for soft rows, keyed by
``fold_in(key, row)`` so that a row's mask does not depend on how rows are chunked. ``delete``
compacts the kept ids on the host instead (hard rows only).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..xla_safety import safe_jit
from ..targets import TargetBatch

__all__ = ["PerturbedChunk", "ModelScorer", "Row", "make_row", "score_rows"]


@struct.dataclass
class PerturbedChunk:
    """Padded rows of one chunk (``N`` rows, ``Lt`` target / ``Ls`` source length).

    ``target_ids/target_mask/target_keep``: ``[N, Lt]``; ``source_*``: ``[N, Ls]`` or ``None``;
    ``positions``: ``[N]`` target index whose logits predict the token; ``tokens``: ``[N]``;
    ``rows``: ``[N]`` global row index (seeds the soft masks).
    """
    target_ids: jax.Array
    target_mask: jax.Array
    target_keep: jax.Array
    positions: jax.Array
    tokens: jax.Array
    rows: jax.Array
    source_ids: Optional[jax.Array] = None
    source_mask: Optional[jax.Array] = None
    source_keep: Optional[jax.Array] = None


class ModelScorer(struct.PyTreeNode):
    """A model's attributed function on perturbed embeddings (the scorer of an evaluation).

    A scorer is any pytree with ``embed(ids, side)``, ``baseline(ids, side)`` (``[N, L, H]``,
    ``side`` ``"source"`` or ``"target"``) and ``score(chunk, embeds) -> [N]``; this one runs
    the adapter's forward with the logits at ``chunk.positions`` only.

    Attributes:
      adapter: :class:`~jaxattr.adapters.ModelAdapter` (params are leaves).
      target_fn: ``(logits[N, 1, V], TargetBatch) -> [N, 1]`` (static).
      target_kwargs: its options as a hashable tuple (static).
      baseline_id: token whose embedding erases (``None``: zeros) (static).
    """
    adapter: Any
    target_fn: Callable = struct.field(pytree_node=False)
    target_kwargs: tuple = struct.field(pytree_node=False, default=())
    baseline_id: Optional[int] = struct.field(pytree_node=False, default=None)

    def embed(self, ids, side):
        return self.adapter.embed(ids, side="encoder" if side == "source" else "decoder")

    def baseline(self, ids, side):
        if self.baseline_id is None:
            return jnp.zeros_like(self.embed(ids, side))
        return self.embed(jnp.full_like(ids, self.baseline_id), side)

    def score(self, chunk: PerturbedChunk, embeds: dict):
        logits = self.adapter.forward(
            target_ids=chunk.target_ids, target_mask=chunk.target_mask,
            target_embeds=embeds["target"], source_ids=chunk.source_ids,
            source_mask=chunk.source_mask, source_embeds=embeds.get("source"),
            positions=chunk.positions[:, None])["logits"]
        tb = TargetBatch(target_ids=chunk.tokens[:, None],
                         step_mask=jnp.ones(chunk.tokens.shape + (1,), jnp.float32))
        return self.target_fn(logits, tb, **dict(self.target_kwargs))[:, 0]


class Row(struct.PyTreeNode):
    """One perturbed input on the host (numpy); see :func:`make_row`."""
    target_ids: np.ndarray
    target_keep: np.ndarray
    source_ids: Optional[np.ndarray]
    source_keep: Optional[np.ndarray]
    token: int
    soft: bool


def make_row(item, keep: np.ndarray, *, erase: str, fill_id: int, soft: bool = False) -> Row:
    """The input of ``item``'s prediction with candidate ``c`` kept with probability
    ``keep[c]`` (``[n]``; non-candidates are always kept). Hard ``delete`` rows drop the
    erased tokens (a side left empty gets one ``fill_id`` token, as a model needs one)."""
    keep = np.asarray(keep, np.float32)
    tgt_keep = np.ones(item.target_ids.shape[0], np.float32)
    on_t = item.cand_side == 1
    tgt_keep[item.cand_row[on_t]] = keep[on_t]
    src_ids, src_keep = item.source_ids, None
    if src_ids is not None:
        src_keep = np.ones(src_ids.shape[0], np.float32)
        src_keep[item.cand_row[~on_t]] = keep[~on_t]
    tgt_ids = item.target_ids
    if erase == "delete" and not soft:
        tgt_ids, tgt_keep = _compact(tgt_ids, tgt_keep, fill_id)
        if src_ids is not None:
            src_ids, src_keep = _compact(src_ids, src_keep, fill_id)
    return Row(target_ids=tgt_ids, target_keep=tgt_keep, source_ids=src_ids,
               source_keep=src_keep, token=item.token, soft=soft)


def _compact(ids, keep, fill_id):
    kept = ids[keep > 0.5]
    if kept.size == 0:
        kept = np.array([fill_id], ids.dtype)
    return kept, np.ones(kept.shape[0], np.float32)


def _bucket(n: int, cap: Optional[int]) -> int:
    """Padded length: a multiple of 8 up to 64, then the next power of two (at most ``cap``)."""
    b = 8 * math.ceil(n / 8) if n <= 64 else 2 ** math.ceil(math.log2(n))
    return max(n, min(b, cap)) if cap else b


def _pad(arrays: Sequence[np.ndarray], length: int, dtype, value=0) -> tuple:
    out = np.full((len(arrays), length), value, dtype)
    mask = np.zeros((len(arrays), length), np.int32)
    for r, a in enumerate(arrays):
        out[r, :a.shape[0]] = a
        mask[r, :a.shape[0]] = 1
    return out, mask


def _chunk_impl(scorer, chunk: PerturbedChunk, key, *, soft: bool):
    embeds = {}
    for side in ("target", "source"):
        ids = getattr(chunk, f"{side}_ids")
        if ids is None:
            continue
        keep = getattr(chunk, f"{side}_keep")
        emb = scorer.embed(ids, side)
        base = scorer.baseline(ids, side)
        if soft:
            draw = jax.vmap(lambda r, p: jax.random.bernoulli(
                jax.random.fold_in(key, r), p[:, None], emb.shape[1:]))
            mask = draw(chunk.rows, keep)
        else:
            mask = (keep > 0.5)[..., None]
        embeds[side] = jnp.where(mask, emb, base)
    return scorer.score(chunk, embeds)


_chunk_jit = safe_jit(_chunk_impl, static_argnames=("soft",))


def score_rows(scorer, rows: Sequence[Row], *, max_tokens: int = 16384, seed: int = 0,
               max_positions: Optional[int] = None, jit: bool = True) -> np.ndarray:
    """Scores ``[len(rows)]`` of every row under ``scorer``, in padded, length-sorted chunks of
    at most ``max_tokens`` tokens (rows × padded length, rows a power of two)."""
    n = len(rows)
    out = np.zeros(n, np.float64)
    if n == 0:
        return out
    key = jax.random.PRNGKey(seed)
    fn = _chunk_jit if jit else _chunk_impl
    has_src = rows[0].source_ids is not None
    groups: dict = {}
    for j, r in enumerate(rows):
        shape = (r.soft, _bucket(r.target_ids.shape[0], max_positions),
                 _bucket(r.source_ids.shape[0], max_positions) if has_src else 0)
        groups.setdefault(shape, []).append(j)
    for (soft, lt, ls), idx in sorted(groups.items()):
        per = max(1, max_tokens // (lt + ls))
        per = 2 ** int(math.floor(math.log2(per)))
        per = min(per, 2 ** math.ceil(math.log2(len(idx))))
        for s in range(0, len(idx), per):
            part = idx[s:s + per]
            padded = part + [part[-1]] * (per - len(part))
            sel = [rows[j] for j in padded]
            t_ids, t_mask = _pad([r.target_ids for r in sel], lt, np.int32)
            t_keep, _ = _pad([r.target_keep for r in sel], lt, np.float32, 1.0)
            fields = dict(target_ids=t_ids, target_mask=t_mask, target_keep=t_keep,
                          positions=np.array([r.target_ids.shape[0] - 1 for r in sel], np.int32),
                          tokens=np.array([r.token for r in sel], np.int32),
                          rows=np.array(padded, np.int32))
            if has_src:
                s_ids, s_mask = _pad([r.source_ids for r in sel], ls, np.int32)
                s_keep, _ = _pad([r.source_keep for r in sel], ls, np.float32, 1.0)
                fields.update(source_ids=s_ids, source_mask=s_mask, source_keep=s_keep)
            chunk = PerturbedChunk(**{k: jnp.asarray(v) for k, v in fields.items()})
            vals = np.asarray(jax.device_get(fn(scorer, chunk, key, soft=soft)), np.float64)
            out[part] = vals[:len(part)]
    return out
