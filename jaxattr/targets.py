"""Attribution targets: per-step scores computed from the logits of the single forward pass.

A target is a pure function ``target(logits, batch, **kwargs) -> scores[B, T]`` where
``logits[B, T, V]`` are *step-aligned*: ``logits[b, t]`` is the model's prediction for the
t-th attributed token of sequence ``b``, whose id is ``batch.target_ids[b, t]``. The same
functions serve as ``attributed_fn`` (differentiated) and as ``step_scores`` (recorded).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct

__all__ = ["TargetBatch", "logit", "probability", "logprob", "TARGETS", "get_target",
           "register_target"]


@struct.dataclass
class TargetBatch:
    """What a target sees besides the logits. All arrays are step-aligned ``[B, T]``.

    Attributes:
      target_ids: ``[B, T]`` id of the token predicted at each attributed step.
      step_mask: ``[B, T]`` 1.0 for real steps, 0.0 for padding.
      contrast_ids: ``[B, T]`` foil token ids (contrastive targets), or ``None``.
      contrast_logits: ``[B, T, V]`` step-aligned logits of the contrastive forward, or ``None``.
      contrast_mask: ``[B, T]`` 1.0 where the contrast step exists, or ``None``.
    """
    target_ids: jax.Array
    step_mask: jax.Array
    contrast_ids: Optional[jax.Array] = None
    contrast_logits: Optional[jax.Array] = None
    contrast_mask: Optional[jax.Array] = None


def _gather(values: jax.Array, ids: jax.Array) -> jax.Array:
    """``values[B, T, V]``, ``ids[B, T]`` -> ``[B, T]``."""
    return jnp.take_along_axis(values, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]


def logit(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Raw logit of the target token: ``z[y]``. Returns ``[B, T]``."""
    return _gather(logits, batch.target_ids)


def probability(logits: jax.Array, batch: TargetBatch, *, logprob: bool = False) -> jax.Array:
    """Probability of the target token ``softmax(z)[y]`` (``log_softmax(z)[y]`` when
    ``logprob=True``). Computed in float32. Returns ``[B, T]``."""
    lp = _gather(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), batch.target_ids)
    return lp if logprob else jnp.exp(lp)


def logprob(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Natural-log probability of the target token, ``log_softmax(z)[y]``. Returns ``[B, T]``."""
    return probability(logits, batch, logprob=True)


TARGETS: dict[str, Callable[..., jax.Array]] = {
    "logit": logit,
    "probability": probability,
    "logprob": logprob,
}


def register_target(name: str, fn: Callable[..., jax.Array]) -> None:
    """Make ``fn`` available by ``name`` (for the CLI and string arguments)."""
    TARGETS[name] = fn


def get_target(target: Any) -> Callable[..., jax.Array]:
    """Resolve a target name, or pass a callable ``(logits, batch, **kw) -> [B, T]`` through."""
    if callable(target):
        return target
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(
            f"Unknown attributed function / step score {target!r}. Available: {sorted(TARGETS)}; "
            "or pass a function `(logits[B,T,V], batch, **kwargs) -> scores[B,T]`.") from None
