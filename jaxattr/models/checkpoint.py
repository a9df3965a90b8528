"""Hugging Face safetensors checkpoints (single or sharded) -> the native parameter pytree.

No torch and no transformers model class: tensors are read with ``safetensors`` (bfloat16
included), PyTorch ``Linear`` weights ``[out, in]`` are transposed to ``[in, out]``, fused
layouts (Phi-3 ``qkv_proj`` and ``gate_up_proj``) are split, and per-layer tensors are stacked
on a leading layer axis (:mod:`jaxattr.models.decoder` lists the tree). Every tensor of the
checkpoint is used, or :class:`CheckpointError` names the leftovers; a tensor the config
needs and the checkpoint lacks is an error too (never a random initialisation).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from .spec import DecoderSpec

__all__ = ["CheckpointError", "read_tensors", "params_from_tensors", "has_safetensors",
           "config_dict"]

#: Derived buffers that some old checkpoints carry; they are recomputed from the config.
_DERIVED = (".rotary_emb.inv_freq",)
_NORMS = {  # block-norm role -> checkpoint name, per layout
    "pre": {"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
    "sandwich": {"attn_in": "input_layernorm", "attn_out": "post_attention_layernorm",
                 "mlp_in": "pre_feedforward_layernorm", "mlp_out": "post_feedforward_layernorm"},
    "post": {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"},
}


class CheckpointError(ValueError):
    """The checkpoint's tensors do not match the config (missing, left over, wrong shape)."""


def has_safetensors(path: str) -> bool:
    """Whether ``path`` holds ``model.safetensors`` or ``model.safetensors.index.json``."""
    return any(os.path.isfile(os.path.join(path, f))
               for f in ("model.safetensors", "model.safetensors.index.json"))


def read_tensors(path: str) -> dict:
    """``{name: jax array}`` of ``path/model.safetensors`` or of every shard listed in
    ``path/model.safetensors.index.json``."""
    from safetensors import safe_open
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path!r} has neither model.safetensors nor "
                              "model.safetensors.index.json.")
    out = {}
    for name in files:
        with safe_open(os.path.join(path, name), framework="flax") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    return out


def _layout(spec: DecoderSpec) -> dict:
    if spec.norms == ("attn_out", "mlp_out"):
        return _NORMS["post"]
    return _NORMS["sandwich"] if "attn_out" in spec.norms else _NORMS["pre"]


#: per MoE family: (block, router, {role: expert weight name}) under ``layers.{l}.``
_MOE_NAMES = {
    "mixtral": ("block_sparse_moe", "gate", {"gate": "w1", "down": "w2", "up": "w3"}),
    "qwen3_moe": ("mlp", "gate", {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}),
}


def _experts(spec: DecoderSpec, take, base: str) -> dict:
    """One MoE layer's ``{"router": [H, E], "gate"/"up": [E, H, F], "down": [E, F, H]}``
    (``None`` where a tensor is missing; ``take`` records it)."""
    H, F, E = spec.hidden_size, spec.intermediate_size, spec.n_experts
    block, router, names = _MOE_NAMES[spec.model_type]
    w = take(f"{base}{block}.{router}.weight", (E, H))
    out = {"router": None if w is None else w.T}
    shapes = {"gate": (F, H), "up": (F, H), "down": (H, F)}
    for role, name in names.items():
        ws = [take(f"{base}{block}.experts.{e}.{name}.weight", shapes[role]) for e in range(E)]
        out[role] = None if any(w is None for w in ws) else jnp.stack([w.T for w in ws])
    return out


def params_from_tensors(spec: DecoderSpec, tensors: dict, *, dtype: Any = None,
                        source: str = "checkpoint", stack: bool = True) -> dict:
    """The parameter pytree of ``spec`` from checkpoint ``tensors`` (cast to ``dtype``;
    default float32); ``params["layers"]`` stacked ``[n_layers, ...]``, or with
    ``stack=False`` a tuple of per-layer dicts (:mod:`jaxattr.models.decoder`).

    Raises:
      CheckpointError: a needed tensor is missing, has the wrong shape, or some tensor is
        left over; the message names them.
    """
    dtype = jnp.dtype(dtype or jnp.float32)
    left = {k: v for k, v in tensors.items() if not k.endswith(_DERIVED)}
    prefix = "model." if any(k.startswith("model.") for k in left) else ""
    missing: list = []

    def take(name, shape=None):
        key = prefix + name if not name.startswith("lm_head") else name
        if key not in left:
            missing.append(key)
            return None
        value = left.pop(key)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise CheckpointError(f"{source}: tensor {key} has shape {tuple(value.shape)}, the "
                                  f"config implies {tuple(shape)}.")
        return jnp.asarray(value, dtype)

    H, nh, kv, hd, F = (spec.hidden_size, spec.n_heads, spec.n_kv_heads, spec.head_dim,
                        spec.intermediate_size)
    q_out, kv_out = nh * hd, kv * hd
    per_layer: dict = {}

    def put(name, value):
        per_layer.setdefault(name, []).append(value)

    for layer in range(spec.n_layers):
        base = f"layers.{layer}."
        if spec.fused_qkv:
            w = take(base + "self_attn.qkv_proj.weight", (q_out + 2 * kv_out, H))
            if w is not None:
                put("q", w[:q_out].T)
                put("k", w[q_out:q_out + kv_out].T)
                put("v", w[q_out + kv_out:].T)
        else:
            for name, out in (("q", q_out), ("k", kv_out), ("v", kv_out)):
                w = take(base + f"self_attn.{name}_proj.weight", (out, H))
                put(name, None if w is None else w.T)
        w = take(base + "self_attn.o_proj.weight", (H, q_out))
        put("o", None if w is None else w.T)
        for name in spec.attn_bias:
            out = {"q": q_out, "k": kv_out, "v": kv_out, "o": H}[name]
            put(f"{name}_bias", take(base + f"self_attn.{name}_proj.bias", (out,)))
        if spec.qk_norm is not None:
            width = {"head": (hd, hd), "full": (q_out, kv_out)}[spec.qk_norm]
            put("q_norm", take(base + "self_attn.q_norm.weight", (width[0],)))
            put("k_norm", take(base + "self_attn.k_norm.weight", (width[1],)))
        if spec.n_experts:
            for name, value in _experts(spec, take, base).items():
                put(name, value)
        elif spec.fused_gate_up:
            w = take(base + "mlp.gate_up_proj.weight", (2 * F, H))
            if w is not None:
                put("gate", w[:F].T)
                put("up", w[F:].T)
        else:
            for name in ("gate", "up"):
                w = take(base + f"mlp.{name}_proj.weight", (F, H))
                put(name, None if w is None else w.T)
        if not spec.n_experts:
            w = take(base + "mlp.down_proj.weight", (H, F))
            put("down", None if w is None else w.T)
        if spec.mlp_bias:
            for name, out in (("gate", F), ("up", F), ("down", H)):
                put(f"{name}_bias", take(base + f"mlp.{name}_proj.bias", (out,)))
        for role, name in _layout(spec).items():
            put(role, take(base + f"{name}.weight", (H,)))

    params = {"embed": take("embed_tokens.weight", (spec.vocab_size, H)),
              "final_norm": take("norm.weight", (H,))}
    if spec.tied:
        if "lm_head.weight" in left:   # saved alongside although tied: must be the same
            head = left.pop("lm_head.weight")
            if params["embed"] is not None and not np.array_equal(
                    np.asarray(head, np.float32), np.asarray(params["embed"], np.float32)):
                raise CheckpointError(f"{source}: tie_word_embeddings is true but lm_head.weight "
                                      "differs from the embedding matrix.")
    else:
        w = take("lm_head.weight", (spec.vocab_size, H))
        params["head"] = None if w is None else w.T
    if missing:
        raise CheckpointError(f"{source}: the config needs tensors the checkpoint lacks: "
                              f"{missing[:8]}{' …' if len(missing) > 8 else ''} "
                              f"({len(missing)} in all). They would otherwise be random.")
    if left:
        names = sorted(left)
        raise CheckpointError(f"{source}: checkpoint tensors the native {spec.model_type} "
                              f"model does not use: {names[:8]}{' …' if len(names) > 8 else ''} "
                              f"({len(names)} in all). The config and the weights disagree "
                              "(e.g. biases or q/k norms the config does not declare).")
    if stack:
        params["layers"] = {k: jnp.stack(v) for k, v in per_layer.items()}
    else:
        params["layers"] = tuple({k: v[i] for k, v in per_layer.items()}
                                 for i in range(spec.n_layers))
    return params


def config_dict(path: str) -> Optional[dict]:
    """``path/config.json`` as a dict, or ``None``."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return json.load(f)
