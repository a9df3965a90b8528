"""Host-side encoding: texts -> token ids, validation, length buckets and padded batches.

Nothing here runs under ``jit``; the arrays it builds are what the jitted pipeline consumes.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

__all__ = ["EncodedSequence", "encode_decoder_only", "encode_encoder_decoder", "bucket_length",
           "pad_batch", "align_contrast", "pad_contrast", "InputError"]


class InputError(ValueError):
    """Invalid user input (the message says how to fix it)."""


@dataclasses.dataclass
class EncodedSequence:
    """Token ids of one example.

    ``target_ids`` is the decoder-side sequence: decoder-only, prompt + continuation;
    encoder-decoder, the decoder start token + the output. Steps attribute the target tokens
    ``attr_start <= i < attr_end`` (each predicted from the tokens before it).
    """
    target_ids: list
    attr_start: int
    attr_end: int
    source_ids: Optional[list] = None

    @property
    def n_steps(self) -> int:
        return self.attr_end - self.attr_start


def _as_list(texts, name):
    if isinstance(texts, str):
        return [texts]
    if texts is None:
        return None
    if isinstance(texts, dict) or not isinstance(texts, (list, tuple)) and not hasattr(
            texts, "__iter__"):
        raise InputError(f"`{name}` must be a text or a list of texts, got "
                         f"{type(texts).__name__}" + (" (a dict: pass list(d.values()) for its "
                                                      "values)" if isinstance(texts, dict)
                                                      else "") + ".")
    texts = list(texts)
    if not texts:
        raise InputError(f"`{name}` is an empty list; pass at least one text.")
    for t in texts:
        if not isinstance(t, str):
            raise InputError(f"`{name}` must hold strings, got {type(t).__name__}.")
    return texts


def _strip_trailing_eos(ids, tokenizer):
    eos = tokenizer.eos_token_id
    if eos is not None and ids and ids[-1] == eos and eos != tokenizer.bos_token_id:
        return ids[:-1]
    return ids


def _check_nonempty(text, name, i):
    if not text or not text.strip():
        raise InputError(f"{name}[{i}] is empty; every input needs at least one non-space "
                         "character.")


def _check_length(n, max_positions, what, i):
    if max_positions is not None and n > max_positions:
        raise InputError(
            f"{what} {i} has {n} tokens but the model has only {max_positions} positions. "
            "Shorten the text (or split it) so it fits.")


def _position(value, name):
    """An integer position argument (``attr_pos_start`` / ``attr_pos_end``), validated."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer position (negative counts from the end of "
                         f"the target), got {value!r}.")
    return int(value)


def _resolve_span(n, n_prefix, start, end, i):
    """Validate ``attr_pos_start/end`` against a target of ``n`` tokens.

    Both are positions in the target; a negative one counts from its end (``-1`` is the last
    token), as Python slices do. Position 0 has no token before it, so a start of 0 means 1;
    an end past the target means its end.
    """
    s = n_prefix if start is None else _position(start, "attr_pos_start")
    e = n if end is None else _position(end, "attr_pos_end")
    for name, value, given in (("attr_pos_start", s, start), ("attr_pos_end", e, end)):
        if value < -n:
            raise InputError(f"sequence {i}: {name}={given} counts back past the start of a "
                             f"target of {n} tokens; use a value >= {-n}.")
    s, e = (s + n if s < 0 else s), (e + n if e < 0 else e)
    s, e = max(s, 1), min(e, n)
    if s >= e:
        raise InputError(
            f"sequence {i}: nothing to attribute between attr_pos_start={start} and "
            f"attr_pos_end={end} (target has {n} tokens, the first attributable one is at "
            f"{max(n_prefix, 1)}). Widen the span or give a longer generated text.")
    return s, e


def encode_decoder_only(tokenizer, prompts, generated_texts, *, max_positions=None,
                        attr_pos_start=None, attr_pos_end=None) -> list[EncodedSequence]:
    """Tokenise prompts and their forced full texts (which must start with the prompt).

    The prompt is tokenised with the tokenizer's special tokens (e.g. Llama's BOS), without a
    trailing EOS. If tokenising the full text does not reproduce the prompt's tokens as a
    prefix, the continuation is tokenised on its own and appended, so the prompt keeps its
    tokens.
    """
    prompts = _as_list(prompts, "input_texts")
    gens = _as_list(generated_texts, "generated_texts")
    if len(gens) != len(prompts):
        raise InputError(f"got {len(prompts)} input texts but {len(gens)} generated texts; "
                         "give one generated text per input.")
    out = []
    for i, (p, g) in enumerate(zip(prompts, gens)):
        _check_nonempty(p, "input_texts", i)
        if not g.startswith(p):
            raise InputError(
                f"generated_texts[{i}] does not start with its prompt. For decoder-only models "
                f"the generated text is the full text: prompt + continuation.\n  prompt:    "
                f"{p!r}\n  generated: {g!r}\nPass generated_texts[{i}] = prompt + continuation.")
        p_ids = _strip_trailing_eos(list(tokenizer(p)["input_ids"]), tokenizer)
        full = _strip_trailing_eos(list(tokenizer(g)["input_ids"]), tokenizer)
        if full[:len(p_ids)] != p_ids:
            full = p_ids + list(tokenizer(g[len(p):], add_special_tokens=False)["input_ids"])
        if len(full) <= len(p_ids):
            raise InputError(f"generated_texts[{i}] adds no token to its prompt; give a "
                             "continuation to attribute (or omit generated_texts to generate).")
        _check_length(len(full), max_positions, "sequence", i)
        s, e = _resolve_span(len(full), len(p_ids), attr_pos_start, attr_pos_end, i)
        out.append(EncodedSequence(target_ids=full, attr_start=s, attr_end=e))
    return out


def encode_encoder_decoder(tokenizer, sources, targets, *, decoder_start_token_id,
                           max_positions=None, attr_pos_start=None,
                           attr_pos_end=None) -> list[EncodedSequence]:
    """Tokenise sources (encoder) and targets (``text_target``), prepending the decoder start
    token to each target. The tokenizer's own special tokens (e.g. EOS) are kept."""
    sources = _as_list(sources, "input_texts")
    targets = _as_list(targets, "generated_texts")
    if len(targets) != len(sources):
        raise InputError(f"got {len(sources)} input texts but {len(targets)} generated texts; "
                         "give one generated text per input.")
    out = []
    for i, (s_text, t_text) in enumerate(zip(sources, targets)):
        _check_nonempty(s_text, "input_texts", i)
        _check_nonempty(t_text, "generated_texts", i)
        src = list(tokenizer(s_text)["input_ids"])
        tgt = [int(decoder_start_token_id)] + list(tokenizer(text_target=t_text)["input_ids"])
        _check_length(len(src), max_positions, "source", i)
        _check_length(len(tgt), max_positions, "target", i)
        s, e = _resolve_span(len(tgt), 1, attr_pos_start, attr_pos_end, i)
        out.append(EncodedSequence(target_ids=tgt, attr_start=s, attr_end=e, source_ids=src))
    return out


def bucket_length(n: int, *, cap: Optional[int] = None, minimum: int = 8) -> int:
    """Smallest bucket ``>= n``: 8, 16, 32, 64, then multiples of 64; never above ``cap``.

    Inputs whose lengths fall in one bucket share one compiled program.
    """
    b = minimum
    while b < n:
        b = b * 2 if b < 64 else b + 64
    if cap is not None and n <= cap:
        b = min(b, cap)
    return b


def pad_batch(seqs: Sequence[EncodedSequence], *, pad_id: int, batch_size: Optional[int] = None,
              max_positions: Optional[int] = None, bucket: bool = True) -> dict:
    """Right-pad a list of sequences into numpy arrays.

    Rows beyond ``len(seqs)`` (up to ``batch_size``) repeat the first sequence with an
    all-zero ``step_mask``, so a short last batch reuses the compiled program.

    Returns a dict with ``target_ids/target_mask [B, L]``, ``step_positions/step_mask [B, T]``
    and, for encoder-decoder sequences, ``source_ids/source_mask [B, S]``.
    """
    n = len(seqs)
    b = max(n, batch_size or 0)
    rows = list(seqs) + [seqs[0]] * (b - n)
    fit = (lambda m: bucket_length(m, cap=max_positions)) if bucket else (lambda m: m)
    L = fit(max(len(s.target_ids) for s in rows))
    T = fit(max(s.n_steps for s in rows))
    out = {
        "target_ids": np.full((b, L), pad_id, np.int32),
        "target_mask": np.zeros((b, L), np.int32),
        "step_positions": np.ones((b, T), np.int32),
        "step_mask": np.zeros((b, T), np.float32),
    }
    has_src = rows[0].source_ids is not None
    if has_src:
        S = fit(max(len(s.source_ids) for s in rows))
        out["source_ids"] = np.full((b, S), pad_id, np.int32)
        out["source_mask"] = np.zeros((b, S), np.int32)
    for r, s in enumerate(rows):
        out["target_ids"][r, :len(s.target_ids)] = s.target_ids
        out["target_mask"][r, :len(s.target_ids)] = 1
        out["step_positions"][r, :] = s.attr_start
        out["step_positions"][r, :s.n_steps] = np.arange(s.attr_start, s.attr_end)
        if r < n:
            out["step_mask"][r, :s.n_steps] = 1.0
        if has_src:
            out["source_ids"][r, :len(s.source_ids)] = s.source_ids
            out["source_mask"][r, :len(s.source_ids)] = 1
    return out


def align_contrast(target_ids, contrast_ids, alignment=None, *, index: int = 0) -> dict:
    """Map target positions to contrast positions.

    Args:
      target_ids, contrast_ids: the two token-id sequences (decoder side, full).
      alignment: ``None`` (positional; the lengths must match), or pairs
        ``[(target_index, contrast_index), ...]`` indexing the full token lists (as shown in
        ``SequenceAttribution.target``).
    Returns:
      ``{target_position: contrast_position}``.
    """
    if alignment is None:
        if len(target_ids) != len(contrast_ids):
            raise InputError(
                f"contrast target {index} has {len(contrast_ids)} tokens but the target has "
                f"{len(target_ids)}, so they cannot be aligned by position. Pass "
                "contrast_targets_alignments=[[(target_index, contrast_index), ...], ...] "
                "(indices into the full token lists) or a contrast of the same length.")
        return {i: i for i in range(len(target_ids))}
    out = {}
    for pair in alignment:
        t, c = (int(v) for v in pair)
        if not (0 <= t < len(target_ids) and 0 <= c < len(contrast_ids)):
            raise InputError(f"alignment pair {pair} of sequence {index} is out of range "
                             f"(target has {len(target_ids)} tokens, contrast "
                             f"{len(contrast_ids)}).")
        out[t] = c
    return out


def pad_contrast(seqs: Sequence[EncodedSequence], contrasts: Sequence[EncodedSequence],
                 alignments: Sequence[dict], *, n_rows: int, n_steps: int, pad_id: int,
                 max_positions: Optional[int] = None, bucket: bool = True) -> dict:
    """Padded contrast arrays aligned to the steps of ``seqs`` (see :func:`pad_batch`).

    Returns ``contrast_target_ids/contrast_target_mask [B, Lc]``, optional
    ``contrast_source_ids/contrast_source_mask [B, Sc]``, and step-aligned
    ``contrast_positions/contrast_step_mask [B, T]`` (mask 0 where a step has no aligned
    contrast token).
    """
    fit = (lambda m: bucket_length(m, cap=max_positions)) if bucket else (lambda m: m)
    rows = list(contrasts) + [contrasts[0]] * (n_rows - len(contrasts))
    Lc = fit(max(len(c.target_ids) for c in rows))
    out = {
        "contrast_target_ids": np.full((n_rows, Lc), pad_id, np.int32),
        "contrast_target_mask": np.zeros((n_rows, Lc), np.int32),
        "contrast_positions": np.ones((n_rows, n_steps), np.int32),
        "contrast_step_mask": np.zeros((n_rows, n_steps), np.float32),
    }
    if rows[0].source_ids is not None:
        Sc = fit(max(len(c.source_ids) for c in rows))
        out["contrast_source_ids"] = np.full((n_rows, Sc), pad_id, np.int32)
        out["contrast_source_mask"] = np.zeros((n_rows, Sc), np.int32)
    for r, c in enumerate(rows):
        out["contrast_target_ids"][r, :len(c.target_ids)] = c.target_ids
        out["contrast_target_mask"][r, :len(c.target_ids)] = 1
        if c.source_ids is not None:
            out["contrast_source_ids"][r, :len(c.source_ids)] = c.source_ids
            out["contrast_source_mask"][r, :len(c.source_ids)] = 1
        if r >= len(seqs):
            continue
        for t, p in enumerate(range(seqs[r].attr_start, seqs[r].attr_end)):
            q = alignments[r].get(p)
            if q is not None and q >= 1:
                out["contrast_positions"][r, t] = q
                out["contrast_step_mask"][r, t] = 1.0
    return out
