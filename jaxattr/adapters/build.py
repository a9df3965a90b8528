"""Building a :class:`~jaxattr.adapters.ModelAdapter` for a Hugging Face Flax model: the
embedding-path and architecture tables, the checks, and the error that says what to pass
for a class jaxattr does not know."""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from .adapter import ModelAdapter, _get_path
from .architectures import architecture_for
from .embeddings import embedding_paths_for
from .flax_guard import check_flax_config, max_exact_length

__all__ = ["UnknownEmbeddingPathError", "make_adapter", "seen_embedding_paths"]


class UnknownEmbeddingPathError(ValueError):
    """The model class has no entry in the embedding-path table."""


def seen_embedding_paths(hf_model, *, is_encoder_decoder: bool) -> list:
    """Run a tiny forward and list the module paths of every ``nn.Embed`` called with token
    ids, in call order (used to say what to pass when a class is unknown)."""
    seen: list = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, nn.Embed):
            path = "/".join(context.module.path)
            if path not in seen:
                seen.append(path)
        return next_fun(*args, **kwargs)

    ids = jnp.zeros((1, 2), jnp.int32)
    with nn.intercept_methods(interceptor):
        if is_encoder_decoder:
            hf_model(input_ids=ids, decoder_input_ids=ids)
        else:
            hf_model(input_ids=ids)
    return seen


def _parse_path(p):
    return tuple(p.split("/")) if isinstance(p, str) else tuple(p)


def make_adapter(hf_model, *, embedding_paths: Optional[dict] = None, params=None,
                 head_path: Optional[str] = None) -> ModelAdapter:
    """Build the adapter of a Hugging Face Flax model.

    Args:
      hf_model: a ``transformers`` Flax model instance.
      embedding_paths: override the table: ``{"decoder": "transformer/wte"}`` (plus
        ``"encoder"`` for encoder-decoder models); a module path as ``/``-string or tuple.
      params: parameters to use instead of ``hf_model.params``.
      head_path: module path of the language-model head ``nn.Dense``; default: the
        architecture table's, else ``"lm_head"`` (every Hugging Face Flax LM class's name).
    """
    check_flax_config(hf_model.config)
    is_ed = bool(getattr(hf_model.config, "is_encoder_decoder", False))
    name = type(hf_model).__name__
    table = embedding_paths or embedding_paths_for(name)
    if table is None:
        seen = seen_embedding_paths(hf_model, is_encoder_decoder=is_ed)
        example = ('{"encoder": "...", "decoder": "..."}' if is_ed else '{"decoder": "..."}')
        raise UnknownEmbeddingPathError(
            f"jaxattr does not know where {name} looks up token embeddings. nn.Embed modules "
            f"called in a forward pass: {seen}. Pass the token-embedding path(s) as "
            f"load_model(..., embedding_paths={example}), e.g. embedding_paths="
            f"{{'decoder': '{seen[0] if seen else 'module/path'}'}}.")
    table = {k: _parse_path(v) for k, v in table.items()}
    if "decoder" not in table or (is_ed and "encoder" not in table):
        raise ValueError(f"embedding_paths needs a 'decoder' entry{' and an encoder entry' if is_ed else ''}; "
                         f"got {sorted(table)}.")
    p = hf_model.params if params is None else params
    for side, path in table.items():
        try:
            _get_path(p, path)["embedding"]
        except (KeyError, TypeError):
            raise UnknownEmbeddingPathError(
                f"No embedding table at params path {'/'.join(path)} ({side}) of {name}. "
                f"Check `embedding_paths`; module paths with an nn.Embed: "
                f"{seen_embedding_paths(hf_model, is_encoder_decoder=is_ed)}.") from None
    cfg = hf_model.config
    scale = math.sqrt(cfg.d_model) if getattr(cfg, "scale_embedding", False) else 1.0
    arch = architecture_for(name)
    head = head_path or (arch.head if arch is not None else "lm_head")
    return ModelAdapter(params=p, hf_model=hf_model, decoder_path=table["decoder"],
                        encoder_path=table.get("encoder"), is_encoder_decoder=is_ed,
                        embed_scale=scale, max_length=max_exact_length(cfg), arch=arch,
                        head_path=head)
