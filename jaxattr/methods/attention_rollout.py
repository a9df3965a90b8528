"""Attention rollout (Abnar & Zuidema, 2020): attention propagated through all layers.

Decoder-only: :func:`attention_rollout`. Encoder-decoder: :func:`encoder_decoder_rollout`, the
source/target recurrence of ALTI+ (Ferrando et al., 2022) with rollout weights.

Pure maths over attention patterns; the model pipeline
(:func:`jaxattr.pipeline.attribute_batch` with ``method="attention_rollout"``) captures the
patterns in one forward and reads the rows of the queries that predict each generated token.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["attention_rollout", "encoder_decoder_rollout"]


def attention_rollout(patterns: Sequence[jax.Array] | jax.Array, *,
                      residual: float = 0.5) -> jax.Array:
    """Roll attention out through the layers: ``R = Â_{n-1} ··· Â_1 Â_0``.

    Each layer's pattern is averaged over heads, the residual connection is added as
    ``Â = (1 − residual)·A + residual·I`` and each row is renormalised to sum to 1 (a row of
    ``A`` that sums to 1 stays a distribution; a row that does not is made one). Row ``i`` of the
    result is then a distribution over the input positions that reach position ``i``'s state
    after the last layer.

    Args:
      patterns: a sequence of ``n`` layers' patterns ``[..., heads, L, L]`` (query, key), or one
        array ``[n, ..., heads, L, L]``; the leading ``...`` axes (batch) are kept.
      residual: weight of the identity (Abnar & Zuidema's 0.5), in ``[0, 1]``.

    Returns:
      ``[..., L, L]``: row = query position after the last layer, column = input position.
    """
    layers = checked_patterns(patterns, residual=residual, method="attention_rollout")
    shape = jnp.shape(layers[0])
    eye = jnp.eye(shape[-1], dtype=jnp.promote_types(layers[0].dtype, jnp.float32))
    rollout = None
    for a in layers:
        a = jnp.asarray(a, eye.dtype).mean(axis=-3)  # heads
        a = (1.0 - residual) * a + residual * eye
        a = a / a.sum(-1, keepdims=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def checked_patterns(patterns, *, residual: float, method: str) -> list:
    """The per-layer patterns of ``patterns`` (a sequence, or an array ``[n, ...]`` iterated
    over its layers), each ``[..., heads, L, L]``; ``ValueError`` naming ``method`` for a
    ``residual`` outside ``[0, 1]``, no layer, or non-square patterns."""
    if not 0.0 <= float(residual) <= 1.0:
        raise ValueError(f"residual must be in [0, 1] (the identity's weight; Abnar & Zuidema "
                         f"use 0.5), got {residual!r}.")
    layers = list(patterns)
    if not layers:
        raise ValueError(f"{method} needs at least one layer's attention pattern.")
    shape = jnp.shape(layers[0])
    if len(shape) < 3 or shape[-1] != shape[-2]:
        raise ValueError(f"each attention pattern must be [..., heads, L, L] (square over "
                         f"query and key positions); got shape {shape}.")
    return layers


def _mixing(a: jax.Array, residual: float, dtype) -> jax.Array:
    """Head-mean of a square pattern ``[..., heads, L, L]`` plus the residual, rows renormalised."""
    a = jnp.asarray(a, dtype).mean(axis=-3)
    a = (1.0 - residual) * a + residual * jnp.eye(a.shape[-1], dtype=dtype)
    return _renormalise(a)


def _renormalise(a: jax.Array) -> jax.Array:
    """Rows divided by their sums; an all-zero row (a fully masked query) stays zero, not NaN."""
    total = a.sum(-1, keepdims=True)
    return a / jnp.where(total == 0, 1, total)


def encoder_decoder_rollout(encoder_patterns: Sequence[jax.Array] | jax.Array,
                            decoder_patterns: Sequence[jax.Array] | jax.Array,
                            cross_patterns: Sequence[jax.Array] | jax.Array, *,
                            residual: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Attention rollout through an encoder-decoder: source and target shares of each decoder state.

    The recurrence is that of ALTI+ (Ferrando et al., 2022, "Towards Opening the Black Box of
    Neural Machine Translation: Source and Target Contributions to the Model's Predictions",
    EMNLP; Sec. 3) with Abnar & Zuidema's (2020) head-averaged attention and residual weight
    in place of ALTI's norm-based contributions:

    * encoder: ``R_enc = Â_enc,n ··· Â_enc,1`` ``[S, S]`` (as :func:`attention_rollout`);
    * the decoder state is tracked as ``R = [R_src | R_tgt]`` ``[T, S + T]``, starting from
      ``[0 | I]`` (the decoder inputs are the target tokens);
    * per decoder layer, self-attention ``R ← Â_self R`` (``Â_self`` as in the encoder, with
      its residual), then cross-attention
      ``R ← (1 − residual)·[Ā_cross R_enc | 0] + residual·R``, where ``Ā_cross`` ``[T, S]`` is
      the head-mean cross-attention over the encoder's final states, whose rows are
      ``R_enc``'s mixtures of source tokens (rows renormalised to sum to 1).

    Every row of ``[R_src | R_tgt]`` sums to 1: each generated position's source share plus
    target share is the whole of its state (when the patterns' rows sum to 1 over unmasked
    keys; masked keys carry weight 0 and so get share 0).

    Args:
      encoder_patterns: ``n_enc`` encoder self-attention patterns ``[..., heads, S, S]``.
      decoder_patterns: ``n_dec`` decoder self-attention patterns ``[..., heads, T, T]``.
      cross_patterns: ``n_dec`` cross-attention patterns ``[..., heads, T, S]``.
      residual: weight of the residual stream in every block, in ``[0, 1]`` (0.5 as Abnar &
        Zuidema).

    Returns:
      ``(source [..., T, S], target [..., T, T])``: row = decoder position after the last
      layer, column = source token / target token.
    """
    if not 0.0 <= float(residual) <= 1.0:
        raise ValueError(f"residual must be in [0, 1] (the identity's weight; Abnar & Zuidema "
                         f"use 0.5), got {residual!r}.")
    enc, dec, cross = list(encoder_patterns), list(decoder_patterns), list(cross_patterns)
    if not enc or not dec:
        raise ValueError("encoder_decoder_rollout needs at least one encoder and one decoder "
                         "layer's attention patterns.")
    if len(cross) != len(dec):
        raise ValueError(f"cross_patterns must have one pattern per decoder layer: got "
                         f"{len(cross)} cross-attention and {len(dec)} decoder patterns.")
    s_shape, t_shape, c_shape = (jnp.shape(enc[0]), jnp.shape(dec[0]), jnp.shape(cross[0]))
    if (len(s_shape) < 3 or s_shape[-1] != s_shape[-2] or len(t_shape) < 3
            or t_shape[-1] != t_shape[-2] or c_shape[-2:] != (t_shape[-1], s_shape[-1])):
        raise ValueError(f"patterns must be encoder [..., heads, S, S], decoder "
                         f"[..., heads, T, T] and cross [..., heads, T, S]; got {s_shape}, "
                         f"{t_shape} and {c_shape}.")
    dtype = jnp.promote_types(enc[0].dtype, jnp.float32)
    r_enc = attention_rollout(enc, residual=residual).astype(dtype)       # [..., S, S]
    n_t = t_shape[-1]
    batch = jnp.broadcast_shapes(r_enc.shape[:-2], t_shape[:-3], c_shape[:-3])
    r_tgt = jnp.broadcast_to(jnp.eye(n_t, dtype=dtype), batch + (n_t, n_t))
    r_src = jnp.zeros(batch + (n_t, s_shape[-1]), dtype)
    for a_self, a_cross in zip(dec, cross):
        m = _mixing(a_self, residual, dtype)
        r_src, r_tgt = m @ r_src, m @ r_tgt
        c = jnp.asarray(a_cross, dtype).mean(axis=-3)
        c = _renormalise(c)
        r_src = (1.0 - residual) * (c @ r_enc) + residual * r_src
        r_tgt = residual * r_tgt
    return r_src, r_tgt
