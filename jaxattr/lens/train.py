"""Training a tuned lens: KL(final ‖ lens) over tokens, every layer in one jitted step.

The base model is frozen: its states come out of a ``stop_gradient`` and only the
:class:`~jaxattr.lens.TunedLens` is differentiated. One optimiser step is one compiled program
that scans over ``n_micro`` micro-batches (gradient accumulation) and, inside each, decodes all
layers at once (vmapped, or ``layer_chunk`` rows at a time). The default optimiser is the
tuned-lens package's recipe written in optax (:func:`tuned_lens_optimizer`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ..xla_safety import safe_jit
from .core import Readout, kl_rows, row_log_probs
from .tuned import TunedLens

__all__ = ["LensSource", "TrainState", "tuned_lens_optimizer", "lens_loss", "make_train_step",
           "fit", "evaluate_lens"]


class LensSource(struct.PyTreeNode):
    """What lens training and evaluation read from a frozen model.

    Attributes:
      params: the base model's arrays (leaves; never differentiated).
      readout: the model's final norm and head (:class:`~jaxattr.lens.core.Readout`).
      states_fn: ``states_fn(params, batch) -> [S, B, L, H]``, the residual stream entering
        block 0 and leaving every block (static). ``batch`` is a dict of arrays with at least
        ``"mask"`` ``[B, L]`` (1 on real tokens).
      n_layers, hidden: the model's number of blocks and residual width (static).
    """
    params: Any
    readout: Readout
    states_fn: Callable = struct.field(pytree_node=False)
    n_layers: int = struct.field(pytree_node=False)
    hidden: int = struct.field(pytree_node=False)

    def states(self, batch: dict) -> jax.Array:
        """``[n_layers + 1, B, L, H]`` residual states of ``batch``."""
        return self.states_fn(self.params, batch)


class TrainState(struct.PyTreeNode):
    """Everything a resumed run needs: the lens, the optimiser state and the step count."""
    lens: TunedLens
    opt_state: Any
    step: jax.Array


def tuned_lens_optimizer(steps: int, *, lr: float = 1.0, momentum: float = 0.9,
                         weight_decay: float = 1e-3, max_grad_norm: float = 1.0,
                         warmup_steps: int = 0) -> optax.GradientTransformation:
    """The tuned-lens package's default recipe, in optax.

    SGD with Nesterov momentum ``momentum`` at learning rate ``lr * (1 - momentum)``, decayed
    linearly to 0 over ``steps`` (after ``warmup_steps`` of linear warm-up); L2 weight decay
    added to the gradient as PyTorch's ``SGD(weight_decay=...)`` does; gradients clipped to a
    global norm of ``max_grad_norm`` first.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    peak = lr * (1.0 - momentum)
    decay = optax.linear_schedule(peak, 0.0, max(steps - warmup_steps, 1))
    schedule = decay if warmup_steps <= 0 else optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps), decay], [warmup_steps])
    return optax.chain(optax.clip_by_global_norm(max_grad_norm),
                       optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum, nesterov=True))


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def lens_loss(lens: TunedLens, source: LensSource, batch: dict, *,
              layer_chunk: Optional[int] = None) -> tuple:
    """``(Σ_l KL_l, KL[n_layers])``: per layer, ``KL(final ‖ lens_l)`` in nats averaged over
    the real tokens of ``batch``, the final distribution being the model's own."""
    states = jax.lax.stop_gradient(source.states(batch))
    final = jax.lax.stop_gradient(row_log_probs(source.readout, states[-1]))
    mask = batch["mask"]

    def one(args):
        h, w, b = args
        row = TunedLens(weight=w[None], bias=b[None])
        return _masked_mean(kl_rows(final, row_log_probs(source.readout, h, row, 0)), mask)

    chunk = lens.n_layers if layer_chunk is None else max(1, int(layer_chunk))
    kls = jax.lax.map(one, (states[:-1], lens.weight, lens.bias), batch_size=chunk)
    return jnp.sum(kls), kls


def make_train_step(optimizer: optax.GradientTransformation, *,
                    layer_chunk: Optional[int] = None) -> Callable:
    """A jitted ``step(state, source, batches) -> (state, KL[n_layers])``.

    ``batches`` holds ``[n_micro, B, L, ...]`` arrays: gradients are averaged over the
    micro-batches (a ``lax.scan``) before one optimiser update, so a step sees
    ``n_micro * B * L`` tokens.
    """
    grad_fn = jax.value_and_grad(functools.partial(lens_loss, layer_chunk=layer_chunk),
                                 has_aux=True)

    def step(state: TrainState, source: LensSource, batches: dict):
        def micro(carry, batch):
            (_, kls), grads = grad_fn(state.lens, source, batch)
            return jax.tree.map(jnp.add, carry, (grads, kls)), None

        zeros = (jax.tree.map(jnp.zeros_like, state.lens),
                 jnp.zeros((state.lens.n_layers,), jnp.float32))
        (grads, kls), _ = jax.lax.scan(micro, zeros, batches)
        n = jax.tree.leaves(batches)[0].shape[0]
        grads, kls = jax.tree.map(lambda g: g / n, (grads, kls))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.lens)
        lens = optax.apply_updates(state.lens, updates)
        return TrainState(lens=lens, opt_state=opt_state, step=state.step + 1), kls

    return safe_jit(step, donate_argnums=(0,))


def fit(source: LensSource, batches_at: Callable[[int], dict], *, steps: int,
        optimizer: Optional[optax.GradientTransformation] = None,
        state: Optional[TrainState] = None, layer_chunk: Optional[int] = None,
        show_progress: bool = True, on_step: Optional[Callable] = None) -> tuple:
    """Train from ``state`` (default: a fresh zero lens) until ``state.step == steps``.

    Args:
      source: the frozen model (:class:`LensSource`).
      batches_at: ``step -> {name: [n_micro, B, L, ...]}`` (deterministic, so a resumed run
        sees the same data as an uninterrupted one).
      steps: total number of optimiser steps (a resumed state continues to it).
      optimizer: default :func:`tuned_lens_optimizer` over ``steps``.
      state: a :class:`TrainState` to resume from.
      layer_chunk: layers decoded at once in the loss (``None``: all).
      show_progress: tqdm bar with the mean per-layer KL.
      on_step: ``on_step(state, kls)`` after every step (checkpointing, logging).

    Returns:
      ``(state, history)``: the final :class:`TrainState` and ``[steps_run, n_layers]``
      per-layer KL (nats, before each update).
    """
    optimizer = optimizer or tuned_lens_optimizer(steps)
    if state is None:
        lens = TunedLens.init(source.n_layers, source.hidden)
        state = TrainState(lens=lens, opt_state=optimizer.init(lens),
                           step=jnp.zeros((), jnp.int32))
    start = int(state.step)
    step_fn = make_train_step(optimizer, layer_chunk=layer_chunk)
    bar = None
    if show_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc="Tuned lens", unit="step")
    history = []
    for i in range(start, steps):
        state, kls = step_fn(state, source, batches_at(i))
        kls = np.asarray(kls)
        if not np.all(np.isfinite(kls)):
            raise FloatingPointError(
                f"tuned-lens loss became {kls} at step {i}; lower the learning rate "
                "(tuned_lens_optimizer(lr=...)) or raise max_grad_norm clipping.")
        history.append(kls)
        if bar is not None:
            bar.set_postfix(kl=f"{kls.mean():.4f}")
            bar.update(1)
        if on_step is not None:
            on_step(state, kls)
    if bar is not None:
        bar.close()
    return state, np.asarray(history, np.float32).reshape(-1, source.n_layers)


@functools.partial(safe_jit, static_argnames=("layer_chunk",))
def _eval_batch(lens, source, batch, layer_chunk=None):
    states = source.states(batch)
    final = row_log_probs(source.readout, states[-1])
    mask, nxt, nmask = batch["mask"], batch["next_ids"], batch["next_mask"]

    def one(args):
        h, w, b = args
        out = []
        for row in (None, TunedLens(weight=w[None], bias=b[None])):
            logp = row_log_probs(source.readout, h, row, 0)
            nll = -jnp.take_along_axis(logp, nxt[..., None].astype(jnp.int32), -1)[..., 0]
            out += [jnp.sum(kl_rows(final, logp) * mask), jnp.sum(nll * nmask)]
        return jnp.stack(out)

    chunk = lens.n_layers if layer_chunk is None else max(1, int(layer_chunk))
    sums = jax.lax.map(one, (states[:-1], lens.weight, lens.bias), batch_size=chunk)
    fnll = -jnp.take_along_axis(final, nxt[..., None].astype(jnp.int32), -1)[..., 0]
    return sums, jnp.sum(fnll * nmask), jnp.sum(mask), jnp.sum(nmask)


def evaluate_lens(source: LensSource, lens: TunedLens, batches: Iterable[dict], *,
                  layer_chunk: Optional[int] = None) -> dict:
    """Per-layer held-out KL and cross-entropy of the tuned lens against the logit lens.

    Args:
      batches: dicts with ``"mask"`` (tokens scored by KL), ``"next_ids"`` and ``"next_mask"``
        ``[B, L]`` (the next token at each position and where it exists, for CE).

    Returns:
      ``{"logit_kl", "tuned_kl", "logit_ce", "tuned_ce"}`` numpy ``[n_layers]`` (nats per
      token) and ``"final_ce"`` (the model's own cross-entropy), ``"n_tokens"``.
    """
    total = np.zeros((lens.n_layers, 4))
    final_nll = n_kl = n_ce = 0.0
    for batch in batches:
        sums, fnll, nk, nc = jax.device_get(_eval_batch(lens, source, batch,
                                                        layer_chunk=layer_chunk))
        total += np.asarray(sums, np.float64)
        final_nll, n_kl, n_ce = final_nll + float(fnll), n_kl + float(nk), n_ce + float(nc)
    if n_kl == 0:
        raise ValueError("evaluate_lens got no tokens; pass non-empty held-out batches.")
    n_ce = max(n_ce, 1.0)
    return {"logit_kl": total[:, 0] / n_kl, "logit_ce": total[:, 1] / n_ce,
            "tuned_kl": total[:, 2] / n_kl, "tuned_ce": total[:, 3] / n_ce,
            "final_ce": final_nll / n_ce, "n_tokens": int(n_kl)}
