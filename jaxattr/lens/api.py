"""Model-level lens entry points: texts in, trajectories / trained lenses out."""
from __future__ import annotations

import functools
import math
import os
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ..xla_safety import safe_jit
from ..encoding import InputError, _as_list, _strip_trailing_eos, pad_batch
from .checkpoint import load_state, save_lens, save_state
from .core import row_statistics
from .data import StepBatches, pair_arrays, token_rows, token_windows, with_lens_masks
from .readout import model_source, state_sites
from .train import TrainState, evaluate_lens, fit, tuned_lens_optimizer
from .trajectory import LensTrajectory
from .tuned import TunedLens

__all__ = ["logit_lens", "trajectory_of", "train_tuned_lens", "evaluate_tuned_lens"]


@functools.partial(safe_jit, static_argnames=("top_k", "layer_chunk"))
def _lens_batch(source, lens, batch, targets, *, top_k, layer_chunk):
    states = source.states(batch)
    return states, row_statistics(source.readout, states, jnp.maximum(targets, 0), lens,
                                  top_k=top_k, layer_chunk=layer_chunk)


def _encode(model, texts, generated_texts):
    """EncodedSequences whose every target position is read by the lens."""
    if generated_texts is None and model.is_encoder_decoder:
        generated_texts = model.generate(texts)
    if generated_texts is not None:
        return model.encode(texts, generated_texts)
    from ..encoding import EncodedSequence
    seqs = []
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t:
            raise InputError(f"input_texts[{i}] must be a non-empty string.")
        ids = _strip_trailing_eos(list(model.tokenizer(t)["input_ids"]), model.tokenizer)
        seqs.append(EncodedSequence(target_ids=ids, attr_start=0, attr_end=len(ids)))
    return seqs


def _target_ids(model, seq, target) -> np.ndarray:
    ids = np.asarray(seq.target_ids, np.int32)
    if target is None:
        return np.concatenate([ids[1:], [-1]]).astype(np.int32)
    if isinstance(target, str):
        tid = model.tokenizer.convert_tokens_to_ids(target)
        unk = model.tokenizer.unk_token_id
        if tid is None or (tid == unk and target != model.tokenizer.unk_token):
            enc = model.tokenizer(target, add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                raise InputError(f"target {target!r} is not one token of this tokenizer (it "
                                 f"encodes to {len(enc)}); give a single token or its id.")
            tid = enc[0]
    else:
        tid = int(target)
    if not 0 <= tid < model.config.vocab_size:
        raise InputError(f"target id {tid} is outside the vocabulary (size "
                         f"{model.config.vocab_size}).")
    return np.full(len(ids), tid, np.int32)


def logit_lens(model, input_texts: Union[str, Sequence[str]],
               generated_texts: Union[str, Sequence[str], None] = None, *,
               lens: Optional[TunedLens] = None, top_k: int = 10,
               target: Union[str, int, None] = None, batch_size: Optional[int] = None,
               layer_chunk: Optional[int] = 4) -> LensTrajectory:
    """What every layer predicts at every position: the logit lens (or a tuned lens).

    All rows come out of one forward per batch (site capture of ``blocks.0.resid_pre`` and
    ``blocks.*.resid_post``; the decoder side of encoder-decoder models) and are decoded by
    the model's own final norm and head, ``layer_chunk`` rows at a time.

    Args:
      model: an :class:`~jaxattr.AttributionModel`.
      input_texts: texts (decoder-only: read as they are; encoder-decoder: the sources).
      generated_texts: decoder-only: full texts (prompt + continuation) to read instead;
        encoder-decoder: the outputs (default: generated greedily).
      lens: a trained :class:`~jaxattr.lens.TunedLens` (``None``: the logit lens).
      top_k: tokens kept per cell.
      target: scored token at every position (a token string or id); default: the next
        token of the sequence.
      batch_size: sequences per compiled call (``None``: all at once).
      layer_chunk: rows decoded at once (bounds memory at ``layer_chunk * B * L * V``).

    Returns:
      :class:`~jaxattr.lens.LensTrajectory`.
    """
    texts = _as_list(input_texts, "input_texts")
    gens = _as_list(generated_texts, "generated_texts")
    if top_k < 1 or top_k > model.config.vocab_size:
        raise ValueError(f"top_k must be between 1 and the vocabulary size, got {top_k}.")
    seqs = _encode(model, texts, gens)
    return trajectory_of(model, model_source(model), seqs, lens=lens, top_k=top_k, target=target,
                         batch_size=batch_size, layer_chunk=layer_chunk)


def trajectory_of(model, source, seqs, *, lens=None, top_k=10, target=None, batch_size=None,
                  layer_chunk=4) -> LensTrajectory:
    """:func:`logit_lens` over already encoded sequences (``EncodedSequence``; every
    decoder-side position is read)."""
    if lens is not None and (lens.n_layers, lens.hidden) != (source.n_layers, source.hidden):
        raise ValueError(f"the tuned lens has {lens.n_layers} layers of width {lens.hidden}; "
                         f"this model has {source.n_layers} of width {source.hidden}. Train "
                         "or load a lens for this model.")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].target_ids))
    bs = batch_size or len(seqs)
    per_seq: list = [None] * len(seqs)
    for start in range(0, len(order), bs):
        chunk = order[start:start + bs]
        arrays = pad_batch([seqs[i] for i in chunk], pad_id=model.pad_token_id,
                           max_positions=model.max_positions)
        L = arrays["target_ids"].shape[1]
        tg = np.full((len(chunk), L), -1, np.int32)
        for r, i in enumerate(chunk):
            t = _target_ids(model, seqs[i], target)
            tg[r, :len(t)] = t
        batch = {k: jnp.asarray(v) for k, v in arrays.items()
                 if k in ("target_ids", "target_mask", "source_ids", "source_mask")}
        states, stats = _lens_batch(source, lens, batch, jnp.asarray(tg), top_k=top_k,
                                    layer_chunk=layer_chunk)
        stats = jax.device_get(stats)
        for r, i in enumerate(chunk):
            n = len(seqs[i].target_ids)
            s = {k: np.asarray(v[:, r, :n]) for k, v in stats.items()}
            missing = tg[r, :n] < 0
            s["target_prob"] = np.where(missing, np.nan, s["target_prob"]).astype(np.float32)
            s["target_rank"] = np.where(missing, -1, s["target_rank"])
            per_seq[i] = (s, states[:, r, :n], tg[r, :n])
    tok = model.tokenizer
    return LensTrajectory(
        kind="logit" if lens is None else "tuned",
        tokens=[tok.convert_ids_to_tokens(s.target_ids) for s in seqs],
        source_tokens=([tok.convert_ids_to_tokens(s.source_ids) for s in seqs]
                       if model.is_encoder_decoder else None),
        targets=[p[2] for p in per_seq], stats=[p[0] for p in per_seq],
        row_names=state_sites(model),
        states=[p[1] for p in per_seq], readout=source.readout, lens=lens,
        layer_chunk=layer_chunk, tokenizer=tok)


def _training_arrays(model, data, seq_len: int, pack: bool = True) -> dict:
    if isinstance(data, str):
        raise InputError("texts_or_dataset is one string; pass a list of texts (or of "
                         "(source, target) pairs for an encoder-decoder model).")
    data = list(data)
    if model.is_encoder_decoder:
        return pair_arrays(model, data, seq_len)
    if not pack:
        return token_rows(model.tokenizer, data, seq_len)
    windows = token_windows(model.tokenizer, data, seq_len)
    return {"target_ids": windows, "target_mask": np.ones_like(windows)}


def train_tuned_lens(model, texts_or_dataset, *, steps: int, tokens_per_step: int,
                     optimizer=None, seq_len: int = 128, batch_size: int = 8,
                     pack: bool = True,
                     layer_chunk: Optional[int] = None, checkpoint_dir: Optional[str] = None,
                     checkpoint_every: int = 50, seed: int = 0,
                     show_progress: bool = True) -> tuple:
    """Train a tuned lens for ``model`` on text; the model itself stays frozen.

    Args:
      model: an :class:`~jaxattr.AttributionModel`.
      texts_or_dataset: training texts (decoder-only: cut into ``seq_len`` windows) or, for
        encoder-decoder models, ``(source, target)`` pairs.
      steps: optimiser steps.
      tokens_per_step: tokens per step: ``ceil(tokens_per_step / (batch_size * seq_len))``
        micro-batches of ``batch_size`` windows are accumulated in one compiled step.
      optimizer: an optax transformation; default :func:`tuned_lens_optimizer` (SGD with
        Nesterov momentum, linear decay, weight decay, clipping), which resuming needs too.
      seq_len, batch_size: window length and windows per micro-batch.
      pack: decoder-only: cut the concatenated texts into full windows (``True``, as the
        tuned-lens package does) or read each text as its own padded row (``False``: short
        texts a model was trained on one by one, e.g. the bundled toy models).
      layer_chunk: layers decoded at once in the loss (``None``: all, vmapped).
      checkpoint_dir: write ``state.msgpack`` every ``checkpoint_every`` steps and
        ``lens.safetensors`` at the end; an existing ``state.msgpack`` there is resumed.
      seed: data order.
      show_progress: progress bar with the mean per-layer KL.

    Returns:
      ``(lens, history)``: the :class:`~jaxattr.lens.TunedLens` and the per-step,
      per-layer training KL ``[steps_run, n_layers]`` (nats).
    """
    if tokens_per_step < 1 or steps < 1:
        raise ValueError(f"steps and tokens_per_step must be >= 1, got {steps} and "
                         f"{tokens_per_step}.")
    source = model_source(model)
    n_micro = max(1, math.ceil(tokens_per_step / (batch_size * seq_len)))
    batches = StepBatches(_training_arrays(model, texts_or_dataset, seq_len, pack),
                          batch_size=batch_size, n_micro=n_micro, seed=seed)
    optimizer = optimizer or tuned_lens_optimizer(steps)
    state = None
    path = os.path.join(checkpoint_dir, "state.msgpack") if checkpoint_dir else None
    if path and os.path.exists(path):
        lens0 = TunedLens.init(source.n_layers, source.hidden)
        state = load_state(path, TrainState(lens=lens0, opt_state=optimizer.init(lens0),
                                            step=jnp.zeros((), jnp.int32)))
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)

    def on_step(st, kls):
        if path and (int(st.step) % checkpoint_every == 0 or int(st.step) == steps):
            save_state(path, st)

    state, history = fit(source, batches, steps=steps, optimizer=optimizer, state=state,
                         layer_chunk=layer_chunk, show_progress=show_progress,
                         on_step=on_step)
    if checkpoint_dir:
        save_lens(os.path.join(checkpoint_dir, "lens.safetensors"), state.lens,
                  metadata={"model": model.name, "steps": int(state.step),
                            "seq_len": seq_len, "tokens_per_step": n_micro * batch_size * seq_len})
    return state.lens, history


def evaluate_tuned_lens(model, lens: TunedLens, texts_or_dataset, *, seq_len: int = 128,
                        batch_size: int = 8, pack: bool = True,
                        layer_chunk: Optional[int] = None) -> dict:
    """Held-out per-layer KL to the model's output and next-token cross-entropy, tuned lens
    against logit lens (see :func:`~jaxattr.lens.evaluate_lens`; nats per token). Texts are
    read as :func:`train_tuned_lens` reads them (``seq_len``, ``pack``)."""
    source = model_source(model)
    arrays = with_lens_masks(_training_arrays(model, texts_or_dataset, seq_len, pack))
    n = len(arrays["target_ids"])
    batches = ({k: jnp.asarray(v[i:i + batch_size]) for k, v in arrays.items()}
               for i in range(0, n, batch_size))
    return evaluate_lens(source, lens, batches, layer_chunk=layer_chunk)
