"""Value zeroing (Mohebbi et al., 2023): how much each token's value vectors shape each state.

For every layer ``l`` and token ``j``, the self-attention value vectors of ``j`` in layer ``l``
(the ``blocks.{l}.value`` site, row ``j``) are set to zero and layer ``l`` is run again from
its clean input; the score of ``j`` for position ``i`` is ``1 − cos(h_l[i], h̃_l[i])`` between
the clean and the corrupted output state of layer ``l`` at ``i`` (the last layer's output
after the final norm, as transformers' last hidden state). Every layer is corrupted in the
same forward with its input restored to the clean state (``blocks.{l}.resid_pre`` patched),
so layers do not compound, as in Inseq; the forwards of all tokens are one ``vmap`` (chunked
with ``lax.map`` when ``token_batch_size`` is given).

Works on every model of the internals protocol that offers the ``value`` site (the native
family and every transformers architecture in the site table), decoder-only.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

__all__ = ["value_zeroing_scores", "normalize_scores", "VALUE_ZEROING_ENC_DEC_ERROR"]

VALUE_ZEROING_ENC_DEC_ERROR = (
    "method='value_zeroing' supports decoder-only models for now: on an encoder-decoder the "
    "encoder self-attention, decoder self-attention and cross-attention values are three "
    "separate zeroings. Use a decoder-only model, or method='attention' on this one.")


def _states(out: dict, n_layers: int) -> jax.Array:
    caps = out["captured"]
    layers = [caps[f"blocks.{l}.resid_post"] for l in range(n_layers - 1)]
    return jnp.stack(layers + [caps["final_norm"]], axis=-2).astype(jnp.float32)  # [B,L,n,H]


def _cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    # torch.nn.CosineSimilarity(eps=1e-8): x·y / max(|x|·|y|, eps)
    num = jnp.sum(a * b, axis=-1)
    den = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-8)
    return 1.0 - num / den


def value_zeroing_scores(fns, *, target_ids: jax.Array, target_mask: jax.Array,
                         token_batch_size: Optional[int] = None) -> jax.Array:
    """Raw value-zeroing distances of a decoder-only model.

    Args:
      fns: the model functions (:class:`jaxattr.internals.ModelFunctions`).
      target_ids, target_mask: ``[B, L]`` ids and padding mask (1 = real token).
      token_batch_size: zeroings run at once (``None``: all ``L`` in one ``vmap``).

    Returns:
      ``[B, L_token, L_position, layers]``: ``1 − cos`` between the clean and the corrupted
      output state of each layer at each position when the token's values are zeroed in that
      layer. In a causal decoder a token never changes earlier positions (exactly 0 there).
    """
    if fns.is_encoder_decoder:
        raise ValueError(VALUE_ZEROING_ENC_DEC_ERROR)
    sites = fns.sites()
    n_layers = sum(1 for s in sites if s.endswith(".resid_post"))
    if f"blocks.{n_layers - 1}.value" not in sites:
        raise ValueError("this model offers no 'blocks.{l}.value' site (its class is not in "
                         "jaxattr's site table), which value zeroing needs.")
    capture = tuple(f"blocks.{l}.resid_post" for l in range(n_layers - 1)) + ("final_norm",)
    clean_out = fns.forward(target_ids=target_ids, target_mask=target_mask, capture=capture)
    clean = _states(clean_out, n_layers)
    inputs = {l: clean_out["captured"][f"blocks.{l - 1}.resid_post"]
              for l in range(1, n_layers)}
    L = target_ids.shape[1]

    def corrupted(j):
        keep = (jnp.arange(L) != j)[None, :, None]
        patch = {f"blocks.{l}.value": (lambda v: v * keep.astype(v.dtype))
                 for l in range(n_layers)}
        patch.update({f"blocks.{l}.resid_pre": (lambda _, x=x: x) for l, x in inputs.items()})
        out = fns.forward(target_ids=target_ids, target_mask=target_mask, capture=capture,
                          patch=patch)
        return _cosine_distance(clean, _states(out, n_layers))  # [B, L, layers]

    tokens = jnp.arange(L)
    if token_batch_size is None or token_batch_size >= L:
        dist = jax.vmap(corrupted)(tokens)
    else:
        dist = jax.lax.map(corrupted, tokens, batch_size=int(token_batch_size))
    return jnp.moveaxis(dist, 0, 1)  # [B, L_token, L_position, layers]


def normalize_scores(scores: jax.Array, valid: jax.Array, *,
                     threshold: float = 1e-5) -> jax.Array:
    """Inseq's post-processing: scores below ``threshold`` become 0, and each column (one
    position and layer) is divided by its sum over the ``valid`` tokens (left as is when that
    sum is 0).

    Args:
      scores: ``[..., L_token, T, layers]``; valid: broadcastable boolean mask of the tokens
        that count (the others are ignored in the sum).
    """
    s = jnp.where(scores < threshold, 0.0, scores)
    total = jnp.sum(jnp.where(valid, s, 0.0), axis=-3, keepdims=True)
    return s / jnp.where(total == 0, 1.0, total)
