"""Value zeroing: all tokens' zeroings as one vmapped program vs one token at a time.

Usage (from the repository root)::

    python benchmarks/value_zeroing.py [--tokens 32] [--repeats 3]

Times (warm: compiled once, then the best of ``--repeats``) ``value_zeroing_scores`` with
``token_batch_size=None`` (every token's corrupted forward in one ``vmap``) and
``token_batch_size=1`` (a ``lax.map`` running the same forward token after token, the order
of work of Inseq's per-token loop, without its Python and hook overheads), on the native tiny
Llama checkpoint and a tiny GPT-2 (transformers Flax class). Prints the ratio and checks that
both give the same numbers. Inseq itself cannot be timed here: its value zeroing fails under
transformers 4.57 on both families (see README, "Value zeroing").
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxattr
from jaxattr.testing import make_model
from jaxattr.value_zeroing import value_zeroing_scores

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = ("the cat sat on the mat and the dog slept near the door while a bird sang in the "
         "tree by the old house on the hill").split()


def _time(fn, repeats):
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def tiny_models() -> dict:
    """The two models of this benchmark (and of ``alti.py``), by display name."""
    gpt2, tok = make_model("gpt2", layers=4)
    return {"native llama (tiny, 3 layers)": jaxattr.load_model(
                os.path.join(HERE, "native_side", "ckpt", "llama")),
            "gpt2 Flax (tiny, 4 layers)": jaxattr.load_model(gpt2, tokenizer=tok)}


def arguments():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    return ap.parse_args()


def main():
    args = arguments()
    run = jax.jit(value_zeroing_scores, static_argnames=("token_batch_size",))
    models = tiny_models()
    print(f"load: {os.getloadavg()}  devices: {jax.devices()}")
    print(f"{'model':32s} {'tokens':>6s} {'vmapped s':>10s} {'one by one s':>13s} {'ratio':>6s}"
          f" {'max |diff|':>10s}")
    for name, model in models.items():
        text = " ".join(WORDS * 4)
        ids = model.tokenizer(text)["input_ids"][:args.tokens]
        ids = jnp.asarray([ids], jnp.int32)
        mask = jnp.ones_like(ids)
        fns = model.adapter
        vm = _time(lambda: run(fns, target_ids=ids, target_mask=mask), args.repeats)
        one = _time(lambda: run(fns, target_ids=ids, target_mask=mask, token_batch_size=1),
                    args.repeats)
        diff = float(np.abs(np.asarray(run(fns, target_ids=ids, target_mask=mask))
                            - np.asarray(run(fns, target_ids=ids, target_mask=mask,
                                             token_batch_size=1))).max())
        print(f"{name:32s} {ids.shape[1]:6d} {vm:10.4f} {one:13.4f} {one / vm:6.1f} {diff:10.2e}")


if __name__ == "__main__":
    main()
