"""Peak memory (and, with ``--time``, run time) of the compiled jaxattr pipeline vs sequence
length, IG steps and chunking.

    . .venv/bin/activate
    python benchmarks/memory.py            # ~1-3 min on 2 cores (compiles only, runs nothing)
    python benchmarks/memory.py --vocab 50257 --layers 2   # other model sizes
    python benchmarks/memory.py --gpt2-124m --time          # GPT-2-124M size, IG tables timed
                                                            # (~10-15 min on 2 cores)

Without ``--time`` nothing is executed: every configuration is lowered and compiled and XLA's
``compiled.memory_analysis()`` is read. With ``--time`` every integrated-gradients
configuration (tables 2 and 3) is also executed once after compilation (no compilation in the
timing; the best of up to 3 runs while they total under 10 s, else the single run) and its
wall time, XLA FLOP count and GFLOP/s are printed; a configuration whose
``args + temp + out`` exceeds ``--max-gib`` is compiled but not run. ``--gpt2-124m`` sets
GPT-2-124M's size (12 layers, 768 hidden, 12 heads, vocab 50257), batch 1, L=32 (16 prompt +
16 attributed tokens, the shape of ``side_by_side.py``'s IG workload), and skips table 1. ``temp`` (temp_size_in_bytes) is the scratch XLA
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
With ``--no-split-head`` (the pipeline back-propagates through the LM head once per step, as
before the split-head backward) a ``[*,V] ct`` column gives the size of one float32 buffer of
shape [IG steps alive, backward passes alive, B, T, V]: the vocabulary-sized logits cotangent
of the vmapped backward passes, then the largest single term of ``temp``. The default
split-head backward never builds it; see docs/performance.md.
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
    ap.add_argument("--gpt2-124m", action="store_true",
                    help="GPT-2-124M size, batch 1, L=32, IG tables only")
    ap.add_argument("--skip-saliency", action="store_true", help="skip table 1")
    ap.add_argument("--time", action="store_true",
                    help="also run each IG configuration once and print its wall time")
    ap.add_argument("--no-split-head", action="store_true",
                    help="back-propagate through the LM head once per step (the pipeline "
                         "before the split-head backward) instead of once")
    ap.add_argument("--max-gib", type=float, default=16.0,
                    help="with --time, do not run configurations needing more than this")
    args = ap.parse_args()
    if args.gpt2_124m:
        args.layers, args.hidden, args.heads, args.vocab = 12, 768, 12, 50257
        args.batch, args.ig_length, args.skip_saliency = 1, 32, True

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

    def analyze(method, L, *, run=False, **mkw):
        batch = make_batch(L)
        static = dict(method=get_method(method), method_kwargs=tuple(sorted(mkw.items())),
                      target_fn=prob, target_kwargs=(), step_fns=(), attribute_source=False,
                      attribute_target=True, split_head=not args.no_split_head)
        t = time.perf_counter()
        compiled = _attribute_jit.lower(adapter, batch, None, **static).compile()
        m = compiled.memory_analysis()
        r = dict(temp=m.temp_size_in_bytes, args=m.argument_size_in_bytes,
                 out=m.output_size_in_bytes, compile_s=time.perf_counter() - t,
                 run_s=None)
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        r["gflop"] = float(cost.get("flops", float("nan"))) / 1e9
        if run:
            if (r["temp"] + r["args"] + r["out"]) / 2**30 <= args.max_gib:
                times = []
                while len(times) < 3 and sum(times) < 10.0:   # short programs: best of 3
                    t = time.perf_counter()
                    jax.block_until_ready(compiled(adapter, batch, None))
                    times.append(time.perf_counter() - t)
                r["run_s"] = min(times)
        return r

    def timing(r, gflop=None):
        # XLA's cost analysis counts a loop body once, so chunked programs (lax.map over
        # internal_batch_size chunks) pass the FLOPs of the unchunked program doing the same work.
        if not args.time:
            return ""
        gflop = r["gflop"] if gflop is None else gflop
        if r["run_s"] is None:
            return f"{'not run':>10}{gflop:>9.0f}{'':>9}"
        return f"{r['run_s']:>10.2f}{gflop:>9.0f}{gflop / r['run_s']:>9.1f}"

    thdr = f"{'run s':>10}{'GFLOP':>9}{'GFLOP/s':>9}" if args.time else ""

    def mib(x):
        return f"{x / 2**20:10.1f}"

    def ct(nbytes):  # the vocabulary-sized logits cotangent exists only without split head
        return f"{mib(nbytes):>14}" if args.no_split_head else ""

    hdr = (f"{'temp MiB':>10}{'args MiB':>10}{'out MiB':>10}"
           + (f"{'[*,V] ct MiB':>14}" if args.no_split_head else "") + f"{'compile s':>11}")

    if not args.skip_saliency:
        print("\n1. saliency: peak temporaries vs sequence length L (T = L/2)")
        print(f"{'L':>6}{'T':>5}{'output_batch_size':>19}" + hdr)
    for L in ([] if args.skip_saliency else args.lengths):
        T = L // 2
        for obs in (None, 4):
            if obs is not None and obs >= T:
                continue
            r = analyze("saliency", L, **({} if obs is None else {"output_batch_size": obs}))
            alive = T if obs is None else obs
            print(f"{L:>6}{T:>5}{str(obs):>19}{mib(r['temp'])}{mib(r['args'])}{mib(r['out'])}"
                  f"{ct(alive * B * T * V * 4)}{r['compile_s']:>11.1f}", flush=True)

    L = args.ig_length
    T = L // 2
    print(f"\n2. integrated gradients: peak temporaries vs n_steps (L={L}, T={T}, "
          f"internal_batch_size=None)")
    print(f"{'n_steps':>8}" + hdr + f"{'temp/saliency':>15}" + thdr)
    base = analyze("saliency", L)["temp"]
    for n in args.ig_steps:
        r = analyze("integrated_gradients", L, run=args.time, n_steps=n)
        print(f"{n:>8}{mib(r['temp'])}{mib(r['args'])}{mib(r['out'])}"
              f"{ct(n * T * B * T * V * 4)}{r['compile_s']:>11.1f}{r['temp'] / base:>14.1f}x"
              + timing(r), flush=True)

    n = args.ig_internal_steps
    print(f"\n3. integrated gradients: internal_batch_size (n_steps={n}, L={L}, T={T})")
    print(f"{'internal_batch_size':>20}" + hdr + thdr)
    # FLOPs of the whole computation, from the unchunked program
    work = analyze("integrated_gradients", L, n_steps=n)["gflop"] if args.time else None
    for k in args.ig_internal:
        kw = dict(n_steps=n)
        if k:
            kw["internal_batch_size"] = k
        r = analyze("integrated_gradients", L, run=args.time, **kw)
        alive = n if not k else min(k, n)
        print(f"{str(k or None):>20}{mib(r['temp'])}{mib(r['args'])}{mib(r['out'])}"
              f"{ct(alive * T * B * T * V * 4)}{r['compile_s']:>11.1f}" + timing(r, work),
              flush=True)
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
