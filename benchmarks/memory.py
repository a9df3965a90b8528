"""Peak memory of the compiled jaxattr pipeline vs sequence length, IG steps and chunking.

    . .venv/bin/activate
    python benchmarks/memory.py            # ~1-3 min on 2 cores (compiles only, runs nothing)
    python benchmarks/memory.py --vocab 50257 --layers 2   # other model sizes

Nothing is executed: every configuration is lowered and compiled and XLA's
``compiled.memory_analysis()`` is read. ``temp`` (temp_size_in_bytes) is the scratch XLA
allocates for the program, i.e. the peak of the intermediates on top of the arguments
(params + batch, ``args``) and the result (``out``). Deterministic: it does not depend on
machine load.

Model: a random FlaxGPT2LMHeadModel built in memory (default 4 layers, 256 hidden, 4 heads,
vocab 8192), batch of --batch sequences of length L with T = L/2 attributed steps (the second
half of each sequence, as in side_by_side.py), ``probability`` target.

Tables:
  1. saliency vs L, with ``output_batch_size`` None (all T backward passes in one vmap)
     and 4 (``lax.map`` over chunks of 4 steps);
  2. integrated gradients vs n_steps (L fixed, ``internal_batch_size=None``);
  3. integrated gradients vs ``internal_batch_size`` (n_steps fixed).
The ``[*,V] ct`` column is the size of one float32 buffer of shape [IG steps alive,
backward passes alive, B, T, V]: the vocabulary-sized logits cotangent of the vmapped backward
passes (the LM head runs at the T scored positions since commit 5798b2b; before, it was
[..., B, L, V]); see docs/performance.md. It is the largest single term of ``temp``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--ig-length", type=int, default=64)
    ap.add_argument("--ig-steps", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--ig-internal", type=int, nargs="+", default=[0, 16, 8, 4, 1],
                    help="internal_batch_size values (0 = None)")
    ap.add_argument("--ig-internal-steps", type=int, default=32)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from transformers import FlaxGPT2LMHeadModel, GPT2Config

    from jaxattr.adapters import make_adapter
    from jaxattr.methods import get_method
    from jaxattr.pipeline import ModelBatch, _attribute_jit
    from jaxattr.targets import get_target

    t_all = time.perf_counter()
    cfg = GPT2Config(n_layer=args.layers, n_embd=args.hidden, n_head=args.heads,
                     vocab_size=args.vocab, n_positions=max(max(args.lengths),
                                                            args.ig_length, 64),
                     bos_token_id=0, eos_token_id=0)
    hf = FlaxGPT2LMHeadModel(cfg, seed=0)
    adapter = make_adapter(hf)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(adapter.params))
    prob = get_target("probability")
    B, V = args.batch, args.vocab
    print(f"model: random GPT-2, {args.layers} layers, hidden {args.hidden}, vocab {V}, "
          f"{n_params / 1e6:.1f}M params; batch {B}; T = L/2 steps; jax {jax.__version__} "
          f"on {jax.devices()[0].platform}", flush=True)

    def make_batch(L):
        T = L // 2
        rng = np.random.default_rng(0)
        ids = rng.integers(1, V, size=(B, L)).astype(np.int32)
        return ModelBatch(target_ids=jnp.asarray(ids),
                          target_mask=jnp.ones((B, L), jnp.int32),
                          step_positions=jnp.asarray(np.broadcast_to(
                              np.arange(L - T, L, dtype=np.int32), (B, T)).copy()),
                          step_mask=jnp.ones((B, T), jnp.float32),
                          baseline_target_ids=jnp.zeros((B, L), jnp.int32))

    def analyze(method, L, **mkw):
        batch = make_batch(L)
        t = time.perf_counter()
        compiled = _attribute_jit.lower(
            adapter, batch, None, method=get_method(method),
            method_kwargs=tuple(sorted(mkw.items())), target_fn=prob, target_kwargs=(),
            step_fns=(), attribute_source=False, attribute_target=True).compile()
        m = compiled.memory_analysis()
        return dict(temp=m.temp_size_in_bytes, args=m.argument_size_in_bytes,
                    out=m.output_size_in_bytes, compile_s=time.perf_counter() - t)

    def mib(x):
        return f"{x / 2**20:10.1f}"

    hdr = f"{'temp MiB':>10}{'args MiB':>10}{'out MiB':>10}{'[*,V] ct MiB':>14}{'compile s':>11}"

    print("\n1. saliency: peak temporaries vs sequence length L (T = L/2)")
    print(f"{'L':>6}{'T':>5}{'output_batch_size':>19}" + hdr)
    for L in args.lengths:
        T = L // 2
        for obs in (None, 4):
            if obs is not None and obs >= T:
                continue
            r = analyze("saliency", L, **({} if obs is None else {"output_batch_size": obs}))
            alive = T if obs is None else obs
            print(f"{L:>6}{T:>5}{str(obs):>19}{mib(r['temp'])}{mib(r['args'])}{mib(r['out'])}"
                  f"{mib(alive * B * T * V * 4):>14}{r['compile_s']:>11.1f}", flush=True)

    L = args.ig_length
    T = L // 2
    print(f"\n2. integrated gradients: peak temporaries vs n_steps (L={L}, T={T}, "
          f"internal_batch_size=None)")
    print(f"{'n_steps':>8}" + hdr + f"{'temp/saliency':>15}")
    base = analyze("saliency", L)["temp"]
    for n in args.ig_steps:
        r = analyze("integrated_gradients", L, n_steps=n)
        print(f"{n:>8}{mib(r['temp'])}{mib(r['args'])}{mib(r['out'])}"
              f"{mib(n * T * B * T * V * 4):>14}{r['compile_s']:>11.1f}{r['temp'] / base:>14.1f}x",
              flush=True)

    n = args.ig_internal_steps
    print(f"\n3. integrated gradients: internal_batch_size (n_steps={n}, L={L}, T={T})")
    print(f"{'internal_batch_size':>20}" + hdr)
    for k in args.ig_internal:
        kw = dict(n_steps=n)
        if k:
            kw["internal_batch_size"] = k
        r = analyze("integrated_gradients", L, **kw)
        alive = n if not k else min(k, n)
        print(f"{str(k or None):>20}{mib(r['temp'])}{mib(r['args'])}{mib(r['out'])}"
              f"{mib(alive * T * B * T * V * 4):>14}{r['compile_s']:>11.1f}", flush=True)
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
