"""jaxattr on whatever device JAX sees (CPU, GPU, TPU): warm/cold time and achieved FLOP/s.

    python benchmarks/device_bench.py [--small | --smoke] [--json OUT]

A random-weight GPT-2-124M-sized Flax model (GPT2Config defaults: 12 layers, hidden 768,
vocab 50257) built in memory; 8 sequences of 16 prompt + 16 forced tokens of random ids fed
straight to the jitted pipeline (no tokenizer needed, so it runs where transformers'
tokenizers are absent or different). Methods: saliency, input x gradient, integrated
gradients (32 steps). It prints, per method: cold time (first call, compilation included),
warm time (median of 5), XLA's FLOP count of the compiled program (cost analysis), achieved
FLOP/s, and the same device's matmul throughput measured in the same run (float32 and
bfloat16), so the ratio is comparable across machines. ``--small`` uses a 2-layer model;
``--smoke`` a 2-layer, 64-wide one with batch 2 and 4 IG steps (a dry-run of the code path in
seconds). Compile time (JAX's trace/lower/compile events) is reported per method apart from
the warm time. ``--json`` is rewritten after each method, so a run cut short keeps what it
measured. Compare numbers only within one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from _workload import CompileClock, matmul_flops_per_s  # benchmarks/ is on sys.path as a script


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    import transformers as T

    import jaxattr
    from jaxattr import pipeline
    from jaxattr.methods import get_method
    from jaxattr.targets import get_target

    dev = jax.devices()[0]
    clock = CompileClock.install()
    size = dict(n_embd=64, n_head=2) if args.smoke else {}
    cfg = T.GPT2Config(n_layer=2 if args.small or args.smoke else 12, **size)
    ig_steps = 4 if args.smoke else 32
    if args.smoke:
        args.batch = 2
    t0 = time.perf_counter()
    hf = T.FlaxGPT2LMHeadModel(cfg, seed=0)
    adapter = jaxattr.make_adapter(hf)
    init_s = time.perf_counter() - t0
    B, P, C = args.batch, 16, 16
    rng = np.random.default_rng(0)
    ids = rng.integers(100, cfg.vocab_size, size=(B, P + C)).astype(np.int32)
    batch = jaxattr.ModelBatch(
        target_ids=jnp.asarray(ids), target_mask=jnp.ones((B, P + C), jnp.int32),
        step_positions=jnp.asarray(np.tile(np.arange(P, P + C), (B, 1)), jnp.int32),
        step_mask=jnp.ones((B, C), jnp.float32),
        baseline_target_ids=jnp.zeros((B, P + C), jnp.int32))
    n = (256 if args.smoke else 1024) if dev.platform == "cpu" else 8192
    print(f"model built in {init_s:.1f} s; measuring matmul peak ...", flush=True)
    peaks = {"float32": matmul_flops_per_s(n, dtype="float32")}
    if dev.platform != "cpu":  # CPUs emulate bf16 matmuls: not a peak worth quoting
        peaks["bfloat16"] = matmul_flops_per_s(n, dtype="bfloat16")
    results = {"device": str(dev), "platform": dev.platform, "jax": jax.__version__,
               "layers": cfg.n_layer, "hidden": cfg.n_embd, "ig_steps": ig_steps, "batch": [B, P + C, C], "model_init_s": init_s,
               "matmul_flops_per_s": peaks, "methods": {}}
    for name, kw in [("saliency", ()), ("input_x_gradient", ()),
                     ("integrated_gradients", (("n_steps", ig_steps),))]:
        call = dict(method=get_method(name), method_kwargs=kw,
                    target_fn=get_target("probability"), target_kwargs=(),
                    step_fns=(("probability", get_target("probability"), ()),),
                    attribute_source=False, attribute_target=True)
        print(f"{name}: compiling and running ...", flush=True)
        clock.take()
        t = time.perf_counter()
        jax.block_until_ready(pipeline.attribute_batch(adapter, batch, None, **call))
        cold = time.perf_counter() - t
        compile_events = clock.take()
        warm = []
        for _ in range(5):
            t = time.perf_counter()
            jax.block_until_ready(pipeline.attribute_batch(adapter, batch, None, **call))
            warm.append(time.perf_counter() - t)
        compiled = pipeline.compiled_attribute(adapter, batch, None, **call)
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan")))
        w = statistics.median(warm)
        mem = compiled.memory_analysis()
        results["methods"][name] = {
            "cold_s": cold, "compile_s": compile_events["total"],
            "compile_events": compile_events, "warm_s": w, "flops": flops,
            "flops_per_s": flops / w,
            "fraction_of_fp32_peak": flops / w / peaks["float32"],
            "temp_bytes": int(mem.temp_size_in_bytes)}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    print(f"\n{dev} ({dev.platform}), jax {jax.__version__}, GPT-2 {cfg.n_layer} layers, "
          f"batch {B}x{P + C} tokens, {C} attributed steps")
    print("matmul peak: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in peaks.items()))
    print(f"{'method':<22}{'cold s':>9}{'compile':>9}{'warm s':>9}{'GFLOP':>9}{'TFLOP/s':>9}"
          f"{'% fp32 peak':>13}")
    for name, r in results["methods"].items():
        print(f"{name:<22}{r['cold_s']:>9.2f}{r['compile_s']:>9.2f}{r['warm_s']:>9.4f}"
              f"{r['flops'] / 1e9:>9.1f}"
              f"{r['flops_per_s'] / 1e12:>9.2f}{100 * r['fraction_of_fp32_peak']:>12.1f}%")


if __name__ == "__main__":
    main()
