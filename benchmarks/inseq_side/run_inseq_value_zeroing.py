"""Inseq 0.7.1 value zeroing on a tiny OPT checkpoint (the decoder-only family where it runs).

Run in the SIDE env (from the repository root):

    /work/inseq-venv/bin/python benchmarks/inseq_side/run_inseq_value_zeroing.py \
        benchmarks/inseq_side/tiny_ckpt benchmarks/inseq_side/inseq_value_zeroing.npz

Under transformers 4.57 Inseq's value zeroing fails on GPT-2 (its source regex finds no
assignment to ``value``) and on Llama-style decoders (their layers return a tensor, not the
tuple its state-patching hook indexes); OPT keeps both (``value_states = self.v_proj(...)`` in
``OPTAttention.forward`` and a tuple from ``OPTDecoderLayer``), so it runs there. This script

* builds ``CKPT_DIR/opt``: ``OPTForCausalLM`` (3 layers, 32 dims, 4 heads, ffn 64, 64
  positions, seed 1234, init std 0.2 as the other tiny checkpoints) with the tiny GPT-2's
  byte-level BPE tokenizer (vocab 400; no BOS added), saved as ``model.safetensors``;
* records Inseq's ``value_zeroing`` on one prompt and forced continuation, target side
  ``[len(target), n_steps, layers]``:
  ``vz/default`` (cosine, every head), ``vz/units`` (``decoder_zeroed_units_indices=
  {0: [1], 2: (0, 2)}``: head 1 in layer 0, heads 0-1 in layer 2, layer 1 not zeroed);
* records that ``similarity_metric="euclidean"`` raises in Inseq 0.7.1 (``torch.cdist`` of two
  ``[B, L, H]`` states is ``[B, L, L]``, assigned into a ``[B, L]`` row): ``euclidean_error``.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

SEED = 1234
PROMPT = "The cat sat on the"
TEXT = "The cat sat on the mat and"
UNITS = {0: [1], 2: (0, 2)}


def build_opt(ckpt_dir: str) -> str:
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM
    out = os.path.join(ckpt_dir, "opt")
    tok = AutoTokenizer.from_pretrained(os.path.join(ckpt_dir, "gpt2"))
    cfg = OPTConfig(vocab_size=400, hidden_size=32, num_hidden_layers=3, ffn_dim=64,
                    num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                    pad_token_id=0, bos_token_id=0, eos_token_id=0, init_std=0.2,
                    do_layer_norm_before=True, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(SEED)
    model = OPTForCausalLM(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def main():
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} CKPT_DIR OUT_FILE.npz")
    ckpt_dir, out_file = sys.argv[1], sys.argv[2]
    path = build_opt(ckpt_dir)
    import inseq
    model = inseq.load_model(path, "value_zeroing")
    record = {"meta/prompt": np.array(PROMPT), "meta/text": np.array(TEXT),
              "meta/units": np.array(repr(UNITS))}
    for name, kw in (("default", {}), ("units", {"decoder_zeroed_units_indices": UNITS})):
        res = model.attribute(PROMPT, TEXT, show_progress=False, **kw)
        seq = res.sequence_attributions[0]
        record[f"vz/{name}"] = seq.target_attributions.float().numpy()
        record["meta/target_ids"] = np.array([t.id for t in seq.target])
    try:
        model.attribute(PROMPT, TEXT, show_progress=False, similarity_metric="euclidean")
        record["euclidean_error"] = np.array("")
    except RuntimeError as e:
        record["euclidean_error"] = np.array(f"{type(e).__name__}: {e}")
    np.savez(out_file, **record)
    for k, v in record.items():
        print(k, v.shape, v if v.ndim == 0 else "")


if __name__ == "__main__":
    main()
