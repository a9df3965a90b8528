"""Attention rollout (Abnar & Zuidema, 2020): attention propagated through all layers.

Pure maths over attention patterns; the model pipeline
(:func:`jaxattr.pipeline.attribute_batch` with ``method="attention_rollout"``) captures the
patterns in one forward and reads the rows of the queries that predict each generated token.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["attention_rollout"]


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
    if not 0.0 <= float(residual) <= 1.0:
        raise ValueError(f"residual must be in [0, 1] (the identity's weight; Abnar & Zuidema "
                         f"use 0.5), got {residual!r}.")
    layers = list(patterns)  # an array [n, ...] iterates over its layers
    if not layers:
        raise ValueError("attention_rollout needs at least one layer's attention pattern.")
    shape = jnp.shape(layers[0])
    if len(shape) < 3 or shape[-1] != shape[-2]:
        raise ValueError(f"each attention pattern must be [..., heads, L, L] (square over "
                         f"query and key positions); got shape {shape}.")
    eye = jnp.eye(shape[-1], dtype=jnp.promote_types(layers[0].dtype, jnp.float32))
    rollout = None
    for a in layers:
        a = jnp.asarray(a, eye.dtype).mean(axis=-3)  # heads
        a = (1.0 - residual) * a + residual * eye
        a = a / a.sum(-1, keepdims=True)
        rollout = a if rollout is None else a @ rollout
    return rollout
