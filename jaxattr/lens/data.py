"""Token batches for lens training and evaluation, built once on the host.

Decoder-only models read fixed-length windows cut from the concatenated texts (an EOS token
between texts), as the tuned-lens package does; encoder-decoder models read ``(source,
target)`` pairs, padded. Batches for a step are a deterministic function of the step number
(a seeded permutation per pass over the data), so a resumed run sees the same data.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..encoding import InputError

__all__ = ["token_windows", "token_rows", "pair_arrays", "with_lens_masks", "StepBatches"]


def token_windows(tokenizer, texts: Iterable[str], seq_len: int) -> np.ndarray:
    """``[N, seq_len]`` int32 windows of the concatenated, EOS-separated texts."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}.")
    eos = tokenizer.eos_token_id
    stream: list = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] is a {type(text).__name__}; lens training on a "
                             "decoder-only model reads plain strings.")
        stream += list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(int(eos))
    n = len(stream) // seq_len
    if n == 0:
        raise InputError(f"the texts hold {len(stream)} tokens, fewer than one window of "
                         f"seq_len={seq_len}; give more text or a shorter seq_len.")
    return np.asarray(stream[:n * seq_len], np.int32).reshape(n, seq_len)


def token_rows(tokenizer, texts: Iterable[str], seq_len: int) -> dict:
    """One text per row (with the tokenizer's special tokens, no trailing EOS, cut at
    ``seq_len``), right-padded: ``{"target_ids", "target_mask"}`` ``[N, seq_len]``."""
    from ..encoding import _strip_trailing_eos
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise InputError(f"texts[{i}] must be a non-empty string.")
        rows.append(_strip_trailing_eos(list(tokenizer(text)["input_ids"]), tokenizer)[:seq_len])
    if not rows:
        raise InputError("no training text given.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((len(rows), seq_len), pad, np.int32)
    mask = np.zeros((len(rows), seq_len), np.int32)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
    return {"target_ids": ids, "target_mask": mask}


def pair_arrays(model, pairs: Sequence, seq_len: int) -> dict:
    """Encoder-decoder ``(source, target)`` pairs as padded arrays ``[N, seq_len]``
    (truncated to ``seq_len``)."""
    try:
        sources, targets = zip(*pairs)
    except (TypeError, ValueError):
        raise InputError("lens training on an encoder-decoder model reads (source, target) "
                         "pairs of strings.") from None
    seqs = model.encode(list(sources), list(targets))
    out = {k: np.full((len(seqs), seq_len), model.pad_token_id, np.int32)
           for k in ("source_ids", "target_ids")}
    out.update(source_mask=np.zeros((len(seqs), seq_len), np.int32),
               target_mask=np.zeros((len(seqs), seq_len), np.int32))
    for r, s in enumerate(seqs):
        for side, ids in (("source", s.source_ids), ("target", s.target_ids)):
            ids = ids[:seq_len]
            out[f"{side}_ids"][r, :len(ids)] = ids
            out[f"{side}_mask"][r, :len(ids)] = 1
    return out


def with_lens_masks(arrays: dict) -> dict:
    """Add ``mask`` (tokens scored by KL), ``next_ids`` and ``next_mask`` (the next token,
    for cross-entropy) to padded ``target_ids``/``target_mask`` arrays."""
    ids, mask = arrays["target_ids"], arrays["target_mask"]
    if "target_mask" not in arrays or mask is None:
        mask = np.ones_like(ids)
    nxt = np.concatenate([ids[..., 1:], np.zeros_like(ids[..., :1])], -1)
    nmask = np.concatenate([mask[..., 1:], np.zeros_like(mask[..., :1])], -1)
    return dict(arrays, target_mask=mask, mask=mask.astype(np.float32), next_ids=nxt,
                next_mask=(nmask * mask).astype(np.float32))


class StepBatches:
    """``batches(step) -> {name: [n_micro, batch_size, seq_len]}`` over ``arrays`` rows,
    cycling through seeded permutations."""

    def __init__(self, arrays: dict, *, batch_size: int, n_micro: int, seed: int = 0):
        self.arrays = with_lens_masks(arrays)
        self.n = len(self.arrays["target_ids"])
        self.batch_size, self.n_micro, self.seed = int(batch_size), int(n_micro), int(seed)
        if self.n < self.batch_size:
            raise InputError(f"the data gives {self.n} sequences, fewer than batch_size="
                             f"{self.batch_size}; give more text or a smaller batch_size.")

    def rows(self, step: int) -> np.ndarray:
        """Row indices ``[n_micro * batch_size]`` read at ``step``."""
        per = self.n_micro * self.batch_size
        flat = np.arange(step * per, (step + 1) * per)
        epoch, pos = flat // self.n, flat % self.n
        out = np.empty_like(flat)
        for e in np.unique(epoch):
            perm = np.random.default_rng([self.seed, int(e)]).permutation(self.n)
            out[epoch == e] = perm[pos[epoch == e]]
        return out

    def __call__(self, step: int) -> dict:
        idx = self.rows(step).reshape(self.n_micro, self.batch_size)
        return {k: v[idx] for k, v in self.arrays.items()}
