"""Where each Hugging Face Flax class keeps its token-embedding lookup.

Paths are ``flax.linen`` module paths (``Module.path``), which for these models equal the
parameter paths. Attributions are taken with respect to the *output of this lookup* times the
model's ``embed_scale`` where its config sets ``scale_embedding`` (BART, mBART, Marian, Pegasus,
XGLM: ``sqrt(d_model)``, which PyTorch — and so Inseq — counts as part of the embedding layer),
before position embeddings and before Gemma's ``sqrt(hidden)`` normaliser (which PyTorch applies
inside the model). Encoder-decoder models that share one embedding module call it
twice per forward — first for the encoder, then for the decoder — and are told apart by the
order of the calls.
"""
from __future__ import annotations

__all__ = ["EMBEDDING_PATHS", "embedding_paths_for"]

_GPT = {"decoder": ("transformer", "wte")}
_MODEL_EMBED = {"decoder": ("model", "embed_tokens")}
_SHARED_MODEL = {"encoder": ("model", "shared"), "decoder": ("model", "shared")}
_SHARED_ROOT = {"encoder": ("shared",), "decoder": ("shared",)}

EMBEDDING_PATHS: dict[str, dict[str, tuple[str, ...]]] = {
    # decoder-only
    "FlaxGPT2LMHeadModel": _GPT,
    "FlaxGPTNeoForCausalLM": _GPT,
    "FlaxGPTJForCausalLM": _GPT,
    "FlaxOPTForCausalLM": {"decoder": ("model", "decoder", "embed_tokens")},
    "FlaxBloomForCausalLM": {"decoder": ("transformer", "word_embeddings")},
    "FlaxXGLMForCausalLM": _MODEL_EMBED,
    "FlaxLlamaForCausalLM": _MODEL_EMBED,
    "FlaxMistralForCausalLM": _MODEL_EMBED,
    "FlaxGemmaForCausalLM": _MODEL_EMBED,
    # encoder-decoder
    "FlaxBartForConditionalGeneration": _SHARED_MODEL,
    "FlaxMBartForConditionalGeneration": _SHARED_MODEL,
    "FlaxMarianMTModel": _SHARED_MODEL,
    "FlaxPegasusForConditionalGeneration": _SHARED_MODEL,
    "FlaxT5ForConditionalGeneration": _SHARED_ROOT,
    "FlaxMT5ForConditionalGeneration": _SHARED_ROOT,
}


def embedding_paths_for(class_name: str):
    """The ``{"encoder"?: path, "decoder": path}`` table entry, or ``None`` if unknown."""
    return EMBEDDING_PATHS.get(class_name)
