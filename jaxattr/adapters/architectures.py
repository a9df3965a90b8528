"""Where each Hugging Face Flax class keeps the modules behind the canonical site names.

One :class:`Architecture` per class: per stack (``None`` for decoder-only, ``"encoder"`` /
``"decoder"``) the module paths (``{l}`` is the block index) whose inputs or outputs *are* the
sites of :mod:`jaxattr.internals.sites`, and the path of the language-model head.

What each name reads, per family (the adapter intercepts these modules):

======================  =====================================================================
site                    module
======================  =====================================================================
``resid_pre``           input of block ``l`` (GPT-2/Neo/J, Bloom: ``h/{l}``; OPT, XGLM, Llama,
                        Mistral, Gemma, BART-likes: ``layers/{l}``; T5: ``block/{l}``)
``resid_post``          output of block ``l`` (the next block's input)
``attn_out``            the self-attention module's output, as added to the residual stream
                        (Bloom adds the residual inside its attention module: its output
                        dropout, before the addition)
``mlp_out``             the MLP's output as added (BART-likes, OPT, XGLM: ``fc2``; Bloom:
                        ``dense_4h_to_h``, before the residual addition in its MLP)
``head_out``            the input of the attention output projection, split into heads
``value``               the self-attention's value projection output (``v_proj``; T5 ``v``;
                        the value third of GPT-2's fused ``c_attn``; Bloom's fused
                        ``query_key_value``, per head ``[q | k | v]``)
``cross_attn_out``      the decoder's cross-attention output (``encoder_attn``,
                        T5 ``EncDecAttention``)
``attn_pattern``        the model's own attention weights (``output_attentions``)
``final_norm``          the language-model head's input (decoder-only and ``decoder.``: after
                        the final norm; T5 also scales it by ``d_model**-0.5`` when the head is
                        tied); ``encoder.final_norm``: the encoder's last norm (mBART, Pegasus,
                        T5; absent for BART and Marian, whose encoders end without one)
======================  =====================================================================

Residual layouts: GPT-J is *parallel* (``resid_post = resid_pre + attn_out + mlp_out``, both
sublayers read ``resid_pre``); GPT-2, GPT-Neo, OPT (pre-norm configs), Bloom, XGLM, Llama,
Mistral, Gemma, mBART, Pegasus and T5 are *sequential pre-norm*
(``resid_post = resid_pre + attn_out [+ cross_attn_out] + mlp_out``). BART and Marian are
*post-norm*: each sublayer's sum is normalised (``resid_post = LN(LN(resid_pre + attn_out) +
mlp_out)``), so the residual stream is not a plain sum of the sublayer outputs there.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = ["StackPaths", "Architecture", "ARCHITECTURES", "architecture_for"]


@dataclasses.dataclass(frozen=True)
class StackPaths:
    """Module paths of one stack; ``{l}`` is the block index.

    Attributes:
      n_layers, n_heads: config attribute names of the block and head counts.
      block, attn, mlp: block, self-attention (output as added) and MLP (output as added).
      out_proj: the attention output projection (its input is ``head_out``).
      value: the module whose output holds the self-attention value vectors.
      value_layout: ``"plain"`` (the output is the values), ``"qkv"`` (``[q | k | v]`` along
        the features, GPT-2) or ``"qkv_per_head"`` (``[heads, q | k | v]``, Bloom).
      cross: the cross-attention module (decoder stack of encoder-decoder models).
      final_norm: encoder stacks only: the module whose output is ``encoder.final_norm``.
      attentions: the model output field holding this stack's attention weights.
    """
    n_layers: str
    n_heads: str
    block: str
    attn: str
    mlp: str
    out_proj: str
    value: str = ""
    value_layout: str = "plain"
    attentions: str = "attentions"
    cross: Optional[str] = None
    final_norm: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The site table of one model class.

    Attributes:
      stacks: ``((stack, StackPaths), ...)`` with stack ``None``, ``"encoder"``, ``"decoder"``.
      head: path of the language-model head ``nn.Dense``, which the adapter's head piece
        intercepts to gather the scored positions and split the head off (tied heads are
        applied unbound and seen with an empty path and this module name). Every class of
        the table names it ``lm_head``; a new class states its own here.
    """
    stacks: tuple
    head: str = "lm_head"


def _decoder(prefix, *, n_layers, n_heads, attn, mlp, out_proj, value, value_layout="plain"):
    return StackPaths(n_layers=n_layers, n_heads=n_heads, block=prefix + "/{l}",
                      attn=prefix + "/{l}/" + attn, mlp=prefix + "/{l}/" + mlp,
                      out_proj=prefix + "/{l}/" + out_proj, value=prefix + "/{l}/" + value,
                      value_layout=value_layout)


def _bart_like(encoder_norm: bool) -> Architecture:
    def stack(side):
        p = f"model/{side}/layers/{{l}}"
        return StackPaths(
            n_layers=f"{side}_layers", n_heads=f"{side}_attention_heads", block=p,
            attn=p + "/self_attn", mlp=p + "/fc2", out_proj=p + "/self_attn/out_proj",
            value=p + "/self_attn/v_proj",
            attentions=f"{side}_attentions",
            cross=p + "/encoder_attn" if side == "decoder" else None,
            final_norm="model/encoder/layer_norm" if side == "encoder" and encoder_norm else None)
    return Architecture(stacks=(("encoder", stack("encoder")), ("decoder", stack("decoder"))))


def _t5() -> Architecture:
    def stack(side):
        p = f"{side}/block/{{l}}"
        return StackPaths(
            n_layers="num_layers" if side == "encoder" else "num_decoder_layers",
            n_heads="num_heads", block=p, attn=p + "/layer/0/SelfAttention",
            mlp=p + ("/layer/1" if side == "encoder" else "/layer/2") + "/DenseReluDense",
            out_proj=p + "/layer/0/SelfAttention/o", value=p + "/layer/0/SelfAttention/v",
            attentions=f"{side}_attentions",
            cross=p + "/layer/1/EncDecAttention" if side == "decoder" else None,
            final_norm="encoder/final_layer_norm" if side == "encoder" else None)
    return Architecture(stacks=(("encoder", stack("encoder")), ("decoder", stack("decoder"))))


_LLAMA = Architecture(stacks=((None, _decoder(
    "model/layers", n_layers="num_hidden_layers", n_heads="num_attention_heads",
    attn="self_attn", mlp="mlp", out_proj="self_attn/o_proj", value="self_attn/v_proj")),))

ARCHITECTURES: dict[str, Architecture] = {
    "FlaxGPT2LMHeadModel": Architecture(stacks=((None, _decoder(
        "transformer/h", n_layers="n_layer", n_heads="n_head", attn="attn", mlp="mlp",
        out_proj="attn/c_proj", value="attn/c_attn", value_layout="qkv")),)),
    "FlaxGPTNeoForCausalLM": Architecture(stacks=((None, _decoder(
        "transformer/h", n_layers="num_layers", n_heads="num_heads", attn="attn", mlp="mlp",
        out_proj="attn/attention/out_proj", value="attn/attention/v_proj")),)),
    "FlaxGPTJForCausalLM": Architecture(stacks=((None, _decoder(
        "transformer/h", n_layers="n_layer", n_heads="n_head", attn="attn", mlp="mlp",
        out_proj="attn/out_proj", value="attn/v_proj")),)),
    "FlaxOPTForCausalLM": Architecture(stacks=((None, _decoder(
        "model/decoder/layers", n_layers="num_hidden_layers", n_heads="num_attention_heads",
        attn="self_attn", mlp="fc2", out_proj="self_attn/out_proj",
        value="self_attn/v_proj")),)),
    "FlaxBloomForCausalLM": Architecture(stacks=((None, _decoder(
        "transformer/h", n_layers="n_layer", n_heads="n_head",
        attn="self_attention/resid_dropout", mlp="mlp/dense_4h_to_h",
        out_proj="self_attention/dense", value="self_attention/query_key_value",
        value_layout="qkv_per_head")),)),
    "FlaxXGLMForCausalLM": Architecture(stacks=((None, _decoder(
        "model/layers", n_layers="num_layers", n_heads="attention_heads", attn="self_attn",
        mlp="fc2", out_proj="self_attn/out_proj", value="self_attn/v_proj")),)),
    "FlaxLlamaForCausalLM": _LLAMA,
    "FlaxMistralForCausalLM": _LLAMA,
    "FlaxGemmaForCausalLM": _LLAMA,
    "FlaxBartForConditionalGeneration": _bart_like(encoder_norm=False),
    "FlaxMarianMTModel": _bart_like(encoder_norm=False),
    "FlaxMBartForConditionalGeneration": _bart_like(encoder_norm=True),
    "FlaxPegasusForConditionalGeneration": _bart_like(encoder_norm=True),
    "FlaxT5ForConditionalGeneration": _t5(),
    "FlaxMT5ForConditionalGeneration": _t5(),
}


def architecture_for(class_name: str) -> Optional[Architecture]:
    """The site table of a Flax class name, or ``None`` when jaxattr has none (then only
    ``embed`` / ``final_norm`` and raw module paths are offered)."""
    return ARCHITECTURES.get(class_name)
