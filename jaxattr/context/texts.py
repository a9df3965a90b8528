"""Host-side text handling of PECoRe: templates, special-token filtering, output preparation.

Follows Inseq 0.7.1's ``attribute_context_helpers`` (``concat_with_sep``, ``format_template``,
``get_filtered_tokens``, ``prepare_outputs``), without interactive prompts.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from ..encoding import InputError

__all__ = ["concat_with_sep", "format_template", "encode_text", "filtered_tokens",
           "filtered_positions", "tokens_to_string", "split_output"]


def concat_with_sep(s1: str, s2: str, sep: str) -> str:
    """``s1 + sep + s2``, without doubling ``sep`` when ``s1`` ends / ``s2`` starts with it."""
    if not s1.endswith(sep) and not s2.startswith(sep):
        return s1 + sep + s2
    return s1 + s2


def format_template(template: str, current: str, context: Optional[str] = None) -> str:
    """Fill ``{current}`` (and ``{context}`` when given) in ``template``."""
    kwargs = {"current": current}
    if context is not None:
        kwargs["context"] = context
    return template.format(**kwargs)


def encode_text(tokenizer, text: str, *, target: bool = False) -> list[int]:
    """Token ids of ``text`` with the tokenizer's special tokens (``text_target`` when
    ``target``: the target-side tokenizer of encoder-decoder models)."""
    enc = tokenizer(text_target=text) if target else tokenizer(text)
    return list(enc["input_ids"])


def filtered_positions(tokenizer, ids: Sequence[int], keep: Sequence[str] = ()) -> list[int]:
    """Indices of the ids that are not special tokens (or are special tokens in ``keep``)."""
    special = set(tokenizer.all_special_ids)
    keep_ids = {tokenizer.convert_tokens_to_ids(t) for t in keep}
    return [i for i, t in enumerate(ids) if t not in special or t in keep_ids]


def filtered_tokens(tokenizer, text: str, keep: Sequence[str] = (), *,
                    target: bool = False) -> list[str]:
    """Tokens of ``text`` without special tokens, except those in ``keep`` (Inseq's
    ``get_filtered_tokens``)."""
    ids = encode_text(tokenizer, text, target=target)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [tokens[i] for i in filtered_positions(tokenizer, ids, keep)]


def tokens_to_string(tokenizer, tokens: Sequence[str]) -> str:
    """The text of ``tokens`` (the tokenizer's ``convert_tokens_to_string``)."""
    if not tokens:
        return ""
    return tokenizer.convert_tokens_to_string(list(tokens))


def split_output(output: str, output_template: str, *, index: int = 0) -> tuple[str, str]:
    """Split a generated output into ``(context, current)`` by ``output_template``.

    As Inseq's ``prepare_outputs`` without its prompt and word aligner: split at the template's
    separator (between ``{context}`` and ``{current}``) when that gives exactly two parts,
    else at punctuation and spaces when that gives exactly two parts. Raises ``InputError``
    otherwise.
    """
    separator = output_template.split("{context}")[1].split("{current}")[0]
    candidate = None
    parts = output.split(separator) if separator else [output]
    if len(parts) == 2:
        candidate = parts[0]
    if not candidate:
        punct = re.compile(r"[\s{}]+".format(re.escape(".?!,;:)]}")))
        parts = [s for s in punct.split(output) if s]
        if len(parts) == 2:
            candidate = parts[0]
    if not candidate:
        raise InputError(
            f"example {index}: the generated output {output!r} cannot be split into context and "
            f"current parts with output_template {output_template!r} (no unique separator "
            f"{separator!r}, no two punctuation-delimited parts). Pass output_context_text "
            "(and output_current_text) explicitly.")
    prefix = output_template.split("{current}")[0].format(context=candidate)
    current = output[min(len(prefix), len(output)):]
    if not current.strip():
        raise InputError(f"example {index}: the generated output {output!r} has nothing after "
                         f"its context {candidate!r}; force output_context_text.")
    return candidate, current.strip()
