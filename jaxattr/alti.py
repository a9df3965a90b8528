"""ALTI (Ferrando et al., 2022): how much each token's representation mixes into each state.

In layer ``l`` the attention sublayer's output at position ``i`` is linear in the value
vectors once the attention pattern is fixed, so it splits over the source tokens ``j``::

    attn_out_l(i) = Σ_j T_l(i, j) + b_l(i)
    T_l(i, j)     = attn_out_l(i) with only row j of blocks.{l}.value kept  −  b_l(i)
    b_l(i)        = attn_out_l(i) with every value zeroed (the output-projection bias)

The state after attention is ``y_i = x_i + Σ_j T_l(i, j) + b_l(i)`` with ``x_i`` the clean
``blocks.{l}.resid_pre`` at ``i``; the residual joins token ``i``'s own term:
``T'_l(i, j) = T_l(i, j) + [i = j] x_i``. As in the reference implementation
(mt-upc/transformer-contributions, ``ModelWrapper.get_contributions``), the bias belongs to
the resultant ``y_i`` and to no token's vector, and each token's contribution is its
Manhattan proximity to the resultant (the reference's ``-pairwise_distance(p=1)`` plus
``||y_i||_1``, clipped at 0, its ``min_sum`` scaling)::

    c_l(i, j) = max(0, ||y_i||_1 − ||y_i − T'_l(i, j)||_1) / Σ_k (same for k)

over the tokens ``i`` sees (``j <= i``, not padding); the reference models are post-norm
encoders and fold the norm's linear part into the vectors, while here (pre-norm decoders) the
attention's input norm is inside the values and no norm follows the sum. ALTI is the
rollout ``C_L ··· C_1`` of the per-layer matrices (the MLPs act per token and do not mix).

Every token's decomposition is one forward: row ``j``'s values kept in every layer, each
layer's input restored to the clean ``blocks.{l}.resid_pre`` so layers do not compound; the
forwards of all ``j`` are one ``vmap`` (chunked with ``lax.map`` when ``token_batch_size`` is
given). Works on every decoder-only model of the internals protocol with the ``value`` site and
a sequential or parallel pre-norm residual (GPT-J's parallel MLP reads ``resid_pre``, as ALTI's
MLPs it is left out of the mixing). Refused: encoder-decoder models (ALTI+ is not
implemented), and layouts where a norm follows the attention output (Gemma 2/3, OLMo 2,
post-norm OPT), whose ``attn_out`` is not linear in the values.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from .value_zeroing import value_site_layers

__all__ = ["alti_contributions", "alti_rollout", "alti_scores", "ALTI_ENC_DEC_ERROR",
           "check_alti_model"]

ALTI_ENC_DEC_ERROR = (
    "method='alti' supports decoder-only models: on an encoder-decoder the decoder also mixes "
    "the encoder's states through cross-attention (ALTI+, not implemented). Use a "
    "decoder-only model, or method='attention_rollout' on this one (its encoder-decoder "
    "rollout follows ALTI+'s recurrence with attention weights).")


def check_alti_model(fns) -> int:
    """The number of layers of a model ALTI applies to; a clear error otherwise.

    Raises:
      ValueError: encoder-decoder models, models without the ``blocks.{l}.value`` site, and
        layouts whose attention output is not linear in the values (a norm after the
        attention: Gemma 2/3 and OLMo 2 in the native family, OPT without
        ``do_layer_norm_before``).
    """
    if fns.is_encoder_decoder:
        raise ValueError(ALTI_ENC_DEC_ERROR)
    n_layers = value_site_layers(fns, method="alti", alternative="attention_rollout")
    spec = getattr(fns, "spec", None)
    config = getattr(getattr(fns, "hf_model", None), "config", None)
    if "attn_out" in tuple(getattr(spec, "norms", ())) or (
            getattr(config, "model_type", None) == "opt"
            and not getattr(config, "do_layer_norm_before", True)):
        raise ValueError("method='alti' needs the attention output to be linear in the value "
                         "vectors; this model normalises it before the residual addition "
                         "(a post-attention norm), which ALTI's decomposition here does not "
                         "model. Use method='value_zeroing' or 'attention_rollout' instead.")
    return n_layers


def alti_contributions(fns, *, target_ids: jax.Array, target_mask: jax.Array,
                       token_batch_size: Optional[int] = None) -> jax.Array:
    """Per-layer ALTI contribution matrices of a decoder-only model.

    Args:
      fns: the model functions (:class:`jaxattr.internals.ModelFunctions`).
      target_ids, target_mask: ``[B, L]`` ids and padding mask (1 = real token).
      token_batch_size: decompositions run at once (``None``: all ``L`` in one ``vmap``).

    Returns:
      ``[B, layers, L_position, L_token]``: ``c_l(i, j) >= 0``, each real position's row
      summing to 1 over the real tokens ``j <= i`` (zero elsewhere); a padding position's row
      is the identity row (it then mixes nothing into a rollout).
    """
    n_layers = check_alti_model(fns)
    L = target_ids.shape[1]
    capture = tuple(f"blocks.{l}.{k}" for l in range(n_layers) for k in ("resid_pre", "attn_out"))
    clean = fns.forward(target_ids=target_ids, target_mask=target_mask,
                        capture=capture)["captured"]
    x = jnp.stack([clean[f"blocks.{l}.resid_pre"] for l in range(n_layers)], 1)  # [B,n,L,H]
    attn = jnp.stack([clean[f"blocks.{l}.attn_out"] for l in range(n_layers)], 1)
    x, attn = x.astype(jnp.float32), attn.astype(jnp.float32)
    restore = {f"blocks.{l}.resid_pre": (lambda _, v=clean[f"blocks.{l}.resid_pre"]: v)
               for l in range(1, n_layers)}
    outs = tuple(f"blocks.{l}.attn_out" for l in range(n_layers))

    def kept(keep):  # attn_out of every layer with the value rows ``keep [L]`` only
        patch = {f"blocks.{l}.value": (lambda v: v * keep[None, :, None].astype(v.dtype))
                 for l in range(n_layers)}
        patch.update(restore)
        out = fns.forward(target_ids=target_ids, target_mask=target_mask, capture=outs,
                          patch=patch)["captured"]
        return jnp.stack([out[s] for s in outs], 1).astype(jnp.float32)  # [B, n, L, H]

    bias = kept(jnp.zeros((L,), bool))                                  # [B, n, L, H]
    y = x + attn                                                        # [B, n, L_i, H]
    norm_y = jnp.sum(jnp.abs(y), -1)
    tokens = jnp.arange(L)

    def column(j):  # c(·, j) before normalisation: [B, n, L_i]; T(·, j) is never stored
        t = kept(tokens == j) - bias + jnp.where((tokens == j)[:, None], x, 0.0)
        return jnp.maximum(norm_y - jnp.sum(jnp.abs(y - t), -1), 0.0)

    if token_batch_size is None or token_batch_size >= L:
        c = jax.vmap(column)(tokens)
    else:
        c = jax.lax.map(column, tokens, batch_size=int(token_batch_size))
    c = jnp.moveaxis(c, 0, -1)                                          # [B, n, L_i, L_j]
    eye = jnp.eye(L, dtype=c.dtype)
    real = target_mask > 0
    sees = (jnp.tril(jnp.ones((L, L), bool))[None] & real[:, None, :]
            & real[:, :, None])[:, None]                                # [B, 1, L_i, L_j]
    c = jnp.where(sees, c, 0.0)
    total = jnp.sum(c, -1, keepdims=True)
    c = c / jnp.where(total == 0, 1.0, total)
    return jnp.where(real[:, None, :, None], c, eye[None, None])


def alti_rollout(contributions: jax.Array) -> jax.Array:
    """``C_L ··· C_1`` of ``[..., layers, L, L]`` per-layer matrices -> ``[..., L, L]``
    (row ``i``: the share of each input token in position ``i``'s last state)."""
    n = contributions.shape[-3]
    out = contributions[..., 0, :, :]
    for l in range(1, n):
        out = jnp.matmul(contributions[..., l, :, :], out,
                         precision=jax.lax.Precision.HIGHEST)
    return out


def alti_scores(fns, *, target_ids: jax.Array, target_mask: jax.Array,
                token_batch_size: Optional[int] = None) -> jax.Array:
    """ALTI of a decoder-only model: ``[B, L_position, L_token]``, the rollout of
    :func:`alti_contributions` through all layers (rows of real positions sum to 1 over the
    real tokens they see; zero above the diagonal)."""
    return alti_rollout(alti_contributions(fns, target_ids=target_ids, target_mask=target_mask,
                                           token_batch_size=token_batch_size))
