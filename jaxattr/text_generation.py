"""Texts in, generated token ids out: tokenise prompts, generate in batches (greedy by
default, :mod:`jaxattr.generation`), cut at EOS, and turn generations into the
:class:`~jaxattr.encoding.EncodedSequence` s an attribution run attributes.

Functions take the model object and use its public surface; nothing here imports the model
module.
"""
from __future__ import annotations

from typing import Optional

from .encoding import (EncodedSequence, InputError, _check_length, _check_nonempty,
                       _resolve_span, _strip_trailing_eos)
from .generation import new_tokens
from .methods._common import count

__all__ = ["generate_ids", "encode_generated", "check_generation_room"]


def check_generation_room(n_prompt: int, gen: dict, max_positions, i: int) -> None:
    """A decoder-only prompt plus ``max_new_tokens`` must fit the model's positions."""
    new = gen.get("max_new_tokens")
    if max_positions is None or not isinstance(new, int) or n_prompt + new <= max_positions:
        return
    raise InputError(
        f"input {i}: a prompt of {n_prompt} tokens (padded in its batch) plus max_new_tokens="
        f"{new} exceeds the model's {max_positions} positions. Lower max_new_tokens in "
        f"generation_args to at most {max(max_positions - n_prompt, 0)} or shorten the prompt.")


def _prompt_ids(model, chunk: list, start: int, gen: dict) -> list:
    tok = model.tokenizer
    if model.is_encoder_decoder:
        enc = [list(tok(t)["input_ids"]) for t in chunk]
    else:
        enc = [_strip_trailing_eos(list(tok(t)["input_ids"]), tok) for t in chunk]
    for r, e in enumerate(enc):
        _check_length(len(e), model.max_positions, "input", start + r)
        if not model.is_encoder_decoder:
            check_generation_room(len(e), gen, model.max_positions, start + r)
    return enc


def _until_eos(model, tokens: list) -> list:
    """Generated tokens up to EOS (kept for encoder-decoders, dropped for decoder-only)."""
    tok = model.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else model.config.eos_token_id
    cont = []
    for token in tokens:
        if eos is not None and token == eos:
            if model.is_encoder_decoder:
                cont.append(token)
            break
        cont.append(token)
    return cont


def generate_ids(model, texts: list, *, batch_size: Optional[int] = None,
                 **generation_args) -> list:
    """``[(input_ids, output_ids)]`` per input, without padding. Decoder-only outputs are
    prompt + continuation; encoder-decoder outputs start with the decoder start token and
    end with EOS when it was generated."""
    for i, t in enumerate(texts):
        _check_nonempty(t, "input_texts", i)
    gen = dict(max_new_tokens=20, do_sample=False)
    gen.update(generation_args)
    if batch_size is not None:
        batch_size = count(batch_size, "batch_size")
    bs = batch_size or len(texts)
    out = []
    for start in range(0, len(texts), bs):
        enc = _prompt_ids(model, texts[start:start + bs], start, gen)
        new = new_tokens(model.hf_model, model.adapter, enc, gen,
                         is_encoder_decoder=model.is_encoder_decoder,
                         pad_token_id=model.pad_token_id,
                         decoder_start_token_id=model.decoder_start_token_id,
                         max_positions=model.max_positions)
        for r, e in enumerate(enc):
            cont = _until_eos(model, new[r].tolist())
            out.append((e, [model.decoder_start_token_id] + cont) if model.is_encoder_decoder
                       else (e, e + cont))
    return out


def encode_generated(model, texts: list, *, batch_size, generation_args, attr_pos_start,
                     attr_pos_end) -> list:
    """Generate outputs for ``texts`` and encode them for attribution."""
    seqs = []
    for i, (prompt, ids) in enumerate(generate_ids(
            model, texts, batch_size=batch_size, **(generation_args or {}))):
        if model.is_encoder_decoder:
            n_prefix, source = 1, prompt
        else:
            n_prefix, source = len(prompt), None
        if len(ids) <= n_prefix:
            raise InputError(f"generation produced no token for input {i}; raise "
                             "max_new_tokens in generation_args or pass generated_texts.")
        s, e = _resolve_span(len(ids), n_prefix, attr_pos_start, attr_pos_end, i)
        seqs.append(EncodedSequence(target_ids=ids, attr_start=s, attr_end=e,
                                    source_ids=source))
    return seqs
