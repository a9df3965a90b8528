"""Attention flow vs attention rollout through ``model.attribute`` on a tiny model.

Usage (from the repository root)::

    python benchmarks/attention_flow.py [--layers 4] [--tokens 16 32] [--repeats 3]

Times (warm: compiled once, then the best of ``--repeats``) ``model.attribute`` with
``method="attention_rollout"`` (all on device) and ``method="attention_flow"`` (the jitted
forward and ``Â``, then one SciPy max-flow per (generated step, input token) on the host) on a
tiny GPT-2 (transformers Flax class), one prompt of ``tokens // 2`` tokens continued to
``tokens``; prints the host share of the flow run (``flow_from_mixing`` alone) and the
number of max-flow calls.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import jaxattr
from jaxattr.methods.attention_flow import flow_from_mixing, mixing_matrices
from jaxattr.testing import make_model

WORDS = ("the cat sat on the mat and the dog slept near the door while a bird sang in the "
         "tree by the old house on the hill").split()


def _best(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    gpt2, tok = make_model("gpt2", layers=args.layers)
    model = jaxattr.load_model(gpt2, tokenizer=tok)
    print(f"load: {os.getloadavg()}  devices: {jax.devices()}  layers: {args.layers}")
    print(f"{'tokens':>6s} {'steps':>5s} {'rollout s':>10s} {'flow s':>8s} {'ratio':>6s} "
          f"{'host flows s':>12s} {'max-flows':>9s}")
    for n in args.tokens:
        ids = tok(" ".join(WORDS * 4))["input_ids"][:n]
        full = tok.decode(ids)
        prompt = tok.decode(ids[:n // 2])
        kw = dict(show_progress=False)
        roll = _best(lambda: model.attribute(prompt, full, method="attention_rollout", **kw)
                     [0].target_attributions, args.repeats)
        flow = _best(lambda: model.attribute(prompt, full, method="attention_flow", **kw)
                     [0].target_attributions, args.repeats)
        seq = model.attribute(prompt, full, method="attention_rollout", **kw)[0]
        att = model.hf_model(np.asarray([seq.target_ids]), params=model.params,
                             output_attentions=True).attentions
        mix = np.asarray(mixing_matrices(att))[:, 0]              # [layers, L, L]
        q = np.arange(seq.attr_pos_start, seq.attr_pos_end) - 1
        host = _best(lambda: flow_from_mixing(mix, query_positions=q), args.repeats)
        calls = int(sum(p + 1 for p in q))
        print(f"{len(seq.target_ids):6d} {len(q):5d} {roll:10.4f} {flow:8.4f} "
              f"{flow / roll:6.1f} {host:12.4f} {calls:9d}")


if __name__ == "__main__":
    main()
