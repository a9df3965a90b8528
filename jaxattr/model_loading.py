"""``load_model``: a bundled name, hub id, local directory or model instance -> an
:class:`~jaxattr.model.AttributionModel`."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

from .catalog import list_methods
from .model import AttributionModel

__all__ = ["load_model"]


def _is_native_checkpoint(path: str) -> bool:
    """A local directory whose ``config.json`` names a native family and that holds
    safetensors weights (or names a family the native loader refuses with a clear error)."""
    from .models import NATIVE_TYPES, REFUSED_TYPES
    from .models.checkpoint import config_dict, has_safetensors
    if not os.path.isdir(path):
        return False
    cfg = config_dict(path)
    return bool(cfg) and cfg.get("model_type") in NATIVE_TYPES + REFUSED_TYPES \
        and has_safetensors(path)


def _bundled_or_hub(name: str) -> str:
    """The directory of bundled model ``name``, or ``name`` itself when it can be a hub id.
    Fails at once, without the network, for a path that does not exist and for a name that
    looks like a mistyped bundled one."""
    import difflib
    from . import zoo
    if name in zoo.BUNDLED:
        return zoo.path(name)
    bundled = ", ".join(zoo.BUNDLED)
    if name.startswith(("/", "./", "../", "~")) or name.endswith(("/", os.sep)) \
            or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise FileNotFoundError(f"no such directory: {name!r}. Give a local model directory, a "
                                f"hub id (e.g. 'gpt2') or a bundled model ({bundled}).")
    close = difflib.get_close_matches(name, list(zoo.BUNDLED), n=1, cutoff=0.6)
    if close or name.startswith("toy-"):
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"no bundled model {name!r}; bundled models: {bundled}.{hint}")
    return name


def load_model(name_or_path: Any, attribution_method: Union[str, Callable, None] = None, *,
               tokenizer: Any = None, dtype: Any = None, embedding_paths: Optional[dict] = None,
               **model_kwargs) -> AttributionModel:
    """Load a model for attribution.

    Args:
      name_or_path: bundled model name (``"toy-recall"``, ``"toy-mt"``; see
        :mod:`jaxattr.zoo`), hub id, local directory (Flax ``flax_model.msgpack`` or PyTorch
        ``model.safetensors`` weights; the latter are converted with ``from_pt=True``), or an
        already built ``transformers`` Flax model instance. A local directory of a Llama,
        Mistral, Qwen 2/3, Gemma 1-3, Phi-3, OLMo 2 or SmolLM 3 checkpoint with safetensors
        weights (single or sharded) loads into jaxattr's native decoder family
        (:mod:`jaxattr.models`; no torch, no transformers model class).
      attribution_method: the default ``method`` of :meth:`AttributionModel.attribute`
        (as in Inseq's ``load_model("gpt2", "integrated_gradients")``).
      tokenizer: a tokenizer instance or name; default: the checkpoint's own.
      dtype: computation dtype (e.g. ``jnp.bfloat16``; native family: default float32, a
        bfloat16 checkpoint is upcast unless ``dtype=jnp.bfloat16``).
      embedding_paths: token-embedding module paths for classes jaxattr does not know.
      **model_kwargs: passed to ``from_pretrained``. Native family: only ``layer_loop``
        (``"scan"``, the default: compile time independent of depth; ``"unroll"``: per-layer
        weights, 5-9% faster warm on XLA CPU at GPT-2 size, compile time grows with depth).
    """
    if isinstance(name_or_path, str) and not os.path.exists(name_or_path):
        name_or_path = _bundled_or_hub(name_or_path)
    native = isinstance(name_or_path, str) and _is_native_checkpoint(name_or_path)
    if "layer_loop" in model_kwargs and not native:
        raise ValueError("layer_loop applies to the native decoder family only (a local "
                         "Llama / Mistral / Qwen / Gemma / Phi-3 / OLMo 2 / SmolLM 3 "
                         "checkpoint directory); drop it for this model.")
    if native:
        layer_loop = model_kwargs.pop("layer_loop", "scan")
        if model_kwargs:
            raise ValueError(f"the native decoder family takes only layer_loop as a model "
                             f"option; got {sorted(model_kwargs)}.")
        from .models import load_native
        hf_model = load_native(name_or_path, dtype=dtype, layer_loop=layer_loop)
        name = name_or_path
    elif isinstance(name_or_path, str):
        from .loading import load_hf_model
        try:
            hf_model, _ = load_hf_model(name_or_path, dtype=dtype, **model_kwargs)
        except OSError as e:
            if os.path.isdir(name_or_path):
                raise
            from . import zoo
            raise OSError(f"{name_or_path!r} is neither a bundled model ({', '.join(zoo.BUNDLED)})"
                          f" nor a local directory, and loading it from the Hugging Face hub "
                          f"failed: {e}") from e
        name = name_or_path
    else:
        hf_model, name = name_or_path, None
    if tokenizer is None or isinstance(tokenizer, str):
        if tokenizer is None and not isinstance(name_or_path, str):
            raise ValueError("Pass `tokenizer=` when giving a model instance.")
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or name_or_path)
    if isinstance(attribution_method, str) and attribution_method not in list_methods():
        raise ValueError(f"Unknown attribution method {attribution_method!r}. Available: "
                         f"{list_methods()} (jaxattr.list_methods()).")
    return AttributionModel(hf_model, tokenizer, name=name, embedding_paths=embedding_paths,
                            attribution_method=attribution_method)
