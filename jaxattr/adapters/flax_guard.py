"""Configurations that transformers' Flax Llama / Mistral / Gemma classes compute wrongly.

transformers 4.x Flax classes hard-code the RoPE base 10000 and ignore ``rope_scaling`` and an
explicit ``head_dim``; Flax Llama has no tied head (its ``lm_head`` is then randomly
initialised) and no MLP bias; Flax Mistral has no attention bias and builds its sliding-window
mask as ``triu(causal, -window)``, which keeps ``window + 1`` keys (PyTorch keeps ``window``)
and, with ``sliding_window: null``, only the diagonal. Measured against the PyTorch classes on
tiny random checkpoints these give logit errors of 0.9 to 3.5, silently. This module refuses
them (:func:`check_flax_config`) and says how long an input may be (:func:`max_exact_length`).
"""
from __future__ import annotations

from typing import Optional

__all__ = ["FlaxConfigError", "check_flax_config", "max_exact_length"]

_GUARDED = ("llama", "mistral", "gemma")


class FlaxConfigError(ValueError):
    """transformers' Flax class would compute this configuration wrongly."""


def _bad(config, field: str, value, why: str) -> FlaxConfigError:
    return FlaxConfigError(
        f"{config.model_type} config field {field}={value!r}: {why} The transformers Flax "
        f"class would give wrong logits without an error. Load the checkpoint directory with "
        "jaxattr.load_model(path), which uses jaxattr's native decoder family for this "
        "architecture.")


def check_flax_config(config) -> None:
    """Raise :class:`FlaxConfigError` naming the field when transformers' Flax class for
    ``config`` (Llama, Mistral, Gemma) computes something other than PyTorch does."""
    kind = getattr(config, "model_type", None)
    if kind not in _GUARDED:
        return
    theta = getattr(config, "rope_theta", 10000.0)
    if theta is not None and float(theta) != 10000.0:
        raise _bad(config, "rope_theta", theta, "the Flax class hard-codes the RoPE base 10000.")
    scaling = getattr(config, "rope_scaling", None)
    if scaling:
        raise _bad(config, "rope_scaling", scaling, "the Flax class ignores RoPE scaling.")
    heads, hidden = config.num_attention_heads, config.hidden_size
    head_dim = getattr(config, "head_dim", None)
    if kind != "gemma" and head_dim is not None and head_dim * heads != hidden:
        raise _bad(config, "head_dim", head_dim,
                   f"the Flax class assumes hidden_size / num_attention_heads = "
                   f"{hidden // heads}.")
    if kind == "llama" and getattr(config, "tie_word_embeddings", False):
        raise _bad(config, "tie_word_embeddings", True,
                   "Flax Llama has no tied head: its lm_head would be randomly initialised.")
    if kind == "llama" and getattr(config, "mlp_bias", False):
        raise _bad(config, "mlp_bias", True, "Flax Llama has no MLP biases.")
    if kind == "mistral" and getattr(config, "attention_bias", False):
        raise _bad(config, "attention_bias", True, "Flax Mistral has no attention biases.")
    if kind == "mistral" and getattr(config, "sliding_window", None) is None:
        raise _bad(config, "sliding_window", None,
                   "Flax Mistral turns a null window into a mask where each token attends "
                   "only to itself.")


def max_exact_length(config) -> Optional[int]:
    """The longest input the Flax class computes exactly (``None``: no limit): Flax Mistral's
    window mask differs from PyTorch's once the input is longer than ``sliding_window``."""
    if getattr(config, "model_type", None) == "mistral":
        return int(config.sliding_window)
    return None
