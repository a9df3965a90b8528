"""The tuned lens (Belrose et al., 2023): one affine translator per layer.

Rows follow :class:`~jaxattr.lens.LensTrajectory`: with ``n_layers`` blocks there are
``n_layers + 1`` residual states per position, row 0 entering block 0, row ``l`` leaving block
``l - 1``; the last row is what the model's own final norm and head read, so it is never
translated. Row ``l < n_layers`` is translated as ``h + h @ A_l + b_l``. Zero ``A`` and ``b``
(the initialisation) give back ``h`` exactly, i.e. the logit lens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

__all__ = ["TunedLens"]


class TunedLens(struct.PyTreeNode):
    """Per-layer affine translators, a pytree of two arrays.

    Attributes:
      weight: ``[n_layers, H, H]``; ``A_l`` (applied on the right: ``h @ A_l``).
      bias: ``[n_layers, H]``; ``b_l``.
    """
    weight: jax.Array
    bias: jax.Array

    @classmethod
    def init(cls, n_layers: int, hidden: int, *, dtype=jnp.float32) -> "TunedLens":
        """The zero translators: ``translate`` is then the identity (the logit lens)."""
        if n_layers < 1 or hidden < 1:
            raise ValueError(f"TunedLens.init needs n_layers >= 1 and hidden >= 1, got "
                             f"n_layers={n_layers}, hidden={hidden}.")
        return cls(weight=jnp.zeros((n_layers, hidden, hidden), dtype),
                   bias=jnp.zeros((n_layers, hidden), dtype))

    @property
    def n_layers(self) -> int:
        """Number of translated rows (the model's number of blocks)."""
        return int(self.weight.shape[0])

    @property
    def hidden(self) -> int:
        """Width ``H`` of the residual stream."""
        return int(self.weight.shape[-1])

    def translate_row(self, h: jax.Array, layer) -> jax.Array:
        """``h[..., H]`` of row ``layer`` -> ``h + h @ A_layer + b_layer`` (same shape)."""
        w = self.weight[layer].astype(h.dtype)
        return h + h @ w + self.bias[layer].astype(h.dtype)

    def translate(self, states: jax.Array) -> jax.Array:
        """All rows at once: ``states[n_layers + 1, ..., H]`` -> same shape, the last row
        (the final norm's input) unchanged."""
        if states.shape[0] != self.n_layers + 1 or states.shape[-1] != self.hidden:
            raise ValueError(
                f"states of shape {states.shape} do not fit a tuned lens of {self.n_layers} "
                f"layers and width {self.hidden}: expected [{self.n_layers + 1}, ..., "
                f"{self.hidden}] (one row per block plus the final one).")
        body = states[:-1]
        w, b = self.weight.astype(body.dtype), self.bias.astype(body.dtype)
        b = b.reshape((b.shape[0],) + (1,) * (body.ndim - 2) + (b.shape[1],))
        rows = body + jnp.einsum("s...h,shk->s...k", body, w) + b
        return jnp.concatenate([rows, states[-1:]], axis=0)
