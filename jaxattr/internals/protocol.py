"""The one interface every model backend gives the analyses.

Two implementations: :class:`jaxattr.adapters.ModelAdapter` (transformers' Flax classes,
through ``flax.linen`` interception) and the native decoder family in :mod:`jaxattr.models`
(our own forward). Analyses and the attribution pipeline use a model only through this
protocol, so both run every analysis.

Both are ``flax.struct`` pytrees: parameters are leaves, configuration and callables static
fields, so new parameters never retrace a jitted function that takes the model as argument.

Sites (:mod:`jaxattr.internals.sites`) in ``forward``:

* ``capture``: names whose values are returned in ``out["captured"][name]`` (shapes in the
  sites module; ``[B, L, ...]`` over the full, unpadded-by-``positions`` length).
* ``patch``: ``{name: fn}`` with ``fn(value) -> value`` of the same shape; the site's output is
  replaced by ``fn(original)`` before the rest of the network sees it. ``fn`` is an ordinary
  Python function traced into the forward (closing over arrays is how a patch carries values:
  a clean run's activations, a mask, noise).
* ``delta``: ``{name: array}`` added to the site's output (after ``patch``); pass zeros and
  differentiate with respect to them to get the gradient at every site from one backward.

At one site the order is: original value -> ``patch`` -> ``+ delta`` -> what flows on, and
that is the value captured. ``blocks.{l}.resid_pre`` and ``blocks.{l-1}.resid_post`` are the
same tensor: a patch or delta at either is seen by block ``l`` (if both are given, the
``resid_post`` one applies first). Patching ``embed`` replaces the attributed embeddings (like
``target_embeds``); patching ``final_norm`` changes the head's input; attention patterns are
capture-only. Backends may also accept raw module paths (the legacy adapter) in ``capture``
and ``patch``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import jax

__all__ = ["ModelFunctions"]


@runtime_checkable
class ModelFunctions(Protocol):
    """What the pipeline and the analyses need from a model backend.

    Attributes:
      params: the parameter pytree (leaves).
      is_encoder_decoder: static flag.
      embed_scale: the factor the embedding layer applies (attributed embeddings include it).
    """
    params: Any
    is_encoder_decoder: bool
    embed_scale: float

    def embedding_matrix(self, side: str = "decoder") -> jax.Array:
        """``[V, H]`` token-embedding table of ``side`` (``"encoder"`` or ``"decoder"``)."""

    def embed(self, ids: jax.Array, *, side: str = "decoder") -> jax.Array:
        """Attributed token embeddings ``[B, L, H]`` of ``ids [B, L]`` (what PyTorch's
        ``get_input_embeddings()`` returns, so numbers compare with Inseq)."""

    def sites(self) -> tuple:
        """Every site name this model offers, in canonical order."""

    def forward(self, *, target_ids: jax.Array, target_mask: jax.Array,
                target_embeds: Optional[jax.Array] = None,
                source_ids: Optional[jax.Array] = None,
                source_mask: Optional[jax.Array] = None,
                source_embeds: Optional[jax.Array] = None,
                dropout_rng: Optional[jax.Array] = None,
                positions: Optional[jax.Array] = None,
                return_head: bool = False,
                output_attentions: bool = False,
                capture: Sequence[str] = (),
                patch: Optional[Mapping[str, Callable]] = None,
                delta: Optional[Mapping[str, jax.Array]] = None) -> dict:
        """One teacher-forced forward; ``logits[:, i]`` predicts target token ``i + 1``.

        Returns ``{"logits": [B, L, V] (or [B, T, V] at ``positions[B, T]``),
        "captured": {name: array}, "attentions": dict or None}`` plus, with ``return_head``,
        ``"hidden"`` ``[B, T, H]``, ``"head"`` (``(hidden, head_params) -> logits``) and
        ``"head_params"``.
        """

    def logits(self, **kwargs) -> jax.Array:
        """``forward(**kwargs)["logits"]``."""

    def replace(self, **changes) -> "ModelFunctions":
        """A copy with fields replaced (``params=``), as ``flax.struct`` gives."""
