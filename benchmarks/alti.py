"""ALTI: the vmapped program vs one token at a time, and vs value zeroing on the same model.

Usage (from the repository root)::

    python benchmarks/alti.py [--tokens 32] [--repeats 3]

Times (warm: compiled once, then the best of ``--repeats``) ``alti_scores`` with
``token_batch_size=None`` (every token's decomposition forward in one ``vmap``) and
``token_batch_size=1`` (a ``lax.map``, one forward after another), and
``value_zeroing_scores`` (vmapped; the same number of forwards, one per token) on the native
tiny Llama checkpoint and a tiny GPT-2 (transformers Flax class). Checks that both ALTI forms
give the same numbers. No PyTorch tool is timed: Inseq 0.7.1 has no ALTI.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr.alti import alti_scores
from jaxattr.value_zeroing import value_zeroing_scores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from value_zeroing import WORDS, _time, arguments, tiny_models  # noqa: E402


def main():
    args = arguments()
    alti = jax.jit(alti_scores, static_argnames=("token_batch_size",))
    vz = jax.jit(value_zeroing_scores, static_argnames=("token_batch_size",))
    models = tiny_models()
    print(f"load: {os.getloadavg()}  devices: {jax.devices()}")
    print(f"{'model':32s} {'tokens':>6s} {'alti s':>9s} {'alti 1-by-1 s':>13s} "
          f"{'value zeroing s':>15s} {'alti/vz':>7s} {'max |diff|':>10s}")
    for name, model in models.items():
        ids = model.tokenizer(" ".join(WORDS * 4))["input_ids"][:args.tokens]
        ids = jnp.asarray([ids], jnp.int32)
        mask = jnp.ones_like(ids)
        fns = model.adapter
        a = _time(lambda: alti(fns, target_ids=ids, target_mask=mask), args.repeats)
        one = _time(lambda: alti(fns, target_ids=ids, target_mask=mask, token_batch_size=1),
                    args.repeats)
        v = _time(lambda: vz(fns, target_ids=ids, target_mask=mask), args.repeats)
        diff = float(np.abs(np.asarray(alti(fns, target_ids=ids, target_mask=mask))
                            - np.asarray(alti(fns, target_ids=ids, target_mask=mask,
                                              token_batch_size=1))).max())
        print(f"{name:32s} {ids.shape[1]:6d} {a:9.4f} {one:13.4f} {v:15.4f} {a / v:7.2f} "
              f"{diff:10.2e}")


if __name__ == "__main__":
    main()
