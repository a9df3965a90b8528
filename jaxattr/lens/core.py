"""Pure lens maths: decode residual states through the model's final norm and head.

A :class:`Readout` is the model's own tail (final norm, then the language-model head) as a
pure function of a hidden state; every lens decodes states with it. States are stacked
``[S, B, L, H]`` with ``S = n_layers + 1`` rows (see :mod:`jaxattr.lens.tuned`); rows are
mapped in chunks of ``layer_chunk`` (each chunk vmapped) so that at most
``layer_chunk * B * L * V`` log-probabilities live at once.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct

__all__ = ["Readout", "row_log_probs", "lens_log_probs", "kl_rows", "row_statistics"]


class Readout(struct.PyTreeNode):
    """The final norm and head: ``readout(h[..., H]) -> logits[..., V]``.

    Attributes:
      params: arrays the function reads (pytree leaves, so new weights never retrace).
      fn: ``fn(params, h) -> logits`` (static).
    """
    params: Any
    fn: Callable = struct.field(pytree_node=False)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.fn(self.params, h)


def row_log_probs(readout: Readout, h: jax.Array, lens=None, row=None) -> jax.Array:
    """Float32 log-probabilities ``[..., V]`` of one row's states ``h[..., H]``, translated by
    ``lens`` at ``row`` first when a :class:`~jaxattr.lens.TunedLens` is given (``row`` must
    then be a block row, not the final one)."""
    if lens is not None:
        h = lens.translate_row(h, row)
    return jax.nn.log_softmax(readout(h).astype(jnp.float32), axis=-1)


def _map_rows(fn, states, lens, layer_chunk):
    """``fn(h)`` over the rows of ``states`` (translated by ``lens`` first, except the final
    row, which is the model's own), ``layer_chunk`` rows at a time."""
    n = states.shape[0]
    if lens is not None and lens.n_layers != n - 1:
        raise ValueError(f"a tuned lens of {lens.n_layers} layers cannot read {n} rows of "
                         f"states; it needs n_layers + 1 = {lens.n_layers + 1} (train or load "
                         "the lens for this model).")
    idx = jnp.arange(n)
    chunk = n if layer_chunk is None else max(1, min(int(layer_chunk), n))

    def one(args):
        h, i = args
        if lens is None:
            return fn(h)
        translated = lens.translate_row(h, jnp.minimum(i, lens.n_layers - 1))
        return fn(jnp.where(i < n - 1, translated, h))

    return jax.lax.map(one, (states, idx), batch_size=chunk)


def lens_log_probs(readout: Readout, states: jax.Array, lens=None, *,
                   layer_chunk: Optional[int] = None) -> jax.Array:
    """``[S, ..., V]`` log-probabilities of every row (logit lens; tuned with ``lens``)."""
    return _map_rows(lambda h: row_log_probs(readout, h), states, lens, layer_chunk)


def kl_rows(final_logp: jax.Array, logp: jax.Array) -> jax.Array:
    """``KL(final ‖ row)`` in nats over the last axis: ``Σ p_final (log p_final − log p)``."""
    return jnp.sum(jnp.exp(final_logp) * (final_logp - logp), axis=-1)


def row_statistics(readout: Readout, states: jax.Array, targets: jax.Array, lens=None, *,
                   top_k: int = 10, layer_chunk: Optional[int] = None) -> dict:
    """Per row and position: what the lens predicts, without keeping ``[S, B, L, V]``.

    Args:
      readout: the model's final norm and head.
      states: ``[S, B, L, H]`` stacked residual states (last row: the final norm's input).
      targets: ``[B, L]`` token ids scored at each position (the next token, or given ones).
      lens: optional :class:`~jaxattr.lens.TunedLens` (``None``: the logit lens).
      top_k: tokens kept per cell.
      layer_chunk: rows decoded at once (``None``: all, vmapped).

    Returns:
      ``{"top_ids" [S,B,L,k] int32, "top_probs" [S,B,L,k], "entropy" [S,B,L] (nats),
      "kl" [S,B,L] (KL(final ‖ row), nats), "target_prob" [S,B,L], "target_rank" [S,B,L]
      int32 (0: top-1)}``.
    """
    targets = targets[..., None].astype(jnp.int32)

    def stats(z, final=None):
        # every statistic from the logits z and their log-normaliser, each a fused pass over
        # [B, L, V]; the row's log-softmax is never stored
        lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
        logp = z - lse
        top_z, top_ids = jax.lax.top_k(z, top_k)
        zt = jnp.take_along_axis(z, targets, axis=-1)
        out = {"top_ids": top_ids.astype(jnp.int32), "top_probs": jnp.exp(top_z - lse),
               "entropy": -jnp.sum(jnp.exp(logp) * logp, axis=-1),
               "target_prob": jnp.exp(zt - lse)[..., 0],
               "target_rank": jnp.sum(z > zt, axis=-1).astype(jnp.int32)}
        out["kl"] = (jnp.zeros_like(out["entropy"]) if final is None
                     else jnp.sum(jnp.exp(final) * (final - logp), axis=-1))
        return out

    z_final = readout(states[-1]).astype(jnp.float32)       # the last row, decoded once
    last = stats(z_final)
    final = jax.nn.log_softmax(z_final, axis=-1)
    n = states.shape[0]
    if lens is not None and lens.n_layers != n - 1:
        raise ValueError(f"a tuned lens of {lens.n_layers} layers cannot read {n} rows of "
                         f"states; it needs n_layers + 1 = {lens.n_layers + 1} (train or load "
                         "the lens for this model).")

    def block_row(args):
        h, i = args
        if lens is not None:
            h = lens.translate_row(h, i)
        return stats(readout(h).astype(jnp.float32), final)

    chunk = n - 1 if layer_chunk is None else max(1, min(int(layer_chunk), n - 1))
    rows = jax.lax.map(block_row, (states[:-1], jnp.arange(n - 1)), batch_size=chunk)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), rows, last)
