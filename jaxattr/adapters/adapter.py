"""A Hugging Face Flax model as pure functions of token embeddings.

:class:`ModelAdapter` is a ``flax.struct.PyTreeNode``: the parameters are its leaves, the
Hugging Face model object and the configuration are static fields. New parameters therefore
never retrace a jitted function that takes the adapter as an argument.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from .embeddings import embedding_paths_for
from .flax_guard import check_flax_config, max_exact_length

__all__ = ["ModelAdapter", "UnknownEmbeddingPathError", "make_adapter", "seen_embedding_paths"]


class UnknownEmbeddingPathError(ValueError):
    """The model class has no entry in the embedding-path table."""


def _get_path(tree, path):
    for key in path:
        tree = tree[key]
    return tree


class ModelAdapter(struct.PyTreeNode):
    """Pure functions over a Hugging Face Flax model.

    Attributes:
      params: the model parameters (pytree leaves).
      hf_model: the ``transformers`` Flax model object (static; only its ``__call__`` is used).
      encoder_path, decoder_path: module paths of the token-embedding lookups (static).
      is_encoder_decoder: static flag.
      embed_scale: factor the model applies to its embedding lookup (``sqrt(d_model)`` for
        configs with ``scale_embedding=True``: BART, mBART, Marian, Pegasus, XGLM). Attributed
        embeddings include it, as in PyTorch/Inseq, where it is part of the embedding layer.
      max_length: the longest sequence (real tokens) the Flax class computes like PyTorch
        (``None``: no limit; Flax Mistral: its sliding window). Checked host side where
        sequences are encoded.
    """
    params: Any
    hf_model: Any = struct.field(pytree_node=False)
    decoder_path: tuple = struct.field(pytree_node=False)
    encoder_path: Optional[tuple] = struct.field(pytree_node=False, default=None)
    is_encoder_decoder: bool = struct.field(pytree_node=False, default=False)
    embed_scale: float = struct.field(pytree_node=False, default=1.0)
    max_length: Optional[int] = struct.field(pytree_node=False, default=None)

    # ------------------------------------------------------------------ embeddings
    def embedding_matrix(self, side: str = "decoder") -> jax.Array:
        """``[V, H]`` token-embedding table of ``side`` (``"encoder"`` or ``"decoder"``)."""
        path = self.encoder_path if side == "encoder" else self.decoder_path
        return _get_path(self.params, path)["embedding"]

    def embed(self, ids: jax.Array, *, side: str = "decoder") -> jax.Array:
        """Attributed token embeddings ``[B, L, H]`` for ``ids[B, L]``: the model's
        ``nn.Embed`` output times ``embed_scale``, before position embeddings."""
        table = self.embedding_matrix(side)
        dtype = getattr(self.hf_model, "dtype", table.dtype)
        out = jnp.take(table, ids.astype(jnp.int32), axis=0).astype(dtype)
        return out * self.embed_scale if self.embed_scale != 1.0 else out

    # ------------------------------------------------------------------ forward
    def logits(self, **kwargs) -> jax.Array:
        """Teacher-forced logits ``[B, L, V]``; see :meth:`forward` for the arguments."""
        return self.forward(**kwargs)["logits"]

    def forward(
        self,
        *,
        target_ids: jax.Array,
        target_mask: jax.Array,
        target_embeds: Optional[jax.Array] = None,
        source_ids: Optional[jax.Array] = None,
        source_mask: Optional[jax.Array] = None,
        source_embeds: Optional[jax.Array] = None,
        dropout_rng: Optional[jax.Array] = None,
        site: Optional[tuple] = None,
        site_value: Optional[jax.Array] = None,
        output_attentions: bool = False,
        positions: Optional[jax.Array] = None,
        return_head: bool = False,
    ) -> dict:
        """One teacher-forced forward; ``logits[:, i]`` predicts target token ``i+1``.

        Decoder-only: ``target_*`` is the whole sequence (prompt + continuation). Encoder-
        decoder: ``source_*`` feeds the encoder, ``target_*`` (starting with the decoder start
        token) the decoder. Given ``*_embeds`` replace the embedding lookup of that side
        (intercepted inside the traced function), which is what attribution differentiates.
        ``dropout_rng`` turns dropout on (train mode), e.g. for MC-dropout targets.

        ``site`` (a module path tuple) captures that module's output (its first element when
        the module returns a tuple), returned as ``"site"`` ``[B, L, H_site]``; with
        ``site_value`` the output is replaced by it (layer attribution).
        ``output_attentions`` adds the model's attention weights under ``"attentions"``.

        ``positions[B, T]`` asks for the logits at those positions only: the hidden states are
        gathered *before* the language-model head (the one ``nn.Dense`` with ``vocab_size``
        features), so neither the head's matmul nor its backward pass runs over positions that
        are not scored — for GPT-2-sized vocabularies the head is the largest matmul.

        ``return_head`` (with ``positions``) also returns the head split off the network:
        ``"hidden"`` ``[B, T, H]``, the head's input at the scored positions, ``"head"``, a
        pure function ``(hidden, head_params) -> logits [B, T, V]`` (the head ``nn.Dense``
        plus whatever the model adds to its output afterwards, e.g. BART's
        ``final_logits_bias``) and ``"head_params"``, its arrays. Then ``"logits"`` is
        computed from the stop-gradient of ``"hidden"``: differentiate through ``head``. All
        three are ``None`` when no single ``nn.Dense`` head was found.

        Returns ``{"logits": [B, L, V] (or [B, T, V] with positions), "site": array or None,
        "attentions": dict or None}`` (plus ``"hidden"``, ``"head"`` and ``"head_params"`` with ``return_head``).
        """
        vocab = getattr(self.hf_model.config, "vocab_size", None)
        head_calls: list = []
        head_parts: dict = {}
        replacements = {"encoder": source_embeds, "decoder": target_embeds}
        roles: dict[tuple, list] = {}
        if self.is_encoder_decoder:
            roles.setdefault(tuple(self.encoder_path), []).append("encoder")
        roles.setdefault(tuple(self.decoder_path), []).append("decoder")
        calls: dict[tuple, int] = {}
        site = tuple(site) if site is not None else None
        captured: dict = {}
        seen_paths: list = []

        def interceptor(next_fun, args, kwargs, context):
            if context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            if (positions is not None and isinstance(context.module, nn.Dense)
                    and context.module.features == vocab and len(args) == 1
                    and getattr(args[0], "ndim", 0) == 3
                    and args[0].shape[1] == target_ids.shape[1]):
                head_calls.append(tuple(context.module.path))
                idx = positions[..., None].astype(jnp.int32)
                hidden = jnp.take_along_axis(args[0], idx, axis=1)
                if not return_head:
                    return next_fun(hidden, **kwargs)
                # The model's own logits see the hidden states as constants: gradients reach
                # them only through the returned ``head`` (the caller's cheaper path).
                out = next_fun(jax.lax.stop_gradient(hidden), **kwargs)
                head_parts.update(hidden=hidden, out=out, kwargs=kwargs,
                                  module=context.module.clone(parent=None),
                                  variables=context.module.variables)
                return out
            path = tuple(context.module.path)
            if site is not None and path == site and "site" not in captured:
                out = next_fun(*args, **kwargs)
                first = out[0] if isinstance(out, tuple) else out
                captured["site"] = first
                if site_value is None:
                    return out
                if tuple(site_value.shape) != tuple(first.shape):
                    raise ValueError(f"site value of shape {site_value.shape} does not match "
                                     f"the output {first.shape} of {'/'.join(path)}.")
                value = site_value.astype(first.dtype)
                return (value,) + tuple(out[1:]) if isinstance(out, tuple) else value
            if site is not None and path not in seen_paths:
                seen_paths.append(path)
            if path not in roles:
                return next_fun(*args, **kwargs)
            n = calls.get(path, 0)
            calls[path] = n + 1
            role = roles[path][min(n, len(roles[path]) - 1)]
            emb = replacements[role]
            if emb is None:
                return next_fun(*args, **kwargs)
            ids = args[0] if args else next(iter(kwargs.values()))
            if tuple(ids.shape) != tuple(emb.shape[:-1]):
                raise ValueError(
                    f"{role} embeddings of shape {emb.shape} do not match the ids {ids.shape} "
                    f"seen at module {'/'.join(path)}.")
            return emb / self.embed_scale if self.embed_scale != 1.0 else emb

        kwargs = dict(params=self.params)
        if dropout_rng is not None:
            kwargs.update(dropout_rng=dropout_rng, train=True)
        if output_attentions:
            kwargs["output_attentions"] = True
        with nn.intercept_methods(interceptor):
            if self.is_encoder_decoder:
                out = self.hf_model(
                    input_ids=source_ids, attention_mask=source_mask,
                    decoder_input_ids=target_ids, decoder_attention_mask=target_mask, **kwargs)
            else:
                out = self.hf_model(input_ids=target_ids, attention_mask=target_mask, **kwargs)
        for path, role_list in roles.items():
            if calls.get(path, 0) < len(role_list):
                raise RuntimeError(
                    f"The embedding module {'/'.join(path)} was called {calls.get(path, 0)} "
                    f"time(s) but {len(role_list)} call(s) were expected; this model class does "
                    "not use the path of jaxattr's table. Pass `embedding_paths=` to load_model.")
        if site is not None and "site" not in captured:
            names = ["/".join(p) for p in seen_paths if p]
            raise ValueError(f"No module at layer path {'/'.join(site)!r} was called. Module "
                             f"paths called in a forward pass: {names}.")
        logits = out.logits
        if positions is not None and len(head_calls) != 1:
            if head_calls:
                raise RuntimeError(f"found {len(head_calls)} language-model heads "
                                   f"{head_calls}; expected one.")
            logits = jnp.take_along_axis(logits, positions[..., None].astype(jnp.int32), 1)
        attentions = None
        if output_attentions:
            keys = ("attentions", "encoder_attentions", "decoder_attentions", "cross_attentions")
            attentions = {k: getattr(out, k) for k in keys if getattr(out, k, None) is not None}
        result = {"logits": logits, "site": captured.get("site"), "attentions": attentions}
        if return_head:
            result.update(hidden=None, head=None, head_params=None)
            if head_parts:
                if head_parts["out"].shape != logits.shape:
                    raise RuntimeError(
                        f"the language-model head's output {head_parts['out'].shape} and the "
                        f"model's logits {logits.shape} differ; attribute with "
                        "split_head=False for this model.")
                head, head_params = _head_fn(head_parts, logits)
                result.update(hidden=head_parts["hidden"], head=head, head_params=head_params)
        return result


def _head_fn(parts: dict, logits: jax.Array):
    """``(head, head_params)`` from a captured head call: ``head(hidden, head_params) ->
    logits`` re-applies the ``nn.Dense`` with the weights in ``head_params["variables"]`` and
    adds ``head_params["offset"]``, the model's post-head term (``logits - dense output``:
    absent, or a bias such as BART's ``final_logits_bias``). The model's head ran on the
    stop-gradient of the hidden states, so the offset depends on parameters only."""
    module, kwargs = parts["module"], parts["kwargs"]
    params = {"variables": parts["variables"]}
    if logits is not parts["out"]:
        params["offset"] = logits - parts["out"]   # a function of parameters only

    def head(hidden, head_params):
        out = module.apply(head_params["variables"], hidden, **kwargs)
        if "offset" in head_params:
            out = out + head_params["offset"].astype(out.dtype)
        return out

    return head, params


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


def make_adapter(hf_model, *, embedding_paths: Optional[dict] = None, params=None) -> ModelAdapter:
    """Build the adapter of a Hugging Face Flax model.

    Args:
      hf_model: a ``transformers`` Flax model instance.
      embedding_paths: override the table: ``{"decoder": "transformer/wte"}`` (plus
        ``"encoder"`` for encoder-decoder models); a module path as ``/``-string or tuple.
      params: parameters to use instead of ``hf_model.params``.
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
    return ModelAdapter(params=p, hf_model=hf_model, decoder_path=table["decoder"],
                        encoder_path=table.get("encoder"), is_encoder_decoder=is_ed,
                        embed_scale=scale, max_length=max_exact_length(cfg))
