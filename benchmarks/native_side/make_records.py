"""Tiny random PyTorch checkpoints of each native family and their PyTorch reference records.

Run in the SIDE env (torch + transformers 4.57), from the repository root:

    /work/inseq-venv/bin/python benchmarks/native_side/make_records.py

For each family in FAMILIES it builds the transformers PyTorch class from a tiny config chosen
so that every feature of the family changes the numbers (RoPE θ 5e5 with llama3 scaling whose
original context is shorter than the inputs, sliding windows shorter than the inputs, both
soft-caps, biases, q/k norms, partial rotary, NoPE layers, ...), perturbs the weights (random
biases and norm weights, which HF initialises to constants), and saves to
``benchmarks/native_side/ckpt/<family>/``: ``config.json``, ``model.safetensors`` (some families
in bfloat16, some sharded), the tokenizer, and ``record.npz``:

* ``ids``, ``mask`` ``[B, L]``: a right-padded batch of the texts in TEXTS;
* ``logits_batch`` ``[B, L, V]``: PyTorch logits of the padded batch;
* ``logits_alone`` ``[B, L, V]``: each sequence run alone (zeros past its length). Dynamic and
  LongRoPE frequencies depend on the padded length in PyTorch; jaxattr uses each sequence's
  own length, so it is compared with these;
* ``grad``, ``ixg`` ``[B, S, L, H]``: for each generated step ``s`` (token ``prompt_len + s``),
  the gradient of its log-probability with respect to ``model.get_input_embeddings()(ids)``
  of the sequence alone, and input x gradient (NaN past the sequence / steps);
* ``prompt_len``, ``length`` ``[B]``;
* MoE families: ``router_margin`` ``[n_layers]``, the smallest gap between the k-th and the
  (k+1)-th router probability over the real tokens (no near-ties, so float32 cannot flip an
  expert choice).

Weights are rounded to bfloat16 first where the checkpoint is stored in bfloat16, and every
PyTorch computation runs in float64, so the records are the exact function of the stored
weights up to float64 rounding. Nothing is downloaded.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "ckpt")
TOKENIZER = os.path.join(HERE, "tokenizer")
PROMPTS = ["The cat sat on the mat and", "Kim has", "Hello world, this"]
TEXTS = ["The cat sat on the mat and the dog slept", "Kim has a red ball and a cup",
         "Hello world, this is a test of"]
V, H, SEED = 316, 32, 0

COMMON = dict(vocab_size=V, hidden_size=H, intermediate_size=48, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, initializer_range=0.15,
              max_position_embeddings=64, bos_token_id=3, eos_token_id=2, pad_token_id=1,
              attn_implementation="eager")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}

FAMILIES = {
    # Llama 3.2-like: θ 5e5 + llama3 scaling, explicit head_dim, GQA, all biases, tied head, bf16
    "llama": ("LlamaConfig", dict(rope_theta=5e5, rope_scaling=LLAMA3, head_dim=16,
                                  attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
              dict(dtype="bfloat16")),
    # Mistral: window 4 < inputs, MQA, θ 1e6, sharded checkpoint
    "mistral": ("MistralConfig", dict(rope_theta=1e6, sliding_window=4, num_key_value_heads=1,
                                      tie_word_embeddings=False), dict(shards=True)),
    # Qwen 2.5: q/k/v biases, sliding window on layers >= 1 only, yarn scaling
    "qwen2": ("Qwen2Config", dict(rope_theta=1e6, use_sliding_window=True, sliding_window=4,
                                  max_position_embeddings=32,
                                  max_window_layers=1, tie_word_embeddings=False,
                                  rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                "original_max_position_embeddings": 8}), {}),
    # Qwen 3: per-head q/k norms, explicit head_dim, dynamic NTK past max_position_embeddings
    "qwen3": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True, attention_bias=True,
                                  max_position_embeddings=8,
                                  rope_scaling={"rope_type": "dynamic", "factor": 2.0}), {}),
    # Gemma 1: sqrt(H) normaliser inside the model, (1+w) RMSNorm, GeGLU, MQA, tied, bf16
    "gemma": ("GemmaConfig", dict(head_dim=16, num_key_value_heads=1,
                                  hidden_activation="gelu_pytorch_tanh"), dict(dtype="bfloat16")),
    # Gemma 2: both soft-caps, query_pre_attn_scalar, alternating windows, pre+post norms
    "gemma2": ("Gemma2Config", dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
                                    attn_logit_softcapping=2.0, final_logit_softcapping=3.0), {}),
    # Gemma 3 (text): q/k norms, local RoPE base on sliding layers, linear scaling on global
    # ones, embedding scale inside the embedding module
    "gemma3_text": ("Gemma3TextConfig", dict(head_dim=16, sliding_window=4, rope_theta=1e6,
                                             rope_local_base_freq=10000.0,
                                             layer_types=["sliding_attention", "full_attention",
                                                          "sliding_attention"],
                                             rope_scaling={"rope_type": "linear", "factor": 8.0},
                                             query_pre_attn_scalar=16,
                                             final_logit_softcapping=5.0), {}),
    # Phi-3: fused qkv / gate-up, partial rotary, LongRoPE (original context 8), window 5
    "phi3": ("Phi3Config", dict(partial_rotary_factor=0.5, sliding_window=5,
                                num_attention_heads=2, num_key_value_heads=1,
                                original_max_position_embeddings=8, max_position_embeddings=32,
                                tie_word_embeddings=False,
                                rope_scaling={"type": "longrope",
                                              "short_factor": [1.0, 1.3, 1.7, 2.0],
                                              "long_factor": [1.0, 2.5, 4.0, 7.0]}), {}),
    # OLMo 2: post-norm blocks, full-width q/k norms, linear scaling
    "olmo2": ("Olmo2Config", dict(rope_theta=5e5, tie_word_embeddings=False,
                                  rope_scaling={"type": "linear", "factor": 3.0}), {}),
    # SmolLM 3: NoPE layers (no_rope_layers[i] == 0 drops RoPE), θ 2e6, tied
    "smollm3": ("SmolLM3Config", dict(rope_theta=2e6, no_rope_layers=[1, 0, 1],
                                      tie_word_embeddings=True), {}),
    # Mixtral: 4 experts, top-2 (renormalised), window 4 < inputs, bf16-stored
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2,
                                      sliding_window=4, rope_theta=1e6,
                                      tie_word_embeddings=False), dict(dtype="bfloat16")),
    # Qwen 3 MoE: 4 experts of width 24, top-2 NOT renormalised (norm_topk_prob false), per-head
    # q/k norms, q/k/v/o biases, explicit head_dim, window 4 on every layer; seed 3: no router
    # near-ties (smallest top-2 vs 3rd probability gap 2.9e-3; seed 0 has 1.3e-4)
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=24, norm_topk_prob=False,
                                         decoder_sparse_step=1, mlp_only_layers=[],
                                         head_dim=16, attention_bias=True,
                                         use_sliding_window=True, sliding_window=4,
                                         tie_word_embeddings=False), dict(seed=3)),
}


def router_margins(model, ids, mask, k):
    """``[n_layers]``: the smallest gap, over the real tokens of the padded batch, between the
    k-th and the (k+1)-th router probability (float64). Top-k routing is discontinuous; a
    large gap means float32 rounding cannot flip an expert choice."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    use_cache=False, output_router_logits=True)
    real = torch.tensor(mask).reshape(-1) > 0
    margins = []
    for logits in out.router_logits:
        probs = torch.softmax(logits.double(), -1)[real]
        top = torch.topk(probs, k + 1, dim=-1).values
        margins.append(float((top[:, k - 1] - top[:, k]).min()))
    return np.array(margins)


def perturb(model, family, dtype):
    """Random biases and norm weights (HF initialises them to 0 / 1), then round to ``dtype``."""
    g = torch.Generator().manual_seed(SEED + 1)
    gemma = family.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_((0.0 if gemma else 1.0) + 0.3 * torch.randn(p.shape, generator=g))
            p.copy_(p.to(dtype).to(p.dtype))


def build(family):
    import transformers as T
    cls_name, extra, opts = FAMILIES[family]
    cfg = dict(COMMON)
    cfg.update(extra)
    config = getattr(T, cls_name)(**cfg)
    torch.manual_seed(opts.get("seed", SEED))
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    dtype = getattr(torch, opts.get("dtype", "float32"))
    perturb(model, family, dtype)
    model.eval()
    return model, config, opts, dtype


def fresh_rotary(model):
    """Recompute RoPE buffers (a cast to bfloat16 rounds them; dynamic RoPE keeps state)."""
    for name in ("rotary_emb", "rotary_emb_local"):
        rot = getattr(model.model, name, None)
        if rot is not None:
            rot.__init__(rot.config)
            rot.double()


def record(model, tok, family):
    model = model.double()
    fresh_rotary(model)
    enc = [tok(t)["input_ids"] for t in TEXTS]
    plens = [len(tok(p)["input_ids"]) for p in PROMPTS]
    for e, p, text, prompt in zip(enc, plens, TEXTS, PROMPTS):
        assert e[:p] == tok(prompt)["input_ids"], (text, prompt)
    L = max(map(len, enc))
    ids = np.full((len(enc), L), tok.pad_token_id, np.int64)
    mask = np.zeros((len(enc), L), np.int64)
    for i, e in enumerate(enc):
        ids[i, :len(e)], mask[i, :len(e)] = e, 1
    with torch.no_grad():
        batch = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      use_cache=False).logits.numpy()
    S = max(len(e) - p for e, p in zip(enc, plens))
    alone = np.zeros_like(batch)
    grad = np.full((len(enc), S, L, H), np.nan)
    ixg = np.full_like(grad, np.nan)
    embed = model.get_input_embeddings()
    for i, (e, p) in enumerate(zip(enc, plens)):
        fresh_rotary(model)    # fresh dynamic-RoPE state for each sequence
        x = embed(torch.tensor([e])).detach().requires_grad_(True)
        logits = model(inputs_embeds=x, use_cache=False).logits[0]
        alone[i, :len(e)] = logits.detach().numpy()
        logp = torch.log_softmax(logits, -1)
        for s, q in enumerate(range(p, len(e))):
            (g,) = torch.autograd.grad(logp[q - 1, e[q]], x, retain_graph=True)
            grad[i, s, :len(e)] = g[0].numpy()
            ixg[i, s, :len(e)] = (g[0] * x[0]).detach().numpy()
    extra = {}
    if getattr(model.config, "num_experts_per_tok", None):
        extra["router_margin"] = router_margins(model, ids, mask,
                                                model.config.num_experts_per_tok)
    return dict(extra, ids=ids, mask=mask, logits_batch=batch.astype(np.float32),
                logits_alone=alone.astype(np.float32), grad=grad.astype(np.float32),
                ixg=ixg.astype(np.float32), prompt_len=np.array(plens),
                length=np.array([len(e) for e in enc]))


def main(families):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    for family in families:
        out = os.path.join(OUT, family)
        shutil.rmtree(out, ignore_errors=True)
        model, config, opts, dtype = build(family)
        copy.deepcopy(model).to(dtype).save_pretrained(out, max_shard_size="20KB" if opts.get("shards") else "5GB")
        tok.save_pretrained(out)
        rec = record(model, tok, family)
        np.savez_compressed(os.path.join(out, "record.npz"), **rec)
        with open(os.path.join(out, "texts.json"), "w") as f:
            json.dump({"prompts": PROMPTS, "texts": TEXTS, "dtype": str(dtype)}, f, indent=1)
        real = rec["mask"] > 0
        assert np.isfinite(rec["logits_batch"][real]).all() and np.isfinite(rec["grad"][
            np.isfinite(rec["grad"])]).all()
        if "router_margin" in rec:
            print(family, "router margins", rec["router_margin"], flush=True)
        print(family, "max |logit|", float(np.abs(rec["logits_batch"][real]).max()),
              "batch-vs-alone", float(np.abs(rec["logits_batch"] - rec["logits_alone"])[
                  real].max()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(FAMILIES))
