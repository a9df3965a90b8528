"""The adapter's forward, in composable ``flax.linen`` interceptors.

Three pieces, each one job, nested around one call of the Hugging Face model:

* :func:`embedding_interceptor` replaces the token-embedding lookups (the attributed
  embeddings) and hands them to the ``embed`` site;
* :func:`site_interceptor` reads, patches and adds deltas at the modules of the site table
  (:mod:`jaxattr.adapters.architectures`) and at raw module paths;
* :func:`head_interceptor` gathers the scored positions before the language-model head and
  splits the head off (``return_head``).

:class:`SiteState` holds one forward's capture / patch / delta requests and what was captured.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..internals.sites import is_raw_path, parse_site

__all__ = ["SiteState", "embedding_interceptor", "site_interceptor", "head_interceptor",
           "is_head", "head_fn"]

HEAD_KEY = "<lm_head>"


def is_head(context, head_path: str) -> bool:
    """Whether an intercepted call is the language-model head: the ``nn.Dense`` at
    ``head_path`` (the architecture table's ``head``), or a tied head, which is applied
    unbound and so seen with an empty path and the head's module name."""
    if context.method_name != "__call__" or not isinstance(context.module, nn.Dense):
        return False
    path = "/".join(context.module.path)
    return path == head_path or (path == "" and context.module.name == head_path)


class SiteState:
    """One forward's site requests and captures.

    Args:
      plan: ``{module key: ((name, mode), ...)}``; ``mode`` is ``"in"`` (the module's first
        input) or ``"out"`` (its output, the first element of a tuple).
      shapes: ``{stack: (B, L)}`` token shape of each stack, to put values in ``[B, L, ...]``.
      heads: ``{name: n_heads}`` for ``head_out`` sites (``[B, L, heads, d_head]``).
      capture, patch, delta: the forward's requests (resolved names).
    """

    def __init__(self, plan: dict, shapes: dict, heads: dict, capture: tuple,
                 patch: dict, delta: dict):
        self.plan, self.shapes, self.heads = plan, shapes, heads
        self.capture, self.patch, self.delta = set(capture), patch, delta
        self.captured: dict = {}
        self.hit: set = set()
        self.called: list = []

    def apply(self, name: str, value: jax.Array, view: str = "out") -> jax.Array:
        """Original value -> ``patch`` -> ``+ delta`` -> captured; returned in the module's
        own layout. ``view`` ``"out:qkv:<heads>"`` / ``"out:qkv_per_head:<heads>"``: the site
        is the value part of a fused query-key-value projection's output (GPT-2 / Bloom)."""
        if view.count(":") == 2:
            _, layout, heads = view.split(":")
            return _value_view(value, layout, int(heads),
                               lambda part: self.apply(name, part))
        self.hit.add(name)
        shape = value.shape
        if not is_raw_path(name):
            B, L = self.shapes[parse_site(name).stack]
            value = value.reshape((B, L, self.heads[name], -1) if name in self.heads
                                  else (B, L, -1))
        canonical = value.shape
        if name in self.patch:
            value = self.patch[name](value)
            if tuple(value.shape) != tuple(canonical):
                raise ValueError(f"the patch of site {name!r} returned shape {value.shape}; "
                                 f"the site's value has shape {canonical}.")
        if name in self.delta:
            value = value + self.delta[name].astype(value.dtype)
        if name in self.capture:
            self.captured[name] = value
        return value.reshape(shape)


def site_interceptor(state: SiteState, head_path: str):
    """Apply ``state`` at the modules of its plan (first call of each module only)."""
    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        key = HEAD_KEY if is_head(context, head_path) else "/".join(context.module.path)
        todo = [(n, m) for n, m in state.plan.get(key, ()) if n not in state.hit]
        if not todo:
            if key and key not in state.called:
                state.called.append(key)
            return next_fun(*args, **kwargs)
        for name, mode in todo:
            if mode == "in":
                if args:
                    args = (state.apply(name, args[0]),) + tuple(args[1:])
                else:
                    kwargs = dict(kwargs, hidden_states=state.apply(name,
                                                                    kwargs["hidden_states"]))
        out = next_fun(*args, **kwargs)
        for name, mode in todo:
            if mode.startswith("out"):
                first = state.apply(name, out[0] if isinstance(out, tuple) else out, mode)
                out = (first,) + tuple(out[1:]) if isinstance(out, tuple) else first
        return out
    return interceptor


def _value_view(fused: jax.Array, layout: str, heads: int, fn: Callable) -> jax.Array:
    """``fused`` with its value part ``v [..., heads*d_head]`` replaced by ``fn(v)``.

    ``"qkv"``: ``[q | k | v]`` along the last axis (GPT-2's ``c_attn``); ``"qkv_per_head"``:
    ``[heads, q | k | v]`` (Bloom's ``query_key_value``)."""
    lead = fused.shape[:-1]
    if layout == "qkv":
        q_k, v = jnp.split(fused, [2 * fused.shape[-1] // 3], axis=-1)
        return jnp.concatenate([q_k, fn(v).astype(fused.dtype)], axis=-1)
    per_head = fused.reshape(lead + (heads, -1))
    d = per_head.shape[-1] // 3
    v = fn(per_head[..., 2 * d:].reshape(lead + (heads * d,))).astype(fused.dtype)
    return jnp.concatenate([per_head[..., :2 * d], v.reshape(lead + (heads, d))],
                           axis=-1).reshape(fused.shape)


def embedding_interceptor(roles: dict, replacements: dict, embed_scale: float,
                          on_embed: Callable, embed_roles: frozenset = frozenset()):
    """Replace the token-embedding lookups.

    ``roles`` maps a module path to the roles (``"encoder"``, ``"decoder"``) of its calls in
    order (a shared table is called once per stack); ``replacements[role]`` is the attributed
    embeddings ``[B, L, H]`` or ``None`` (the model's own lookup). ``on_embed(role, emb)``
    sees the attributed embeddings (times ``embed_scale``) of the replaced roles and of
    ``embed_roles`` and returns what flows on. Returns ``(interceptor, calls)``; ``calls`` counts the
    calls per path, to check afterwards that the table was right.
    """
    calls: dict = {}

    def interceptor(next_fun, args, kwargs, context):
        path = tuple(context.module.path)
        if context.method_name != "__call__" or path not in roles:
            return next_fun(*args, **kwargs)
        n = calls.get(path, 0)
        calls[path] = n + 1
        role = roles[path][min(n, len(roles[path]) - 1)]
        emb = replacements[role]
        if emb is None and role not in embed_roles:
            return next_fun(*args, **kwargs)
        if emb is None:
            emb = next_fun(*args, **kwargs) * embed_scale
        else:
            ids = args[0] if args else next(iter(kwargs.values()))
            if tuple(ids.shape) != tuple(emb.shape[:-1]):
                raise ValueError(
                    f"{role} embeddings of shape {emb.shape} do not match the ids {ids.shape} "
                    f"seen at module {'/'.join(path)}.")
        emb = on_embed(role, emb)
        return emb / embed_scale if embed_scale != 1.0 else emb

    return interceptor, calls


def head_interceptor(positions: jax.Array, return_head: bool, head_path: str,
                     target_len: int):
    """Gather the hidden states at ``positions[B, T]`` before the language-model head.

    Returns ``(interceptor, parts)``: ``parts["calls"]`` lists the head calls seen, and with
    ``return_head`` ``parts`` holds what :func:`head_fn` needs (the model's own head runs on
    the stop-gradient of the hidden states; gradients go through the returned head)."""
    parts: dict = {"calls": []}

    def interceptor(next_fun, args, kwargs, context):
        if not (is_head(context, head_path) and len(args) == 1
                and getattr(args[0], "ndim", 0) == 3 and args[0].shape[1] == target_len):
            return next_fun(*args, **kwargs)
        parts["calls"].append(tuple(context.module.path))
        idx = positions[..., None].astype(jnp.int32)
        hidden = jnp.take_along_axis(args[0], idx, axis=1)
        if not return_head:
            return next_fun(hidden, **kwargs)
        out = next_fun(jax.lax.stop_gradient(hidden), **kwargs)
        parts.update(hidden=hidden, out=out, kwargs=kwargs,
                     module=context.module.clone(parent=None),
                     variables=context.module.variables)
        return out

    return interceptor, parts


def head_fn(parts: dict, logits: jax.Array):
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
