"""Exact causal truncation (``prefix_groups="exact"``) vs the one-pass program on the native
decoder at GPT-2-124M size.

    PYTHONPATH=$PWD python benchmarks/causal_chunks.py [--batch 2] [--n-steps 16] [--repeats 3]

A random Llama config of GPT-2-124M size (hidden 768, 12 layers, 12 heads, MLP 3072, vocab
32000, the config of ``native_vs_flax.py``), a batch of 16 prompt + 16 generated tokens
(random ids; the second row is right-padded by 3 tokens unless ``--no-pad``), ``logprob``
target. For saliency and integrated gradients (``--n-steps`` nodes), prints XLA's FLOP count of
each compiled program, the median warm time of ``--repeats`` round-robin rounds, the ratio,
and the largest attribution difference relative to the largest attribution. Each program is
compiled once (its FLOPs read and the same executable timed). No torch, no tokenizer.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("JAXATTR_CACHE_DIR", "0")


def native_model(layers=12, vocab=32000, hidden=768, heads=12, mlp=3072, seed=0):
    """A :class:`~jaxattr.models.NativeDecoder` with random weights of a Llama config."""
    import jax
    import jax.numpy as jnp
    from transformers import LlamaConfig
    from jaxattr.models import NativeDecoder, spec_from_config
    spec = spec_from_config(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
        rope_theta=10000.0, tie_word_embeddings=False))
    hd = hidden // heads
    shapes = {"q": (hidden, heads * hd), "k": (hidden, heads * hd), "v": (hidden, heads * hd),
              "o": (heads * hd, hidden), "gate": (hidden, mlp), "up": (hidden, mlp),
              "down": (mlp, hidden)}
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    lay = {k: 0.02 * jax.random.normal(next(keys), (layers,) + s) for k, s in shapes.items()}
    lay.update({n: jnp.ones((layers, hidden)) for n in spec.norms})
    params = {"embed": 0.02 * jax.random.normal(next(keys), (vocab, hidden)),
              "head": 0.02 * jax.random.normal(next(keys), (hidden, vocab)),
              "final_norm": jnp.ones((hidden,)), "layers": lay}
    return NativeDecoder(params=params, spec=spec)


def make_batch(batch=2, prompt=16, cont=16, vocab=32000, pad=3, seed=1):
    """A :class:`~jaxattr.pipeline.ModelBatch` of ``prompt + cont`` tokens per row, row ``i``
    right-padded by ``i * pad`` tokens (fewer steps)."""
    import jax.numpy as jnp
    import numpy as np
    from jaxattr.pipeline import ModelBatch
    rng = np.random.default_rng(seed)
    L = prompt + cont
    ids = rng.integers(4, vocab, (batch, L)).astype(np.int32)
    mask = np.ones((batch, L), np.int32)
    steps = np.tile(np.arange(prompt, L, dtype=np.int32), (batch, 1))
    smask = np.ones((batch, cont), np.int32)
    for i in range(batch):
        n = L - i * pad
        mask[i, n:], ids[i, n:], smask[i, n - prompt:] = 0, 1, 0
        steps[i, n - prompt:] = prompt      # padded steps: any position < L
    return ModelBatch(target_ids=jnp.asarray(ids), target_mask=jnp.asarray(mask),
                      step_positions=jnp.asarray(steps), step_mask=jnp.asarray(smask))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--n-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-pad", action="store_true")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--ig-only", action="store_true", help="skip saliency")
    args = ap.parse_args(argv)
    import jax
    import numpy as np
    from jaxattr import pipeline, targets
    from jaxattr.methods import integrated_gradients, saliency

    model = native_model(layers=args.layers)
    batch = make_batch(args.batch, pad=0 if args.no_pad else 3)
    print(f"load average {os.getloadavg()[0]:.1f} (shared machine); groups "
          f"{pipeline.exact_plan(batch)}", flush=True)
    rows = []
    for name, method, mkw in ((f"IG ({args.n_steps} steps)", integrated_gradients,
                               (("n_steps", args.n_steps),)),
                              ("saliency", saliency, ()))[:1 if args.ig_only else 2]:
        call = dict(method=method, method_kwargs=mkw, target_fn=targets.logprob, target_kwargs=(),
                    step_fns=(), attribute_source=False, attribute_target=True)
        progs, flops = {}, {}
        for k, extra in (("one-pass", {}), ("exact", {"causal_chunks": pipeline.exact_plan(batch)})):
            # one compilation per program: its FLOPs are read and the same executable is timed
            compiled = pipeline._attribute_jit.lower(model, batch, None, **call, **extra).compile()
            cost = compiled.cost_analysis()
            flops[k] = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
            progs[k] = lambda compiled=compiled: compiled(model, batch, None)
        out = {k: jax.block_until_ready(fn()) for k, fn in progs.items()}
        a, b = (np.nan_to_num(np.asarray(out[k].target_attributions)) for k in progs)
        err = np.abs(a - b).max() / np.abs(a).max()
        times = {k: [] for k in progs}
        for _ in range(args.repeats):
            for k, fn in progs.items():
                t = time.perf_counter()
                jax.block_until_ready(fn())
                times[k].append(time.perf_counter() - t)
        warm = {k: statistics.median(v) for k, v in times.items()}
        rows.append((name, flops, warm, err))
        print(f"{name}: GFLOP one-pass {flops['one-pass'] / 1e9:.1f}, exact "
              f"{flops['exact'] / 1e9:.1f} ({1 - flops['exact'] / flops['one-pass']:.1%} fewer); "
              "warm s " + ", ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v)
                                    for k, v in times.items())
              + f"; max|diff|/max {err:.1e} (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n=== exact causal truncation, native GPT-2-124M size, batch {args.batch}, "
          "16 + 16 tokens ===")
    print("| method | GFLOP one-pass | GFLOP exact | FLOPs saved | "
          "warm one-pass s | warm exact s | speed-up | max diff / max |")
    print("|---|---|---|---|---|---|---|---|")
    for name, f, w, err in rows:
        print(f"| {name} | {f['one-pass'] / 1e9:.1f} | {f['exact'] / 1e9:.1f} | {1 - f['exact'] / f['one-pass']:.1%} | "
              f"{w['one-pass']:.2f} | {w['exact']:.2f} | {w['one-pass'] / w['exact']:.2f}x | "
              f"{err:.1e} |")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
