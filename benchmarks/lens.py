"""Lens benchmark, side by side on one GPT-2-124M-sized random model and one device.

    python benchmarks/lens.py [--batch 4] [--seq-len 128] [--steps 3] [--json out.json]
    python benchmarks/lens.py --smoke                     # tiny model, seconds: a dry-run
    JAXATTR_SIDE_PYTHON=python3 python3 benchmarks/lens.py --steps 20 --repeats 20  # GPU

1. Tuned-lens training throughput (tokens/s): jaxattr's compiled step (frozen base forward
   with site capture, KL of all 12 layers, backward, optimiser update: one program) against
   the tuned-lens package (0.2.0, PyTorch) running its training-loop body on the
   same token batch (``lens_side/time_tuned_lens.py``; the package's ``Train`` loop itself
   needs a hub dataset, so its body is driven directly). Median of ``--steps`` steps after a
   warm-up; jaxattr's compile time is reported separately.
2. Logit lens over all 13 rows (top-10, entropy, KL to the output, next-token prob and rank)
   against one plain forward of the same batch (full logits), both compiled, median of
   ``--repeats``, for each ``--layer-chunks`` value (rows decoded per vmapped chunk).
   XLA's FLOP counts of both programs are printed: decoding 13 rows costs 13 head matmuls
   (768 x 50257 per token each) where the forward has one, so the FLOP floor of the ratio at
   this size is well above 1 (about 4.7x); on an accelerator, where such small programs are
   latency-bound rather than FLOP-bound, the measured ratio can still be lower.

The PyTorch side runs with ``--side-python`` (default ``$JAXATTR_SIDE_PYTHON``, else
``$INSEQ_PYTHON``, else the side venv's python), on the GPU when torch sees one
(``--torch-device``); on the GPU machine its ``python3`` holds torch, JAX and (carried)
tuned-lens, so ``--side-python python3``. The side process runs first, before this process
touches JAX, so the two never hold the GPU at once. The checkpoint is the shared benchmark one
(``_workload.ensure_checkpoint``), built on first use by the side python from a seeded config
(no download). Compile time (JAX's own trace/lower/compile events) is reported apart from the
timed device work. ``--json`` is rewritten after each side, so a run cut short keeps what it
measured. Numbers on a shared machine move with its load; both sides run back to back within
one invocation.
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
from _workload import (HERE, SIDE_PY, CompileClock, ensure_checkpoint, python_env,  # noqa: E402
                       run_json)


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


def bench_jax(ckpt, ids, steps, *, repeats=5, layer_chunks=(4,)):
    import jax
    import jax.numpy as jnp

    import jaxattr
    from jaxattr.lens import TrainState, TunedLens, make_train_step, model_source
    from jaxattr.lens import tuned_lens_optimizer
    from jaxattr.lens.api import _lens_batch

    clock = CompileClock.install()
    t0 = time.perf_counter()
    model = jaxattr.load_model(ckpt)
    load_s = time.perf_counter() - t0
    clock.take()
    source = model_source(model)
    opt = tuned_lens_optimizer(steps + 1)
    lens = TunedLens.init(source.n_layers, source.hidden)
    state = TrainState(lens=lens, opt_state=opt.init(lens), step=jnp.zeros((), jnp.int32))
    ids_j = jnp.asarray(ids)
    batch = {"target_ids": ids_j[None], "target_mask": jnp.ones_like(ids_j)[None],
             "mask": jnp.ones(ids.shape, jnp.float32)[None]}
    step = make_train_step(opt, layer_chunk=4)
    clock.take()
    t0 = time.perf_counter()
    step_c = step.lower(state, source, batch).compile()   # compiled once, used for all steps
    compile_s = time.perf_counter() - t0
    compile_events = clock.take()
    t0 = time.perf_counter()
    state, kls = step_c(state, source, batch)
    jax.block_until_ready(kls)
    first_step_s = time.perf_counter() - t0
    holder = {"state": state}

    def one():
        holder["state"], k = step_c(holder["state"], source, batch)
        jax.block_until_ready(k)

    train_s, train_times, train_cpu = _median_time(one, steps)
    train_flops = _flops(step_c)
    clock.take()

    # Logit lens vs one forward.
    plain = {"target_ids": ids_j, "target_mask": jnp.ones_like(ids_j)}
    targets = jnp.concatenate([ids_j[:, 1:], jnp.zeros_like(ids_j[:, :1])], 1)
    fwd = jax.jit(lambda a, b: a.forward(**b)["logits"])
    t0 = time.perf_counter()
    fwd_c = fwd.lower(model.adapter, plain).compile()
    fwd_compile = time.perf_counter() - t0
    clock.take()
    jax.block_until_ready(fwd_c(model.adapter, plain))
    fwd_s, fwd_times, fwd_cpu = _median_time(
        lambda: jax.block_until_ready(fwd_c(model.adapter, plain)), repeats)
    dev = jax.devices()[0]
    res = {"jax": jax.__version__, "device": str(dev), "platform": dev.platform,
           "device_kind": getattr(dev, "device_kind", None),
           "matmul_precision": str(jax.config.jax_default_matmul_precision),
           "n_rows": source.n_layers + 1, "load_s": load_s,
           "compile_s": compile_s, "compile_events": compile_events,
           "first_step_s": first_step_s, "step_s": train_s,
           "times": train_times, "tokens_per_s": ids.size / train_s,
           "step_cpu_s": train_cpu, "tokens_per_cpu_s": ids.size / train_cpu,
           "forward_compile_s": fwd_compile, "forward_s": fwd_s, "forward_times": fwd_times,
           "forward_cpu_s": fwd_cpu, "forward_flops": _flops(fwd_c),
           "train_step_flops": train_flops, "logit_lens": {}}
    for chunk in layer_chunks:
        t0 = time.perf_counter()
        lens_c = jax.jit(lambda s, b, t: _lens_batch(s, None, b, t, top_k=10, layer_chunk=chunk)
                         ).lower(source, plain, targets).compile()
        lens_compile = time.perf_counter() - t0
        clock.take()
        jax.block_until_ready(lens_c(source, plain, targets))
        lens_s, lens_times, lens_cpu = _median_time(
            lambda: jax.block_until_ready(lens_c(source, plain, targets)), repeats)
        res["logit_lens"][str(chunk)] = {
            "compile_s": lens_compile, "s": lens_s, "times": lens_times, "cpu_s": lens_cpu,
            "flops": _flops(lens_c), "over_forward": lens_s / fwd_s,
            "over_forward_cpu": lens_cpu / fwd_cpu}
    first = res["logit_lens"][str(layer_chunks[0])]
    # the first chunk's numbers under the names earlier records used
    res.update(logit_lens_s=first["s"], logit_lens_cpu_s=first["cpu_s"],
               logit_lens_flops=first["flops"], lens_over_forward=first["over_forward"],
               lens_over_forward_cpu=first["over_forward_cpu"])
    return res


def _write(path, obj):
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per side")
    ap.add_argument("--repeats", type=int, default=5, help="timed forward / logit-lens calls")
    ap.add_argument("--layer-chunks", default="4",
                    help="comma-separated logit-lens layer_chunk values to time (e.g. 4,13)")
    ap.add_argument("--side-python", default=SIDE_PY,
                    help="interpreter with torch + tuned-lens (python3 on the GPU machine)")
    ap.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--smoke", action="store_true",
                    help="dry-run: tiny 2-layer model, batch 2 x 16, 2 steps, 2 repeats")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.seq_len, args.steps, args.repeats = 2, 16, 2, 2
    chunks = tuple(int(c) for c in args.layer_chunks.split(","))
    ckpt = ensure_checkpoint(tiny=args.smoke, side_python=args.side_python)
    ids = np.random.default_rng(0).integers(0, 50257, (args.batch, args.seq_len)).astype(np.int32)
    out = {"batch": [args.batch, args.seq_len], "ckpt": os.path.basename(ckpt),
           "smoke": args.smoke, "side_python": args.side_python}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ids.npy")
        np.save(path, ids)
        env = python_env()
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        t0 = time.perf_counter()
        torch = run_json([args.side_python, os.path.join(HERE, "lens_side", "time_tuned_lens.py"),
                          ckpt, path, str(args.steps), "--device", args.torch_device], env=env)
        torch["process_s"] = time.perf_counter() - t0
    out["tuned_lens_pkg"] = torch
    variants = [k for k in ("bf16_autocast", "float32", "tf32") if k in torch]
    print(f"tuned-lens pkg on {torch['device']} ({torch.get('gpu') or 'cpu'}), "
          f"torch {torch['torch']}: " + ", ".join(
              f"{k} {torch[k]['tokens_per_s']:.0f} tok/s" for k in variants), flush=True)
    _write(args.json, out)
    jx = bench_jax(ckpt, ids, args.steps, repeats=args.repeats, layer_chunks=chunks)
    best_torch = max(torch[k]["tokens_per_s"] for k in variants)
    out.update(jaxattr=jx,
               train_speedup_vs_pkg_loop=jx["tokens_per_s"] / torch["bf16_autocast"]["tokens_per_s"],
               train_speedup_vs_pkg_best=jx["tokens_per_s"] / best_torch)
    for k in variants:
        out[f"train_speedup_vs_pkg_{k}"] = jx["tokens_per_s"] / torch[k]["tokens_per_s"]
    _write(args.json, out)
    layers = jx["n_rows"] - 1
    print(f"tuned-lens training, batch {args.batch} x {args.seq_len} tokens, {layers} layers "
          f"({out['ckpt']}), jaxattr on {jx['device']} (jax {jx['jax']}, matmul precision "
          f"{jx['matmul_precision']}):")
    labels = {"bf16_autocast": "bf16 autocast, as its loop", "float32": "float32",
              "tf32": "float32, TF32 matmuls"}
    for k in variants:
        print(f"  tuned-lens pkg ({labels[k] + '):':<28}{torch[k]['tokens_per_s']:10.0f} tok/s "
              f"(warm-up step {torch[k]['warmup_s']:.2f} s)")
    print(f"  jaxattr (one compiled step):              {jx['tokens_per_s']:10.0f} tok/s "
          f"(compile {jx['compile_s']:.1f} s, first step {jx['first_step_s']:.3f} s)")
    print(f"  speed-up: {out['train_speedup_vs_pkg_loop']:.2f}x vs its loop, "
          f"{out['train_speedup_vs_pkg_best']:.2f}x vs its fastest variant")
    tc = torch["bf16_autocast"].get("tokens_per_cpu_s")
    print(f"  per CPU second (all threads): tuned-lens pkg "
          f"{tc if tc is None else round(tc, 1)} / "
          f"{torch['float32'].get('tokens_per_cpu_s', float('nan')):.1f} (bf16 / float32) tok/s, "
          f"jaxattr {jx['tokens_per_cpu_s']:.1f} tok/s")
    print(f"logit lens, all {jx['n_rows']} rows, vs one forward "
          f"({jx['forward_s'] * 1e3:.2f} ms, compile {jx['forward_compile_s']:.1f} s, "
          f"{jx['forward_flops'] / 1e9:.1f} GFLOP); load {os.getloadavg()[0]:.1f}:")
    for chunk, r in jx["logit_lens"].items():
        print(f"  layer_chunk {chunk:>3}: {r['s'] * 1e3:9.2f} ms = {r['over_forward']:.2f}x wall, "
              f"{r['over_forward_cpu']:.2f}x CPU (compile {r['compile_s']:.1f} s; XLA FLOPs "
              f"{r['flops'] / 1e9:.1f} G = {r['flops'] / jx['forward_flops']:.2f}x the forward's)")


if __name__ == "__main__":
    main()
