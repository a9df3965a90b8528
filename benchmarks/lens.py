"""Lens benchmark, side by side on one GPT-2-124M-sized random model and this CPU.

    python benchmarks/lens.py [--batch 4] [--seq-len 128] [--steps 3] [--json out.json]

1. Tuned-lens training throughput (tokens/s): jaxattr's compiled step (frozen base forward
   with site capture, KL of all 12 layers, backward, optimiser update: one program) against
   the tuned-lens package (0.2.0, PyTorch, side venv) running its training-loop body on the
   same token batch (``lens_side/time_tuned_lens.py``; the package's ``Train`` loop itself
   needs a hub dataset, so its body is driven directly). Median of ``--steps`` steps after a
   warm-up; jaxattr's compile time is reported separately.
2. Logit lens over all 13 rows (top-10, entropy, KL to the output, next-token prob and rank)
   against one plain forward of the same batch (full logits), both compiled, median of 5.
   XLA's FLOP counts of both programs are printed: decoding 13 rows costs 13 head matmuls
   (768 x 50257 per token each) where the forward has one, so the FLOP floor of the ratio at
   this size is well above 1.

The checkpoint is the shared benchmark one (``_workload.ensure_checkpoint``). Numbers on a
shared machine move with its load; both sides run back to back within one invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _workload import HERE, SIDE_PY, ensure_checkpoint, python_env, run_json  # noqa: E402


def _median_time(fn, n):
    """(median wall seconds, wall times, median CPU seconds of this process, all threads)."""
    times, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), times, statistics.median(cpu)


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def bench_jax(ckpt, ids, steps):
    import jax
    import jax.numpy as jnp

    import jaxattr
    from jaxattr.lens import TrainState, TunedLens, make_train_step, model_source
    from jaxattr.lens import tuned_lens_optimizer
    from jaxattr.lens.api import _lens_batch

    model = jaxattr.load_model(ckpt)
    source = model_source(model)
    opt = tuned_lens_optimizer(steps + 1)
    lens = TunedLens.init(source.n_layers, source.hidden)
    state = TrainState(lens=lens, opt_state=opt.init(lens), step=jnp.zeros((), jnp.int32))
    ids_j = jnp.asarray(ids)
    batch = {"target_ids": ids_j[None], "target_mask": jnp.ones_like(ids_j)[None],
             "mask": jnp.ones(ids.shape, jnp.float32)[None]}
    step = make_train_step(opt, layer_chunk=4)
    t0 = time.perf_counter()
    state, kls = step(state, source, batch)
    jax.block_until_ready(kls)
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def one():
        holder["state"], k = step(holder["state"], source, batch)
        jax.block_until_ready(k)

    train_s, train_times, train_cpu = _median_time(one, steps)

    # Logit lens vs one forward.
    plain = {"target_ids": ids_j, "target_mask": jnp.ones_like(ids_j)}
    targets = jnp.concatenate([ids_j[:, 1:], jnp.zeros_like(ids_j[:, :1])], 1)
    fwd = jax.jit(lambda a, b: a.forward(**b)["logits"])
    fwd_c = fwd.lower(model.adapter, plain).compile()
    lens_c = jax.jit(lambda s, b, t: _lens_batch(s, None, b, t, top_k=10, layer_chunk=4)
                     ).lower(source, plain, targets).compile()
    jax.block_until_ready(fwd_c(model.adapter, plain))
    jax.block_until_ready(lens_c(source, plain, targets))
    fwd_s, _, fwd_cpu = _median_time(lambda: jax.block_until_ready(fwd_c(model.adapter, plain)), 5)
    lens_s, _, lens_cpu = _median_time(lambda: jax.block_until_ready(lens_c(source, plain, targets)), 5)
    return {"jax": jax.__version__, "compile_s": compile_s, "step_s": train_s,
            "times": train_times, "tokens_per_s": ids.size / train_s,
            "step_cpu_s": train_cpu, "tokens_per_cpu_s": ids.size / train_cpu,
            "forward_cpu_s": fwd_cpu, "logit_lens_cpu_s": lens_cpu,
            "lens_over_forward_cpu": lens_cpu / fwd_cpu,
            "forward_s": fwd_s, "logit_lens_s": lens_s, "lens_over_forward": lens_s / fwd_s,
            "forward_flops": _flops(fwd_c), "logit_lens_flops": _flops(lens_c),
            "train_step_flops": _flops(step.lower(holder["state"], source, batch).compile())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ckpt = ensure_checkpoint()
    ids = np.random.default_rng(0).integers(0, 50257, (args.batch, args.seq_len)).astype(np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ids.npy")
        np.save(path, ids)
        env = python_env()
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        torch = run_json([SIDE_PY, os.path.join(HERE, "lens_side", "time_tuned_lens.py"), ckpt,
                          path, str(args.steps)], env=env)
    jx = bench_jax(ckpt, ids, args.steps)
    best_torch = max(torch["bf16_autocast"]["tokens_per_s"], torch["float32"]["tokens_per_s"])
    out = {"batch": [args.batch, args.seq_len], "tuned_lens_pkg": torch, "jaxattr": jx,
           "train_speedup_vs_pkg_loop": jx["tokens_per_s"] / torch["bf16_autocast"]["tokens_per_s"],
           "train_speedup_vs_pkg_best": jx["tokens_per_s"] / best_torch}
    print(f"tuned-lens training, batch {args.batch} x {args.seq_len} tokens, GPT-2-124M size:")
    print(f"  tuned-lens pkg (bf16 autocast, as its loop): "
          f"{torch['bf16_autocast']['tokens_per_s']:8.0f} tok/s")
    print(f"  tuned-lens pkg (float32):                    "
          f"{torch['float32']['tokens_per_s']:8.0f} tok/s")
    print(f"  jaxattr (one compiled step):                 {jx['tokens_per_s']:8.0f} tok/s "
          f"(compile {jx['compile_s']:.0f} s)")
    print(f"  speed-up: {out['train_speedup_vs_pkg_loop']:.2f}x vs its loop, "
          f"{out['train_speedup_vs_pkg_best']:.2f}x vs its faster variant")
    tc = torch["bf16_autocast"].get("tokens_per_cpu_s")
    print(f"  per CPU second (all threads): tuned-lens pkg "
          f"{tc if tc is None else round(tc, 1)} / "
          f"{torch['float32'].get('tokens_per_cpu_s', float('nan')):.1f} (bf16 / float32) tok/s, "
          f"jaxattr {jx['tokens_per_cpu_s']:.1f} tok/s")
    print(f"logit lens CPU: {jx['logit_lens_cpu_s']:.1f} s vs forward {jx['forward_cpu_s']:.1f} s: "
          f"{jx['lens_over_forward_cpu']:.2f}x; load {os.getloadavg()[0]:.1f}")
    print(f"logit lens, all {13} rows: {jx['logit_lens_s'] * 1e3:.0f} ms vs one forward "
          f"{jx['forward_s'] * 1e3:.0f} ms: {jx['lens_over_forward']:.2f}x "
          f"(XLA FLOPs {jx['logit_lens_flops'] / 1e9:.1f} G vs {jx['forward_flops'] / 1e9:.1f} G: "
          f"{jx['logit_lens_flops'] / jx['forward_flops']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
