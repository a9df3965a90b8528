"""Native llama-like decoders in plain JAX, loaded from Hugging Face safetensors (no torch).

Families: Llama 2/3.x, Mistral, Qwen 2/2.5/3, Gemma 1/2/3 (text), Phi-3/3.5/4, OLMo 2,
SmolLM 1-3, and the mixture-of-experts Mixtral and Qwen 3 MoE. :func:`load_native` reads a checkpoint directory; :class:`NativeDecoder` is the
backend the pipeline and analyses use (:class:`jaxattr.internals.ModelFunctions`).
"""
from .checkpoint import CheckpointError, params_from_tensors, read_tensors
from .native import LAYER_LOOPS, NativeDecoder, NativeModel, load_native
from .spec import (MOE_IMPLS, NATIVE_TYPES, REFUSED_TYPES, DecoderSpec, RopeSpec,
                   UnsupportedConfigError, spec_from_config)

__all__ = ["CheckpointError", "DecoderSpec", "LAYER_LOOPS", "MOE_IMPLS", "NATIVE_TYPES",
           "NativeDecoder", "NativeModel", "REFUSED_TYPES", "RopeSpec", "UnsupportedConfigError",
           "load_native", "params_from_tensors", "read_tensors", "spec_from_config"]
