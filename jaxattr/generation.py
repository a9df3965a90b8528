"""Greedy generation with one compiled step per length bucket.

``transformers``' Flax ``generate`` compiles a ``lax.while_loop`` with a key-value cache for
every prompt width and ``max_new_tokens``: seconds of compilation on CPU even for three tokens,
before attribution starts. Here every step is one teacher-forced forward over a fixed-size
buffer (the prompt right-padded to a length bucket, generated tokens written in place), read at
each row's last position. The forward is compiled once per ``(rows, bucket)`` and reused at
every step and for every later prompt of that bucket; without a key-value cache each step
recomputes the prefix, which for the short continuations attribution needs costs far less than
the compilation it saves.

The result is the token sequence Flax's greedy ``generate`` returns: the same stopping at EOS
(finished rows continue with PAD) and the same logits processors (``min_length``,
``forced_bos_token_id``, ``forced_eos_token_id``, ``suppress_tokens``) at the same step
counters. Generation arguments outside greedy decoding with those processors (sampling, beams,
n-gram blocking, forced decoder ids, model keyword arguments) go to ``generate`` itself.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional, Sequence

import jax
import numpy as np

from .compile_effort import EffortJit
from .encoding import bucket_length

__all__ = ["GreedySpec", "greedy_spec", "greedy_new_tokens", "new_tokens"]


@dataclasses.dataclass(frozen=True)
class GreedySpec:
    """Greedy decoding as Flax ``generate`` would run it for a model and its arguments.

    Attributes:
      max_new_tokens: steps at most.
      eos_token_ids: tokens that finish a row (empty: none).
      pad_token_id: what finished rows continue with.
      min_length, forced_bos_token_id, forced_eos_token_id, suppress_tokens: the Flax logits
        processors' settings (``None``/empty when off); counters as in Flax: ``cur_len`` is
        the padded prompt width plus the steps done (decoder-only) or ``1 +`` steps done
        (encoder-decoder), ``max_length = cur_len_at_start + max_new_tokens``.
    """
    max_new_tokens: int
    eos_token_ids: tuple
    pad_token_id: int
    min_length: Optional[int] = None
    forced_bos_token_id: Optional[int] = None
    forced_eos_token_id: Optional[int] = None
    suppress_tokens: tuple = ()


_OWN = {"max_new_tokens", "do_sample", "num_beams", "eos_token_id", "pad_token_id", "min_length",
        "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens", "max_length"}


def _ids(value) -> tuple:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def greedy_spec(generation_config: Any, generation_args: dict) -> Optional[GreedySpec]:
    """The :class:`GreedySpec` for a model's ``generation_config`` updated with
    ``generation_args`` (which must hold ``max_new_tokens``), or ``None`` when those ask for
    more than greedy decoding with the supported processors (then use ``generate``)."""
    if set(generation_args) - _OWN or "max_new_tokens" not in generation_args:
        return None
    cfg = copy.deepcopy(generation_config)
    if cfg.update(**generation_args):
        return None
    if cfg.do_sample or (cfg.num_beams or 1) != 1 or cfg.begin_suppress_tokens \
            or getattr(cfg, "forced_decoder_ids", None) or (cfg.no_repeat_ngram_size or 0) > 0:
        return None
    eos = _ids(cfg.eos_token_id)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    return GreedySpec(
        max_new_tokens=int(cfg.max_new_tokens), eos_token_ids=eos, pad_token_id=int(pad),
        min_length=(int(cfg.min_length) if cfg.min_length is not None and eos
                    and cfg.min_length > -1 else None),
        forced_bos_token_id=cfg.forced_bos_token_id, forced_eos_token_id=cfg.forced_eos_token_id,
        suppress_tokens=_ids(cfg.suppress_tokens))


def _last_logits(adapter, target_ids, target_mask, source_ids, source_mask, last):
    """``[B, V]`` float32 logits at position ``last[b]`` of each row (one forward)."""
    out = adapter.forward(target_ids=target_ids, target_mask=target_mask, source_ids=source_ids,
                          source_mask=source_mask, positions=last[:, None])
    return out["logits"][:, 0].astype(np.float32)


_last_logits_jits = EffortJit(_last_logits)
_last_logits_jit = _last_logits_jits.full


def _process(logits: np.ndarray, spec: GreedySpec, cur_len: int, max_length: int) -> np.ndarray:
    """Flax's logits processors, in its order, on host ``logits[B, V]``."""
    logits = logits.copy()
    if spec.min_length is not None and cur_len < spec.min_length:
        logits[:, list(spec.eos_token_ids)] = -np.inf
    if spec.forced_bos_token_id is not None and cur_len == 1:
        logits[:] = -np.inf
        logits[:, spec.forced_bos_token_id] = 0
    if spec.forced_eos_token_id is not None and cur_len == max_length - 1:
        logits[:] = -np.inf
        logits[:, spec.forced_eos_token_id] = 0
    if spec.suppress_tokens:
        logits[:, list(spec.suppress_tokens)] = -np.inf
    return logits


def greedy_new_tokens(adapter, spec: GreedySpec, prompts: Sequence[Sequence[int]], *,
                      decoder_start_token_id: Optional[int] = None,
                      max_positions: Optional[int] = None, jit: bool = True) -> np.ndarray:
    """Greedy continuations of ``prompts`` (token-id lists) as ``int32 [B, n]``, ``n <=
    spec.max_new_tokens``: each row's new tokens, PAD after its EOS.

    Decoder-only (``decoder_start_token_id is None``): a prompt is the decoder's prefix;
    encoder-decoder: the encoder input, and the decoder starts from ``decoder_start_token_id``.
    The buffers have bucketed lengths (:func:`~jaxattr.encoding.bucket_length`), so the step
    compiles once per batch size and bucket.
    """
    step = _last_logits_jits.pick(adapter.params) if jit else _last_logits
    n_rows, n_new = len(prompts), spec.max_new_tokens
    lengths = np.array([len(p) for p in prompts])
    enc_dec = decoder_start_token_id is not None
    prefix = 1 if enc_dec else int(lengths.max())
    width = bucket_length((1 if enc_dec else int(lengths.max())) + n_new, cap=max_positions)
    src_ids = src_mask = None
    if enc_dec:
        src_w = bucket_length(int(lengths.max()), cap=max_positions)
        src_ids = np.full((n_rows, src_w), spec.pad_token_id, np.int32)
        src_mask = np.zeros((n_rows, src_w), np.int32)
        for r, p in enumerate(prompts):
            src_ids[r, :len(p)], src_mask[r, :len(p)] = p, 1
        src_ids, src_mask = jax.numpy.asarray(src_ids), jax.numpy.asarray(src_mask)
        lengths = np.ones(n_rows, np.int64)
    ids = np.full((n_rows, width), spec.pad_token_id, np.int32)
    for r, p in enumerate(prompts):
        if enc_dec:
            ids[r, 0] = decoder_start_token_id
        else:
            ids[r, :len(p)] = p
    new = np.full((n_rows, n_new), spec.pad_token_id, np.int32)
    done = np.zeros(n_rows, bool)
    max_length = prefix + n_new
    steps = 0
    for t in range(n_new):
        if (lengths >= width).any():  # the bucket capped at max_positions is full
            break
        mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
        logits = np.asarray(step(adapter, jax.numpy.asarray(ids), jax.numpy.asarray(mask),
                                 src_ids, src_mask, jax.numpy.asarray(lengths - 1)))
        token = _process(logits, spec, prefix + t, max_length).argmax(-1)
        token = np.where(done, spec.pad_token_id, token)
        new[:, t] = token
        steps = t + 1
        write = ~done | enc_dec
        ids[np.arange(n_rows)[write], lengths[write]] = token[write]
        lengths = lengths + write
        done = done | np.isin(token, spec.eos_token_ids)
        if done.all():
            break
    return new[:, :steps]


def new_tokens(hf_model, adapter, prompts: Sequence[Sequence[int]], generation_args: dict, *,
               is_encoder_decoder: bool, pad_token_id: int,
               decoder_start_token_id: Optional[int] = None,
               max_positions: Optional[int] = None) -> np.ndarray:
    """New tokens ``int32 [B, n]`` (PAD after EOS) for ``prompts``: :func:`greedy_new_tokens`
    when :func:`greedy_spec` covers ``generation_args``, else ``hf_model.generate`` (prompts
    left-padded for decoder-only models, right-padded for encoder-decoder ones)."""
    args = dict(generation_args)
    args.setdefault("pad_token_id", pad_token_id)
    config = getattr(hf_model, "generation_config", None)
    if config is None:     # jaxattr's native family: the checkpoint config's generation fields
        from transformers import GenerationConfig
        config = GenerationConfig.from_model_config(hf_model.config)
    spec = greedy_spec(config, args)
    if spec is not None:
        return greedy_new_tokens(
            adapter, spec, prompts,
            decoder_start_token_id=decoder_start_token_id if is_encoder_decoder else None,
            max_positions=max_positions)
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_token_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for r, p in enumerate(prompts):
        cols = slice(0, len(p)) if is_encoder_decoder else slice(width - len(p), width)
        ids[r, cols], mask[r, cols] = p, 1
    res = hf_model.generate(ids, attention_mask=mask, params=adapter.params, **args)
    seqs = np.asarray(res.sequences)
    return seqs[:, 1:] if is_encoder_decoder else seqs[:, width:]
