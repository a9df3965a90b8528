"""Build the GPT-2-124M-sized random-weight checkpoint used by ``benchmarks/side_by_side.py``.

Run in the SIDE env (torch + transformers + tokenizers), normally through side_by_side.py:

    /work/inseq-venv/bin/python benchmarks/inseq_side/make_bench_checkpoint.py OUT_DIR \
        [--tokenizer DIR] [--tiny]

Creates OUT_DIR with
  * a byte-level BPE tokenizer (GPT2TokenizerFast) trained locally on text found on this
    machine (Debian copyright files under /usr/share/doc and the Python standard library
    sources), target vocabulary 50257; ``<|endoftext|>`` is id 0 (bos = eos = unk = pad);
  * ``GPT2LMHeadModel(GPT2Config())``-sized weights (12 layers, 768 hidden, 12 heads,
    1024 positions, vocab 50257 whatever the tokenizer reaches), random with HF's init
    (std 0.02, seed 0), saved as PyTorch ``model.safetensors``;
  * ``bench_meta.json``: tokenizer vocab size actually reached, corpus size, timings.

``--tokenizer DIR`` copies the tokenizer saved in DIR (``tokenizer.json`` and its config; the
GPU check carries the local one so both machines tokenise alike) instead of training one:
seconds instead of minutes. ``--tiny`` makes a 2-layer, 64-wide, 2-head model (256 positions,
same vocabulary) for the benchmarks' ``--smoke`` dry-runs.

Nothing is downloaded. Takes about 1-2 minutes on 2 CPU cores (seconds with ``--tokenizer``).
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time

SEED = 0
VOCAB = 50257


def corpus_files():
    files = sorted(glob.glob("/usr/share/doc/*/copyright"))
    for root in sorted(glob.glob("/usr/lib/python3.*")):
        files += sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
    return [f for f in files if os.path.isfile(f)]


def iter_text(files):
    for f in files:
        try:
            with open(f, encoding="utf-8", errors="ignore") as fh:
                yield fh.read()
        except OSError:
            continue


def train_tokenizer(out_dir):
    """``(tokenizer, corpus files, corpus characters)``: a byte-level BPE trained locally."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    files = corpus_files()
    n_chars = sum(len(t) for t in iter_text(files))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(iter_text(files), vocab_size=VOCAB, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok_dir = os.path.join(out_dir, "_bpe")
    os.makedirs(tok_dir, exist_ok=True)
    bpe.save_model(tok_dir)
    tok = GPT2TokenizerFast(vocab_file=os.path.join(tok_dir, "vocab.json"),
                            merges_file=os.path.join(tok_dir, "merges.txt"),
                            bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    return tok, len(files), n_chars


TINY = dict(n_layer=2, n_embd=64, n_head=2, n_positions=256)


def main(out_dir, tokenizer_dir=None, tiny=False):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    if tokenizer_dir:
        tok = GPT2TokenizerFast.from_pretrained(tokenizer_dir)
        n_files, n_chars = None, None
    else:
        tok, n_files, n_chars = train_tokenizer(out_dir)
    t_tok = time.time() - t0
    eot = tok.convert_tokens_to_ids("<|endoftext|>")

    torch.manual_seed(SEED)
    cfg = GPT2Config(vocab_size=VOCAB, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
                     **(TINY if tiny else {}))
    model = GPT2LMHeadModel(cfg).eval()  # HF init: normal(0, initializer_range=0.02)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    meta = dict(tokenizer_vocab=len(tok), model_vocab=cfg.vocab_size, corpus_files=n_files,
                corpus_chars=n_chars, tokenizer_from=tokenizer_dir, n_layer=cfg.n_layer,
                n_embd=cfg.n_embd, n_params=n_params, seed=SEED,
                initializer_range=cfg.initializer_range, tokenizer_train_s=round(t_tok, 1),
                total_s=round(time.time() - t0, 1), torch=torch.__version__)
    with open(os.path.join(out_dir, "bench_meta.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tokenizer", default=None, help="copy the tokenizer saved in this dir")
    ap.add_argument("--tiny", action="store_true", help="2 layers, 64 wide (smoke tests)")
    a = ap.parse_args()
    main(a.out_dir, a.tokenizer, a.tiny)
