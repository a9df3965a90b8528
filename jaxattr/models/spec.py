"""What a llama-like decoder computes, read from a Hugging Face config.

:class:`DecoderSpec` is a frozen, hashable description (a static argument of jitted programs);
:func:`spec_from_config` builds it from a ``transformers`` config of a supported family and
refuses (:class:`UnsupportedConfigError`, naming the field) any setting that changes the
computation and is not implemented. The families differ only in these fields:

==============  ====================================================================
field           families
==============  ====================================================================
norms           pre-norm (Llama, Mistral, Qwen, Phi-3, SmolLM, Gemma 1), pre + post
                (Gemma 2/3), post only (OLMo 2)
norm_style      ``w * x̂`` (Llama), ``(1 + w) * x̂`` (Gemma), ``w * x̂`` before the cast (OLMo 2)
qk_norm         per head (Qwen 3, Gemma 3), full width (OLMo 2)
embed_scale     ``sqrt(H)`` in the forward (Gemma 1/2) or in the embedding module (Gemma 3)
layer_window    per-layer sliding windows (Mistral, Qwen 2/3, Phi-3, Gemma 2/3, SmolLM 3)
layer_rope      0 = no RoPE (SmolLM 3 NoPE layers), 1 = global RoPE, 2 = local RoPE (Gemma 3)
n_experts       sparse mixture-of-experts MLPs (Mixtral, Qwen 3 MoE; 0: dense MLPs)
==============  ====================================================================

Mixture of experts (``n_experts > 0``): every layer's MLP is ``n_experts`` SwiGLU experts of
width ``intermediate_size`` and a router ``[H, n_experts]``; each token takes the softmax of its
router logits over all experts (float32), keeps the ``experts_per_token`` largest, renormalises
them to sum to 1 when ``norm_topk_prob`` (Mixtral always), and sums the selected experts'
outputs weighted by them. ``router_jitter_noise`` multiplies the router input by uniform noise
in PyTorch only in training mode; at inference (what jaxattr computes) it changes nothing, so it
is accepted and ignored. ``output_router_logits`` only adds an auxiliary loss in training.
Qwen 3 MoE layers that are dense (``mlp_only_layers``, ``decoder_sparse_step`` > 1) mixed with
sparse ones are refused (the layers run stacked under one ``lax.scan``), as is Qwen 2 MoE
(its shared expert with a sigmoid gate is not implemented).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

__all__ = ["DecoderSpec", "RopeSpec", "UnsupportedConfigError", "NATIVE_TYPES", "REFUSED_TYPES",
           "MOE_IMPLS", "spec_from_config"]

#: ``model_type`` values the native family loads.
NATIVE_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3",
                "olmo2", "smollm3", "mixtral", "qwen3_moe")
#: ``model_type`` values routed to the native family only to be refused with a clear error
#: (rather than reaching a transformers class that lacks them, or none).
REFUSED_TYPES = ("qwen2_moe",)
#: how the expert MLPs are computed (:func:`jaxattr.models.moe.moe_mlp`)
MOE_IMPLS = ("dense", "ragged", "blocked")

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu",
                "relu": "relu"}
_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


class UnsupportedConfigError(ValueError):
    """A config setting that changes the computation and that the native family lacks."""


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """One rotary embedding.

    Attributes:
      kind: one of ``default, linear, dynamic, yarn, longrope, llama3``.
      theta: the base.
      dim: rotary dimensions per head (``head_dim * partial_rotary_factor``).
      scaling: the ``rope_scaling`` items as a sorted tuple of ``(key, value)`` (lists as
        tuples).
      max_positions: ``max_position_embeddings``; ``original_max``: the config's
        ``original_max_position_embeddings`` (LongRoPE), else ``None``.
    """
    kind: str = "default"
    theta: float = 10000.0
    dim: int = 0
    scaling: tuple = ()
    max_positions: int = 0
    original_max: Optional[int] = None

    def get(self, key, default=None):
        """A ``rope_scaling`` value."""
        return dict(self.scaling).get(key, default)


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """A llama-like decoder-only transformer (see the module docstring for the families).

    Attributes:
      model_type: the Hugging Face ``model_type``.
      vocab_size, hidden_size, n_layers, n_heads, n_kv_heads, head_dim, intermediate_size.
      act: gated-MLP activation (``silu``: SwiGLU, ``gelu_tanh`` / ``gelu``: GeGLU).
      norm_eps: RMSNorm epsilon; norm_style: ``llama`` | ``gemma`` | ``olmo2``.
      norms: the block norms present, of ``attn_in, attn_out, mlp_in, mlp_out``.
      qk_norm: ``None``, ``"head"`` (over ``head_dim``) or ``"full"`` (over all heads).
      attn_bias: projections with a bias, of ``q, k, v, o``; mlp_bias: gate/up/down biases.
      fused_qkv, fused_gate_up: checkpoint layout (Phi-3).
      attn_scale: query scale (``head_dim ** -0.5`` or ``query_pre_attn_scalar ** -0.5``).
      attn_softcap, final_softcap: ``c * tanh(x / c)`` on attention scores / logits.
      embed_scale: factor on the token embeddings; embed_scale_in_lookup: whether PyTorch's
        embedding module applies it (then attributed embeddings include it).
      tied: the head is the embedding matrix.
      rope, rope_local: global and local rotary embeddings.
      layer_window: per layer, the sliding window (keys ``q - w < k <= q``) or ``None``.
      layer_rope: per layer, 0 (no RoPE), 1 (``rope``) or 2 (``rope_local``).
      n_experts: experts per MoE layer (0: dense MLPs); experts_per_token: the top-k;
        norm_topk_prob: renormalise the kept probabilities to sum to 1; moe_impl: ``"dense"``
        (every expert on every token, weighted by a mostly-zero routing matrix; works under
        ``vmap``), ``"ragged"`` (tokens sorted by expert, ``jax.lax.ragged_dot``; JAX 0.10
        cannot ``vmap`` it, and on CPU it costs more) or ``"blocked"`` (sorted tokens in
        one-expert blocks under ``lax.scan``: fewer FLOPs, faster plain forwards);
        :mod:`jaxattr.models.moe` compares them.
    """
    model_type: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    act: str = "silu"
    norm_eps: float = 1e-6
    norm_style: str = "llama"
    norms: tuple = ("attn_in", "mlp_in")
    qk_norm: Optional[str] = None
    attn_bias: tuple = ()
    mlp_bias: bool = False
    fused_qkv: bool = False
    fused_gate_up: bool = False
    attn_scale: float = 1.0
    attn_softcap: Optional[float] = None
    final_softcap: Optional[float] = None
    embed_scale: float = 1.0
    embed_scale_in_lookup: bool = False
    tied: bool = False
    rope: RopeSpec = RopeSpec()
    rope_local: Optional[RopeSpec] = None
    layer_window: tuple = ()
    layer_rope: tuple = ()
    n_experts: int = 0
    experts_per_token: int = 0
    norm_topk_prob: bool = True
    moe_impl: str = "dense"


def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _err(config, field, value, why) -> UnsupportedConfigError:
    return UnsupportedConfigError(
        f"{config.model_type} config field {field}={value!r}: {why} jaxattr's native decoder "
        "does not implement it and refuses to compute something else.")


def _rope(config, *, theta, scaling, dim) -> RopeSpec:
    scaling = dict(scaling or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise _err(config, "rope_scaling", scaling,
                   f"RoPE type {kind!r} is not one of {list(_ROPE_TYPES)}.")
    need = {"linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
            "longrope": ("long_factor", "short_factor"),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings")}.get(kind, ())
    missing = [k for k in need if k not in scaling]
    if missing:
        raise _err(config, "rope_scaling", scaling, f"{kind} RoPE needs {missing}.")
    scaling.pop("type", None)
    scaling["rope_type"] = kind
    return RopeSpec(kind=kind, theta=float(theta), dim=dim, scaling=_freeze(scaling),
                    max_positions=int(config.max_position_embeddings),
                    original_max=getattr(config, "original_max_position_embeddings", None))


def _windows(config, kind: str) -> tuple:
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if kind in ("mistral", "phi3", "mixtral", "qwen3_moe"):
        return (window,) * n
    if kind == "llama" or kind == "olmo2" or kind == "gemma":
        return (None,) * n
    if types is None:
        raise _err(config, "layer_types", None, "this family needs per-layer attention types.")
    bad = sorted(set(types) - {"full_attention", "sliding_attention"})
    if bad:
        raise _err(config, "layer_types", types, f"attention types {bad} are not implemented.")
    if len(types) != n:
        raise _err(config, "layer_types", types, f"expected {n} entries.")
    on = {"qwen2": True, "qwen3": True, "smollm3": getattr(config, "use_sliding_window", False),
          "gemma2": True, "gemma3_text": True}[kind]
    if kind in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
        on = False
    out = tuple(window if (on and t == "sliding_attention") else None for t in types)
    if any(w is not None for w in out) and (not isinstance(window, int) or window < 1):
        raise _err(config, "sliding_window", window, "sliding layers need a positive window.")
    return out


def _moe_fields(config, kind: str) -> dict:
    """The mixture-of-experts fields of a Mixtral or Qwen 3 MoE config."""
    n = config.num_hidden_layers

    def need(field):
        value = getattr(config, field, None)
        if value is None:
            raise _err(config, field, None, f"a {kind} config needs it.")
        return value

    if kind == "mixtral":
        experts, norm, width = need("num_local_experts"), True, config.intermediate_size
        sparse = [True] * n
    else:
        experts, norm = need("num_experts"), bool(getattr(config, "norm_topk_prob", False))
        width = need("moe_intermediate_size")
        step = getattr(config, "decoder_sparse_step", 1)
        only = list(getattr(config, "mlp_only_layers", None) or [])
        if experts > 0 and (not isinstance(step, int) or step < 1):
            raise _err(config, "decoder_sparse_step", step, "it must be a positive integer.")
        sparse = [experts > 0 and i not in only and (i + 1) % step == 0 for i in range(n)]
        if not any(sparse):     # every layer dense: the Qwen 3 computation
            return {}
        if not all(sparse):
            dense = [i for i in range(n) if not sparse[i]]
            field = ("mlp_only_layers", only) if only else ("decoder_sparse_step", step)
            raise _err(config, field[0], field[1],
                       f"layers {dense} would be dense and the others sparse; mixed dense and "
                       "sparse layers are not implemented (the layers run stacked under one "
                       "lax.scan).")
    k = need("num_experts_per_tok")
    if not 1 <= k <= experts:
        raise _err(config, "num_experts_per_tok", k, f"it must be in [1, {experts}].")
    return dict(n_experts=int(experts), experts_per_token=int(k), norm_topk_prob=norm,
                intermediate_size=int(width))


def spec_from_config(config) -> DecoderSpec:
    """The :class:`DecoderSpec` of a ``transformers`` config (``AutoConfig``) of a family in
    :data:`NATIVE_TYPES`.

    Raises:
      UnsupportedConfigError: an unknown family, activation, RoPE type or attention type, a
        quantised checkpoint, bidirectional attention, or an inconsistent shape; the message
        names the field.
    """
    kind = getattr(config, "model_type", None)
    if kind == "qwen2_moe":
        raise _err(config, "shared_expert_intermediate_size",
                   getattr(config, "shared_expert_intermediate_size", None),
                   "Qwen 2 MoE adds a shared expert gated by a sigmoid to every sparse layer.")
    if kind not in NATIVE_TYPES:
        raise UnsupportedConfigError(
            f"model_type {kind!r} is not a native family; native families: "
            f"{list(NATIVE_TYPES)}.")
    if getattr(config, "quantization_config", None):
        raise _err(config, "quantization_config", config.quantization_config,
                   "quantised weights are not dequantised.")
    if getattr(config, "use_bidirectional_attention", False):
        raise _err(config, "use_bidirectional_attention", True, "attention is causal here.")
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv:
        raise _err(config, "num_key_value_heads", kv,
                   f"it must divide num_attention_heads={heads}.")
    act_name = getattr(config, "hidden_activation", None) if kind.startswith("gemma") else None
    act_name = act_name or config.hidden_act
    if act_name not in _ACTIVATIONS:
        raise _err(config, "hidden_act", act_name,
                   f"activation not one of {sorted(_ACTIVATIONS)}.")
    partial = float(getattr(config, "partial_rotary_factor", 1.0) or 1.0)
    if partial != 1.0 and kind != "phi3":
        raise _err(config, "partial_rotary_factor", partial,
                   "PyTorch applies partial rotary only for Phi-3 among these families.")
    rot = int(head_dim * partial)
    if rot % 2:
        raise _err(config, "partial_rotary_factor", partial, "the rotary dim must be even.")
    rope = _rope(config, theta=getattr(config, "rope_theta", 10000.0),
                 scaling=getattr(config, "rope_scaling", None), dim=rot)
    if rope.kind == "longrope" and len(rope.get("short_factor")) != rot // 2:
        raise _err(config, "rope_scaling", dict(rope.scaling),
                   f"LongRoPE factors need {rot // 2} entries.")
    n = config.num_hidden_layers
    gemma = kind in ("gemma", "gemma2", "gemma3_text")
    fields = dict(
        model_type=kind, vocab_size=config.vocab_size, hidden_size=hidden, n_layers=n,
        n_heads=heads, n_kv_heads=kv, head_dim=head_dim,
        intermediate_size=config.intermediate_size, act=_ACTIVATIONS[act_name],
        norm_eps=float(getattr(config, "rms_norm_eps", 1e-6)),
        norm_style="gemma" if gemma else ("olmo2" if kind == "olmo2" else "llama"),
        attn_scale=head_dim ** -0.5, tied=bool(getattr(config, "tie_word_embeddings", False)),
        rope=rope, layer_window=_windows(config, kind), layer_rope=(1,) * n)
    bias = bool(getattr(config, "attention_bias", False))
    fields["attn_bias"] = ("q", "k", "v", "o") if bias else ()
    fields["mlp_bias"] = bool(getattr(config, "mlp_bias", False))
    if kind == "qwen2":
        fields["attn_bias"] = ("q", "k", "v")
    if kind == "phi3":
        fields.update(fused_qkv=True, fused_gate_up=True, attn_bias=())
    if kind in ("mistral", "mixtral"):
        fields["attn_bias"] = ()
    if kind in ("mixtral", "qwen3_moe"):
        fields.update(_moe_fields(config, kind))
    if kind in ("qwen3", "gemma3_text", "qwen3_moe"):
        fields["qk_norm"] = "head"
    if kind == "olmo2":
        fields.update(qk_norm="full", norms=("attn_out", "mlp_out"))
    if kind in ("gemma2", "gemma3_text"):
        fields["norms"] = ("attn_in", "attn_out", "mlp_in", "mlp_out")
    if gemma:
        fields["embed_scale"] = math.sqrt(hidden)
        fields["embed_scale_in_lookup"] = kind == "gemma3_text"
    if kind in ("gemma2", "gemma3_text"):
        qpas = getattr(config, "query_pre_attn_scalar", None)
        if qpas:
            fields["attn_scale"] = float(qpas) ** -0.5
        fields["attn_softcap"] = getattr(config, "attn_logit_softcapping", None)
        fields["final_softcap"] = getattr(config, "final_logit_softcapping", None)
    if kind == "gemma3_text":
        fields["rope_local"] = _rope(config, theta=config.rope_local_base_freq, scaling=None,
                                     dim=rot)
        fields["layer_rope"] = tuple(2 if w is not None else 1 for w in fields["layer_window"])
    if kind == "smollm3":
        flags = getattr(config, "no_rope_layers", None) or [1] * n
        if len(flags) != n:
            raise _err(config, "no_rope_layers", flags, f"expected {n} entries.")
        fields["layer_rope"] = tuple(1 if f else 0 for f in flags)   # 1 means: uses RoPE
    return DecoderSpec(**fields)
