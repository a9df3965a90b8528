"""Loading Hugging Face Flax checkpoints (Flax or PyTorch safetensors weights)."""
from __future__ import annotations

import os
from typing import Any, Optional

from . import _compat

__all__ = ["load_hf_model", "supported_architectures", "UnsupportedModelError"]


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture has no Flax class in transformers."""


def _auto_classes():
    from transformers import FlaxAutoModelForCausalLM, FlaxAutoModelForSeq2SeqLM
    return FlaxAutoModelForCausalLM, FlaxAutoModelForSeq2SeqLM


def supported_architectures() -> dict:
    """``{"decoder-only": [model types], "encoder-decoder": [model types]}`` with Flax classes."""
    causal, s2s = _auto_classes()
    names = lambda auto: sorted(cfg.model_type for cfg in auto._model_mapping.keys())  # noqa: E731
    return {"decoder-only": names(causal), "encoder-decoder": names(s2s)}


def _has_flax_weights(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f))
               for f in ("flax_model.msgpack", "flax_model.msgpack.index.json"))


def _has_pt_weights(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in (
        "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
        "pytorch_model.bin.index.json"))


def load_hf_model(name_or_path: str, *, dtype: Any = None, **model_kwargs):
    """Load the Flax model for a hub id or a local directory.

    The auto class (causal LM or seq2seq) is chosen from the config. When only PyTorch weights
    exist (``model.safetensors``), they are converted on load with ``from_pt=True`` (no torch
    needed for safetensors). Returns ``(model, config)``.
    """
    _compat.apply()
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(name_or_path)
    causal, s2s = _auto_classes()
    auto = s2s if getattr(config, "is_encoder_decoder", False) else causal
    if type(config) not in auto._model_mapping:
        kinds = supported_architectures()
        raise UnsupportedModelError(
            f"{name_or_path!r} is a {config.model_type!r} model "
            f"({'encoder-decoder' if config.is_encoder_decoder else 'decoder-only'}), which has "
            f"no Flax class in transformers. jaxattr attributes Flax models: supported "
            f"decoder-only types {kinds['decoder-only']}, encoder-decoder types "
            f"{kinds['encoder-decoder']}. Pick a checkpoint of one of these architectures.")
    kwargs = dict(model_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if "from_pt" not in kwargs and os.path.isdir(name_or_path):
        kwargs["from_pt"] = not _has_flax_weights(name_or_path) and _has_pt_weights(name_or_path)
    try:
        model = auto.from_pretrained(name_or_path, config=config, **kwargs)
    except (OSError, EnvironmentError):
        if kwargs.get("from_pt") or os.path.isdir(name_or_path):
            raise
        model = auto.from_pretrained(name_or_path, config=config, from_pt=True, **kwargs)
    return model, config
