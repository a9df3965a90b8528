"""Batch-invariant dropout for Monte-Carlo-dropout forwards (``mc_dropout_prob_avg``).

A Flax model's own dropout draws one mask over the whole padded batch ``[B, L, H]``, so an
example's mask depends on its row, on the other examples and on how far the batch is padded.
Here every mask element is drawn from the *example's own key* and the element's *indices*
only: element ``(b, i_1, ..., i_n)`` of a dropout site comes from
``fold_in(...fold_in(fold_in(keys[b], site), i_1)..., i_{n-1})`` at index ``i_n`` of a
uniform draw along the last axis. With threefry's partitionable bits (JAX's default) the draw
at index ``i_n`` does not depend on that axis' length, so right padding, the row and the rest
of the batch change nothing: an example gets the same masks alone, in any batch, with any
``batch_size`` and sharded.

:func:`keyed_dropout` applies this to the two places where the transformers Flax classes drop
out: ``flax.linen.Dropout`` modules (hidden states, embeddings) and the attention weights of
``flax.linen.attention.dot_product_attention_weights`` (each modelling file's own binding of
that name is swapped while one of its modules runs, at trace time). Sites are numbered in call
order, which one model's forward fixes. Internal: used by the adapter when it is given one
dropout key per example.
"""
from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.attention import dot_product_attention_weights as _flax_attention_weights

__all__ = ["keyed_mask", "keyed_dropout", "is_key_batch"]

_NAME = "dot_product_attention_weights"
_ATTN_SIG = inspect.signature(_flax_attention_weights)


def is_key_batch(rng) -> bool:
    """Whether ``rng`` is a 1-D array of typed PRNG keys (one per example)."""
    return (rng is not None and jax.dtypes.issubdtype(jnp.result_type(rng), jax.dtypes.prng_key)
            and jnp.ndim(rng) == 1)


def keyed_mask(keys: jax.Array, shape: tuple, keep_prob: float, site: int) -> jax.Array:
    """Boolean keep-mask ``shape = [B, d_1, ..., d_n]`` with ``P(keep) = keep_prob``.

    ``keys`` are typed keys ``[B]``. Element ``(b, i_1, ..., i_n)`` depends on ``keys[b]``,
    ``site`` and its indices only, never on ``B`` or the sizes ``d_k`` (see the module
    docstring).
    """
    if keys.shape[0] != shape[0]:
        raise RuntimeError(f"a dropout site of shape {tuple(shape)} does not have the batch of "
                           f"{keys.shape[0]} examples on its leading axis; per-example dropout "
                           "needs [batch, ...] activations.")
    rest = tuple(shape[1:])

    def draw(key, dims):
        if len(dims) <= 1:
            return jax.random.uniform(key, dims) < keep_prob
        sub = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(dims[0]))
        return jax.vmap(lambda k: draw(k, dims[1:]))(sub)

    return jax.vmap(lambda k: draw(jax.random.fold_in(k, site), rest))(keys)


def _drop(x: jax.Array, keys: jax.Array, rate: float, site: int) -> jax.Array:
    keep = 1.0 - rate
    mask = keyed_mask(keys, x.shape, keep, site)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


@contextlib.contextmanager
def keyed_dropout(keys: jax.Array) -> Iterator[None]:
    """Within this context (while a transformers Flax model is traced in train mode), drop out
    with masks keyed per example (``keys``: typed keys ``[B]``) and position."""
    counter = [0]

    def next_site() -> int:
        counter[0] += 1
        return counter[0]

    def attention_weights(*args, **kwargs):
        bound = _ATTN_SIG.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        rate, dropping = float(a["dropout_rate"]), not a["deterministic"]
        a.update(deterministic=True, dropout_rng=None)
        weights = _flax_attention_weights(*bound.args, **bound.kwargs)  # [B, heads, Lq, Lk]
        if not dropping or rate == 0.0:
            return weights
        return _drop(weights, keys, rate, next_site())

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Dropout) and context.method_name == "__call__":
            det = nn.merge_param("deterministic", module.deterministic,
                                 kwargs.get("deterministic", args[1] if len(args) > 1 else None))
            if det or module.rate == 0.0:
                return args[0]
            if module.broadcast_dims:
                raise RuntimeError("per-example dropout does not support Dropout(broadcast_dims"
                                   f"={module.broadcast_dims}) at {'/'.join(module.path)}.")
            return _drop(args[0], keys, float(module.rate), next_site())
        scope = sys.modules[type(module).__module__].__dict__
        if scope.get(_NAME) is not _flax_attention_weights:
            return next_fun(*args, **kwargs)
        scope[_NAME] = attention_weights  # this modelling file's binding, while it runs
        try:
            return next_fun(*args, **kwargs)
        finally:
            scope[_NAME] = _flax_attention_weights

    with nn.intercept_methods(interceptor):
        yield
