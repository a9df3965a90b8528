"""Host-side preparation shared by the interventions: prompts to padded token arrays, answer
tokens, and the metrics read from the logits at the prompt's last position."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ..encoding import InputError, _as_list, _check_length, _check_nonempty, _strip_trailing_eos

__all__ = ["Prompts", "encode_prompts", "answer_ids", "METRICS", "metric_function",
           "require_decoder_only"]

METRICS = ("logit", "logit_diff", "probability", "logprob")


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Right-padded prompts.

    Attributes:
      ids: ``[B, L]`` int32; mask: ``[B, L]`` int32; lengths: ``[B]``; tokens: token strings
      of each prompt (unpadded).
    """
    ids: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    tokens: tuple

    def run(self) -> dict:
        """Forward keyword arrays of a decoder-only run."""
        return {"target_ids": jnp.asarray(self.ids), "target_mask": jnp.asarray(self.mask)}

    @property
    def last(self) -> np.ndarray:
        """``[B]`` the last real position (whose logits predict the answer)."""
        return self.lengths - 1


def require_decoder_only(model, what: str) -> None:
    if model.is_encoder_decoder:
        raise InputError(f"{what} runs on decoder-only models; {getattr(model, 'name', 'this')} "
                         "is an encoder-decoder. For encoder-decoder interventions use "
                         "jaxattr.causal_mediation (source-side interventions).")


def encode_prompts(model, texts: Union[str, Sequence[str]], *, name: str,
                   length: Optional[int] = None) -> Prompts:
    """Tokenise decoder-only prompts (special tokens as the model adds them, no trailing EOS)
    and right-pad them to ``length`` (default: the longest)."""
    texts = _as_list(texts, name)
    tok = model.tokenizer
    rows = []
    for i, t in enumerate(texts):
        _check_nonempty(t, name, i)
        ids = _strip_trailing_eos(list(tok(t)["input_ids"]), tok)
        _check_length(len(ids), model.max_positions, name, i)
        rows.append(ids)
    lengths = np.array([len(r) for r in rows], np.int32)
    width = int(lengths.max()) if length is None else int(length)
    ids = np.full((len(rows), width), model.pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    tokens = tuple(tuple(tok.convert_ids_to_tokens(r)) for r in rows)
    return Prompts(ids=ids, mask=mask, lengths=lengths, tokens=tokens)


def answer_ids(model, answers, n: int, *, name: str) -> np.ndarray:
    """``[n]`` token ids of the answers: each answer's first token when tokenised as a
    continuation (``" Paris"``); an int is taken as a token id. One answer applies to all."""
    if isinstance(answers, (str, int, np.integer)):
        answers = [answers] * n
    answers = list(answers)
    if len(answers) != n:
        raise InputError(f"{name} has {len(answers)} entries for {n} prompts; give one per "
                         f"prompt or a single one for all.")
    out = np.zeros((n,), np.int32)
    vocab = int(model.adapter.embedding_matrix().shape[0])
    for i, a in enumerate(answers):
        if isinstance(a, (int, np.integer)):
            if not 0 <= int(a) < vocab:
                raise InputError(f"{name}[{i}]={a} is not a token id of this model (vocabulary "
                                 f"of {vocab}).")
            out[i] = int(a)
            continue
        if not isinstance(a, str) or not a.strip():
            raise InputError(f"{name}[{i}] must be a non-empty string such as ' Paris' (or a "
                             f"token id), got {a!r}.")
        ids = list(model.tokenizer(a, add_special_tokens=False)["input_ids"])
        if not ids:
            raise InputError(f"{name}[{i}]={a!r} tokenises to nothing.")
        out[i] = ids[0]
    return out


def metric_function(kind: Union[str, Callable], *, has_foil: bool) -> Callable:
    """See :func:`_metric_function`; named metrics are built once, so jitted programs that
    take the metric as a static argument compile once per metric, not once per call."""
    if callable(kind):
        return kind
    if kind not in METRICS:
        raise InputError(f"metric must be one of {METRICS} or a function (logits, answer, foil) "
                         f"-> [B]; got {kind!r}.")
    if kind == "logit_diff" and not has_foil:
        raise InputError("metric='logit_diff' needs foil= (the alternative answer, e.g. the "
                         "corrupted prompt's answer).")
    return _metric_function(kind)


@functools.lru_cache(maxsize=None)
def _metric_function(kind: str) -> Callable:
    """``(logits [B, V], answer [B], foil [B]) -> [B]``.

    ``"logit"`` the answer's logit; ``"logit_diff"`` answer minus foil logit; ``"probability"``
    and ``"logprob"`` the answer's softmax probability / log-probability. A callable is used as
    it is (same signature).
    """
    def take(x, idx):
        return jnp.take_along_axis(x, idx[:, None].astype(jnp.int32), axis=-1)[:, 0]

    def fn(logits, answer, foil):
        logits = logits.astype(jnp.float32)
        if kind == "logit":
            return take(logits, answer)
        if kind == "logit_diff":
            return take(logits, answer) - take(logits, foil)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return take(logp, answer) if kind == "logprob" else jnp.exp(take(logp, answer))
    return fn
