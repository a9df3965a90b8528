"""Host-side batching helpers of a run: length-sorted chunks, contrast sequences and their
alignment, the exact-length guard, and the padded arrays ``run_with_cache`` feeds.

Functions take the model object and use its public surface (``tokenizer``,
``is_encoder_decoder``, ``encode`` …); nothing here imports the model module.
"""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from .encoding import (EncodedSequence, InputError, _as_list, _check_length, _check_nonempty,
                       _strip_trailing_eos, align_contrast)

__all__ = ["chunk_order", "encode_contrast", "check_exact_length", "site_arrays", "pad_rows",
           "foils"]


def chunk_order(seqs, batch_size: Optional[int], n_devices: Optional[int]) -> tuple:
    """``(chunks, rows)``: input indices per batch (inputs sorted by length, so that a batch
    pads little) and the rows every batch is padded to (a multiple of ``n_devices``)."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i].target_ids),
                                                     len(seqs[i].source_ids or ())))
    bs = batch_size or len(seqs)
    chunks = tuple(tuple(order[i:i + bs]) for i in range(0, len(order), bs))
    rows = bs if len(chunks) > 1 else len(chunks[0])
    if n_devices is not None:  # every device gets the same number of rows
        rows = -(-rows // n_devices) * n_devices
    return chunks, rows


def check_exact_length(model, seqs) -> None:
    """Refuse sequences longer than the backend computes exactly (Flax Mistral's window)."""
    limit = getattr(model.adapter, "max_length", None)
    longest = max((len(s.target_ids) for s in seqs), default=0)
    if limit is not None and longest > limit:
        raise InputError(
            f"a sequence of {longest} tokens is longer than sliding_window={limit} of this "
            f"{type(model.hf_model).__name__}, whose Flax window mask keeps one key more "
            "than PyTorch's; shorten the inputs or load the checkpoint directory with "
            "jaxattr.load_model(path) (native decoder family).")


def _check_contrast_args(model, n, cts, css, alignments):
    for name, lst in (("contrast_targets", cts), ("contrast_sources", css),
                      ("contrast_targets_alignments", alignments)):
        if lst is not None and len(lst) != n:
            raise InputError(f"got {n} inputs but {len(lst)} {name}; give one per input.")
    if css is not None and not model.is_encoder_decoder:
        raise InputError("contrast_sources is for encoder-decoder models; for a decoder-only "
                         "model pass contrast_targets whose prompt is the other context.")
    if alignments is not None and len(alignments) and isinstance(alignments[0], (tuple, list)) \
            and len(alignments[0]) == 2 and isinstance(alignments[0][0], int) and n == 1:
        alignments = [alignments]  # a single sequence's pairs
    return alignments


def _contrast_sequence(model, seq, ct, cs, i) -> EncodedSequence:
    tok = model.tokenizer
    if ct is None:
        tgt = list(seq.target_ids)
    elif model.is_encoder_decoder:
        _check_nonempty(ct, "contrast_targets", i)
        tgt = [model.decoder_start_token_id] + list(tok(text_target=ct)["input_ids"])
    else:
        _check_nonempty(ct, "contrast_targets", i)
        tgt = _strip_trailing_eos(list(tok(ct)["input_ids"]), tok)
    src = None
    if cs is not None:
        _check_nonempty(cs, "contrast_sources", i)
        src = list(tok(cs)["input_ids"])
        _check_length(len(src), model.max_positions, "contrast source", i)
    _check_length(len(tgt), model.max_positions, "contrast target", i)
    return EncodedSequence(target_ids=tgt, attr_start=1, attr_end=len(tgt), source_ids=src)


def encode_contrast(model, seqs, contrast_targets, contrast_sources, alignments) -> tuple:
    """``(contrasts, alignments)``: tokenised contrast targets/sources, aligned to ``seqs``'
    positions."""
    cts = _as_list(contrast_targets, "contrast_targets")
    css = _as_list(contrast_sources, "contrast_sources")
    alignments = _check_contrast_args(model, len(seqs), cts, css, alignments)
    contrasts, aligns = [], []
    for i, seq in enumerate(seqs):
        contrast = _contrast_sequence(model, seq, None if cts is None else cts[i],
                                      None if css is None else css[i], i)
        contrasts.append(contrast)
        aligns.append(align_contrast(seq.target_ids, contrast.target_ids,
                                     None if alignments is None else alignments[i], index=i))
    return contrasts, aligns


def foils(tokenizer, seq: EncodedSequence, contrast: EncodedSequence, alignment: dict) -> list:
    """Per attributed step, the contrast token it is compared with (``None``: no aligned
    contrast token), as the pipeline aligns them (:func:`~jaxattr.encoding.pad_contrast`)."""
    tokens = tokenizer.convert_ids_to_tokens(list(contrast.target_ids))
    out = []
    for p in range(seq.attr_start, seq.attr_end):
        q = alignment.get(p)
        out.append(tokens[q] if q is not None and q >= 1 else None)
    return out


def pad_rows(rows, pad_id, *, left):
    """``(ids[N, L], mask[N, L])`` int32 arrays of ``rows`` padded to the longest one."""
    n = max(len(r) for r in rows)
    ids = np.full((len(rows), n), pad_id, np.int32)
    mask = np.zeros((len(rows), n), np.int32)
    for i, r in enumerate(rows):
        if left:
            ids[i, n - len(r):], mask[i, n - len(r):] = r, 1
        else:
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def site_arrays(model, texts: list, generated_texts) -> dict:
    """Right-padded ``{target_ids, target_mask, source_ids, source_mask}`` of texts (and
    forced outputs) for :meth:`AttributionModel.run_with_cache`."""
    tok, pad = model.tokenizer, model.pad_token_id
    for i, t in enumerate(texts):
        _check_nonempty(t, "input_texts", i)
    if generated_texts is not None:
        seqs = model.encode(texts, generated_texts)
        targets = [list(s.target_ids) for s in seqs]
        sources = [list(s.source_ids) for s in seqs] if model.is_encoder_decoder else None
    elif model.is_encoder_decoder:
        sources = [list(tok(t)["input_ids"]) for t in texts]
        targets = [[model.decoder_start_token_id] for _ in texts]
    else:
        sources = None
        targets = [_strip_trailing_eos(list(tok(t)["input_ids"]), tok) for t in texts]
    for i, t in enumerate(targets):
        _check_length(len(t), model.max_positions, "input", i)
    ids, mask = pad_rows(targets, pad, left=False)
    out = {"target_ids": jax.numpy.asarray(ids), "target_mask": jax.numpy.asarray(mask),
           "source_ids": None, "source_mask": None}
    if sources is not None:
        sids, smask = pad_rows(sources, pad, left=False)
        out.update(source_ids=jax.numpy.asarray(sids), source_mask=jax.numpy.asarray(smask))
    return out
