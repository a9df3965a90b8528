"""Perturbed forwards: every (step, rationale) input of an evaluation, scored in jitted chunks.

Each perturbation is one *row*: the ids a step's prediction reads (its own prefix only, for
causal decoders), a keep probability per token (1 keep, 0 erase; in between for the soft
metrics), the position that predicts the step and the token it predicts. Rows of every step
and every bin are sorted by length, padded to a few length buckets and scored in chunks: one
compiled program per (rows, length, scored positions) shape, the rows axis being the model's
batch axis. There is no Python loop over steps or bins, only over chunks.

*Shared forwards* (:func:`plan_forwards`): in a causal decoder (and the teacher-forced decoder
of an encoder-decoder) the logits at position ``p`` do not depend on positions ``> p``. A hard
row of a sequence whose (target ids, keep) is a prefix of another row's of the same sequence,
with the same source ids and keep, is therefore answered by that row's forward, read at its
own position: only the rows that extend no other row are forwarded, each scored at the
positions of every row it answers. The unperturbed rows of all steps of a sequence cost at most
one forward (the last step's; earlier ones are read from any later row that extends them), and
so do the fully erased ones in ``mask`` mode. Soft rows are
never shared; a scorer that does not declare ``causal = True`` gets one forward per row.

Erasure happens on the embeddings inside the program: ``where(keep, embed(ids),
baseline(ids))`` — with a Bernoulli draw per embedding element for soft rows, keyed by
``fold_in(key, row)`` so that a row's mask does not depend on how rows are chunked. ``delete``
compacts the kept ids on the host instead (hard rows only); its rows share a forward when
their compacted ids are a prefix of another row's.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..xla_safety import safe_jit
from ..targets import TargetBatch

__all__ = ["PerturbedChunk", "ModelScorer", "Row", "Forward", "make_row", "plan_forwards",
           "score_rows", "LENGTH_STEP"]


@struct.dataclass
class PerturbedChunk:
    """Padded rows of one chunk (``N`` rows, ``Lt`` target / ``Ls`` source length).

    ``target_ids/target_mask/target_keep``: ``[N, Lt]``; ``source_*``: ``[N, Ls]`` or ``None``;
    ``positions``: target index whose logits predict the token and ``tokens`` the token it
    predicts: ``[N]`` for a scorer without ``causal = True``, else ``[N, P]`` (``P`` scored
    positions per forwarded row, see :func:`plan_forwards`); ``position_mask``: ``[N, P]``, 1
    where a position answers a row (padding repeats a real position and is ignored), ``None``
    with ``[N]`` positions; ``rows``: ``[N]`` global row index of the forwarded row (seeds the
    soft masks).
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
    position_mask: Optional[jax.Array] = None


class ModelScorer(struct.PyTreeNode):
    """A model's attributed function on perturbed embeddings (the scorer of an evaluation).

    A scorer is any pytree with ``embed(ids, side)``, ``baseline(ids, side)`` (``[N, L, H]``,
    ``side`` ``"source"`` or ``"target"``) and ``score(chunk, embeds) -> [N]`` (one scored
    position per row, ``chunk.positions`` ``[N]``). A scorer whose ``causal`` attribute is
    true promises that its score at target position ``p`` reads target positions ``<= p``
    only (and the whole source side), and takes ``chunk.positions`` / ``chunk.tokens``
    ``[N, P]`` and returns ``[N, P]``: its rows then share forwards (:func:`plan_forwards`).

    This one runs the adapter's forward with the logits at ``chunk.positions`` only. It is
    causal unless its adapter says otherwise (``adapter.causal_target = False``): every model
    jaxattr loads is a causal decoder or an encoder-decoder whose teacher-forced decoder is
    causal.

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

    @property
    def causal(self) -> bool:
        """Target position ``p`` reads positions ``<= p`` only (rows may share forwards)."""
        return bool(getattr(self.adapter, "causal_target", True))

    def embed(self, ids, side):
        return self.adapter.embed(ids, side="encoder" if side == "source" else "decoder")

    def baseline(self, ids, side):
        if self.baseline_id is None:
            return jnp.zeros_like(self.embed(ids, side))
        return self.embed(jnp.full_like(ids, self.baseline_id), side)

    def score(self, chunk: PerturbedChunk, embeds: dict):
        """``[N]`` scores for ``[N]`` positions, ``[N, P]`` for ``[N, P]``."""
        single = chunk.positions.ndim == 1
        positions = chunk.positions[:, None] if single else chunk.positions
        tokens = chunk.tokens[:, None] if single else chunk.tokens
        logits = self.adapter.forward(
            target_ids=chunk.target_ids, target_mask=chunk.target_mask,
            target_embeds=embeds["target"], source_ids=chunk.source_ids,
            source_mask=chunk.source_mask, source_embeds=embeds.get("source"),
            positions=positions)["logits"]
        tb = TargetBatch(target_ids=tokens, step_mask=jnp.ones(tokens.shape, jnp.float32))
        out = self.target_fn(logits, tb, **dict(self.target_kwargs))
        return out[:, 0] if single else out


class Row(struct.PyTreeNode):
    """One perturbed input on the host (numpy); see :func:`make_row`. ``group``: rows share
    forwards only within a group (the sequence they come from)."""
    target_ids: np.ndarray
    target_keep: np.ndarray
    source_ids: Optional[np.ndarray]
    source_keep: Optional[np.ndarray]
    token: int
    soft: bool
    group: int = 0


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
               source_keep=src_keep, token=item.token, soft=soft, group=int(item.seq))


def _compact(ids, keep, fill_id):
    kept = ids[keep > 0.5]
    if kept.size == 0:
        kept = np.array([fill_id], ids.dtype)
    return kept, np.ones(kept.shape[0], np.float32)


#: Padded lengths are multiples of this up to 64 tokens, then powers of two. 4 rather than 8:
#: on ``benchmarks/faithfulness.py`` (16 + 16 tokens, 8 sequences) the padded tokens are those
#: of 97.0 full-sequence forwards per sequence instead of 104.2 (90.4 unpadded), for 9
#: compiled chunk shapes instead of 5: a fixed compile cost against a saving that grows with
#: the number of sequences (the README's cost paragraph has the timings).
LENGTH_STEP = 4


def _bucket(n: int, cap: Optional[int], step: Optional[int] = None) -> int:
    """Padded length: a multiple of ``step`` (default :data:`LENGTH_STEP`) up to 64, then the
    next power of two (at most ``cap``)."""
    step = step or LENGTH_STEP
    b = step * math.ceil(n / step) if n <= 64 else 2 ** math.ceil(math.log2(n))
    return max(n, min(b, cap)) if cap else b


def _round_rows(m: int) -> int:
    """Rows of a chunk holding ``m`` rows: a power of two up to 8, then a multiple of 8."""
    return 2 ** math.ceil(math.log2(m)) if m <= 8 else 8 * math.ceil(m / 8)


def _round_positions(p: int) -> int:
    """Scored positions of a forwarded row, padded: 1, 4, 16, 64, … (few programs; a padded
    position costs one row of the head, a fraction of a token's forward)."""
    return 4 ** math.ceil(math.log(p, 4) - 1e-9) if p > 1 else 1


def _pad(arrays: Sequence[np.ndarray], length: int, dtype, value=0) -> tuple:
    out = np.full((len(arrays), length), value, dtype)
    mask = np.zeros((len(arrays), length), np.int32)
    for r, a in enumerate(arrays):
        out[r, :a.shape[0]] = a
        mask[r, :a.shape[0]] = 1
    return out, mask


class Forward(NamedTuple):
    """One forwarded row and the rows read from it (``answers``: row indices, the forwarded
    row among them, by increasing target length)."""
    row: int
    answers: tuple


def _prefix_key(row: Row) -> bytes:
    """Target side as fixed-width symbols ``2·id + kept`` (big-endian bytes): a row's key is a
    byte prefix of another's exactly when its (ids, keep) is a prefix of the other's."""
    sym = np.asarray(row.target_ids, np.int64) * 2 + (np.asarray(row.target_keep) > 0.5)
    return sym.astype(">u8").tobytes()


def _source_key(row: Row) -> tuple:
    if row.source_ids is None:
        return ()
    return (np.asarray(row.source_ids, np.int64).tobytes(),
            (np.asarray(row.source_keep) > 0.5).tobytes())


def plan_forwards(rows: Sequence[Row], *, share: bool) -> list:
    """The forwards that answer every row: ``[Forward]``, in row order of the forwarded rows.

    ``share=False``: one forward per row. ``share=True`` (a causal scorer): a hard row of a
    group (sequence) whose target (ids, keep) is a prefix of another hard row's with equal
    source (ids, keep) is read from that row's forward at its own last position; the rows
    forwarded are those that extend no other row (the fewest forwards that answer every row;
    identical rows collapse into one). Soft rows always get their own forward.

    Found by sorting each (group, source) set of keys: a key that is a prefix of any other is
    a prefix of the key right after it in sorted order, so one backward walk assigns each row
    the forward of the longest row extending it.
    """
    host = list(range(len(rows)))
    if share:
        sets: dict = {}
        for j, r in enumerate(rows):
            if not r.soft:
                sets.setdefault((r.group, _source_key(r)), []).append(j)
        for idx in sets.values():
            keys = [_prefix_key(rows[j]) for j in idx]
            order = sorted(range(len(idx)), key=keys.__getitem__)
            for a, b in zip(order[-2::-1], order[:0:-1]):
                if keys[b].startswith(keys[a]):
                    host[idx[a]] = host[idx[b]]
    answers: dict = {}
    for j, h in enumerate(host):
        answers.setdefault(h, []).append(j)
    return [Forward(h, tuple(sorted(a, key=lambda j: (rows[j].target_ids.shape[0], j))))
            for h, a in sorted(answers.items())]


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
               max_positions: Optional[int] = None, jit: bool = True,
               share: Optional[bool] = None, return_stats: bool = False):
    """Scores ``[len(rows)]`` of every row under ``scorer``.

    The forwards of :func:`plan_forwards` (shared when ``share``; default: when the scorer
    declares ``causal = True``) are grouped by (soft, padded target / source length, scored
    positions ``P`` rounded up to a power of four) and run in chunks of equal size: at most
    ``max_tokens`` padded tokens (rows × length) and ``max_tokens // 8`` scored positions
    (rows × ``P``, the logits a chunk of 8-token rows holds) per chunk, the rows of a group
    spread evenly over its chunks and rounded up to a power of two (≤ 8) or a multiple of 8.

    Returns the scores ``[len(rows)]`` (float64), and with ``return_stats`` also
    ``{"n_rows", "n_forwards", "forward_tokens" (before padding), "padded_tokens",
    "n_programs" (distinct chunk shapes)}``.
    """
    n = len(rows)
    out = np.zeros(n, np.float64)
    causal = bool(getattr(scorer, "causal", False))
    share = causal if share is None else bool(share)
    if share and not causal:
        raise ValueError("share=True needs a scorer whose causal attribute is true (its score "
                         "at position p reads positions <= p only, and it takes [N, P] "
                         "positions); pass share=False.")
    stats = {"n_rows": n, "n_forwards": 0, "forward_tokens": 0, "padded_tokens": 0,
             "n_programs": 0}
    if n == 0:
        return (out, stats) if return_stats else out
    key = jax.random.PRNGKey(seed)
    fn = _chunk_jit if jit else _chunk_impl
    has_src = rows[0].source_ids is not None
    forwards = plan_forwards(rows, share=share)
    groups: dict = {}
    for f in forwards:
        r = rows[f.row]
        n_pos = _round_positions(len(f.answers)) if causal else 0
        shape = (r.soft, _bucket(r.target_ids.shape[0], max_positions),
                 _bucket(r.source_ids.shape[0], max_positions) if has_src else 0, n_pos)
        groups.setdefault(shape, []).append(f)
        stats["forward_tokens"] += int(r.target_ids.shape[0] + (
            r.source_ids.shape[0] if has_src else 0))
    stats["n_forwards"] = len(forwards)
    programs = set()
    for (soft, lt, ls, n_pos), fs in sorted(groups.items()):
        per = max(1, max_tokens // (lt + ls))
        if n_pos > 1:
            per = max(1, min(per, max_tokens // (8 * n_pos)))
        n_chunks = math.ceil(len(fs) / per)
        size = min(per, _round_rows(math.ceil(len(fs) / n_chunks)))
        programs.add((soft, size, lt, ls, n_pos))
        for s in range(0, len(fs), size):
            part = fs[s:s + size]
            padded = part + [part[-1]] * (size - len(part))
            sel = [rows[f.row] for f in padded]
            stats["padded_tokens"] += size * (lt + ls)
            t_ids, t_mask = _pad([r.target_ids for r in sel], lt, np.int32)
            t_keep, _ = _pad([r.target_keep for r in sel], lt, np.float32, 1.0)
            fields = dict(target_ids=t_ids, target_mask=t_mask, target_keep=t_keep,
                          rows=np.array([f.row for f in padded], np.int32))
            if causal:
                pos = np.zeros((size, n_pos), np.int32)
                tok = np.zeros((size, n_pos), np.int32)
                pmask = np.zeros((size, n_pos), np.int32)
                for i, f in enumerate(padded):
                    a = list(f.answers) + [f.answers[-1]] * (n_pos - len(f.answers))
                    pos[i] = [rows[j].target_ids.shape[0] - 1 for j in a]
                    tok[i] = [rows[j].token for j in a]
                    pmask[i, :len(f.answers)] = 1
                fields.update(positions=pos, tokens=tok, position_mask=pmask)
            else:
                fields.update(positions=np.array([r.target_ids.shape[0] - 1 for r in sel],
                                                 np.int32),
                              tokens=np.array([r.token for r in sel], np.int32))
            if has_src:
                s_ids, s_mask = _pad([r.source_ids for r in sel], ls, np.int32)
                s_keep, _ = _pad([r.source_keep for r in sel], ls, np.float32, 1.0)
                fields.update(source_ids=s_ids, source_mask=s_mask, source_keep=s_keep)
            chunk = PerturbedChunk(**{k: jnp.asarray(v) for k, v in fields.items()})
            vals = np.asarray(jax.device_get(fn(scorer, chunk, key, soft=soft)), np.float64)
            for i, f in enumerate(part):
                if causal:
                    out[list(f.answers)] = vals[i, :len(f.answers)]
                else:
                    out[f.row] = vals[i]
    stats["n_programs"] = len(programs)
    return (out, stats) if return_stats else out
