"""Cost of a faithfulness evaluation against one saliency attribution of the same sequences.

    python benchmarks/faithfulness.py [--n 100] [--batch-size 25] [--max-tokens 16384]
    python benchmarks/faithfulness.py --smoke                  # tiny model, n 4: a dry-run
    JAXATTR_SIDE_PYTHON=python3 python3 benchmarks/faithfulness.py --json f.json   # GPU

GPT-2-124M-sized random checkpoint (``benchmarks/_workload.py``), ``--n`` sequences of 16 prompt
+ 16 generated tokens (the workload's passages, repeated to reach ``--n``), so 16 attributed
steps each. The evaluation is :func:`jaxattr.evaluate.faithfulness` with its defaults:
comprehensiveness and sufficiency over the 5 bins (0.01, 0.05, 0.1, 0.2, 0.5), ``mask``
erasure. Both are timed twice in one process: cold (compilation included) and warm (the same
call again), in wall-clock and in process CPU seconds. Also printed: the perturbed inputs, the forwards that answered them (shared by
causality, :func:`jaxattr.evaluate.perturb.plan_forwards`), their tokens before and after
padding and the number of compiled chunk shapes, against the attribution's forward and its
per-step backward passes. ``--length-step`` sets the padding granularity of the chunks
(``jaxattr.evaluate.perturb.LENGTH_STEP``) and ``--no-share`` turns the sharing off, to
compare.

Compile time (JAX's trace/lower/compile events) is reported apart from the rest of each call,
so on an accelerator, where compilation dominates a cold call, the device-side cost is visible:
``warm`` is the same call with every program already compiled. ``--json`` is rewritten after
each timed call, so a run cut short keeps what it measured. ``--smoke`` runs the same code on
the tiny 2-layer checkpoint, by default with ``--n 4 --batch-size 2``. ``--side-python`` is the
interpreter with torch that builds the checkpoint if it is absent (``_workload.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxattr  # noqa: E402
from jaxattr.evaluate import faithfulness, perturb  # noqa: E402
from _workload import SIDE_PY, CompileClock, ensure_checkpoint, make_prompts  # noqa: E402


def _timed(fn):
    """``(result, (wall seconds, process CPU seconds))``: the CPU time is the steadier number
    on a machine shared with other jobs."""
    t, c = time.perf_counter(), time.process_time()
    res = fn()
    jax.block_until_ready(jax.tree_util.tree_leaves(getattr(res, "batches", res)))
    return res, (time.perf_counter() - t, time.process_time() - c)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="sequences (default 100; smoke 4)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 25; smoke 2")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--length-step", type=int, default=None)
    ap.add_argument("--no-share", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="dry-run: tiny 2-layer model, --n 4 --batch-size 2")
    ap.add_argument("--side-python", default=SIDE_PY,
                    help="interpreter with torch, to build the checkpoint if absent")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed calls, one more warm evaluation under cProfile: "
                         "host-side Python vs waiting for the device (device_get)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.n = args.n or (4 if args.smoke else 100)
    args.batch_size = args.batch_size or (2 if args.smoke else 25)
    if args.length_step:
        perturb.LENGTH_STEP = args.length_step
    ckpt = ensure_checkpoint(tiny=args.smoke, side_python=args.side_python)
    clock = CompileClock.install()
    dev = jax.devices()[0]
    record = {"n": args.n, "steps": 16, "batch_size": args.batch_size,
              "max_tokens": args.max_tokens, "ckpt": os.path.basename(ckpt),
              "smoke": args.smoke, "jax": jax.__version__, "device": str(dev),
              "platform": dev.platform, "device_kind": getattr(dev, "device_kind", None),
              "share_forwards": not args.no_share, "calls": {}}

    def note(name, times):
        record["calls"][name] = {"wall_s": times[0], "cpu_s": times[1],
                                 "compile": clock.take()}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=1)

    t0 = time.perf_counter()
    model = jaxattr.load_model(ckpt)
    record["load_s"] = time.perf_counter() - t0
    clock.take()
    prompts, gens = make_prompts(8, ckpt)
    prompts = [prompts[i % len(prompts)] for i in range(args.n)]
    gens = [gens[i % len(gens)] for i in range(args.n)]

    def attribute():
        return model.attribute(prompts, gens, method="saliency", batch_size=args.batch_size,
                               show_progress=False)

    out, attr_cold = _timed(attribute)
    note("saliency_cold", attr_cold)
    print(f"saliency cold {attr_cold[0]:.2f} s", flush=True)
    _, attr_warm = _timed(attribute)
    note("saliency_warm", attr_warm)
    print(f"saliency warm {attr_warm[0]:.2f} s", flush=True)
    def evaluate():
        return faithfulness(model, out, max_tokens=args.max_tokens,
                            share_forwards=not args.no_share)

    res, eval_cold = _timed(evaluate)
    note("faithfulness_cold", eval_cold)
    print(f"faithfulness cold {eval_cold[0]:.2f} s", flush=True)
    _, eval_warm = _timed(evaluate)
    note("faithfulness_warm", eval_warm)
    info = res.info
    n_rows, n_fwd, tokens = info["n_rows"], info["n_forwards"], info["forward_tokens"]
    padded, programs = info["padded_tokens"], info["n_programs"]
    L, T = 32, 16
    print(f"devices: {jax.devices()}")
    print(f"{args.n} sequences x {T} steps, bins {info['bins']}, erase {info['erase']}, "
          f"length step {perturb.LENGTH_STEP}, shared forwards {not args.no_share}")
    for i, kind in enumerate(("wall", "CPU")):
        print(f"{kind:4s} saliency attribution : cold {attr_cold[i]:8.2f} s   "
              f"warm {attr_warm[i]:8.2f} s")
        print(f"{kind:4s} faithfulness         : cold {eval_cold[i]:8.2f} s   "
              f"warm {eval_warm[i]:8.2f} s")
        print(f"{kind:4s} ratio faithfulness / saliency: cold {eval_cold[i] / attr_cold[i]:.2f}x"
              f"   warm {eval_warm[i] / attr_warm[i]:.2f}x")
    print(f"perturbed inputs: {n_rows} ({n_rows / args.n / T:.1f} per step), answered by "
          f"{n_fwd} forwards ({n_fwd / args.n / T:.2f} per step) over {tokens} tokens = the "
          f"tokens of {tokens / (args.n * L):.1f} full-sequence forwards per sequence "
          f"({padded / (args.n * L):.1f} padded, {programs} compiled chunk shapes); "
          f"saliency: 1 forward + {T} input-gradient backward passes per sequence")
    calls = record["calls"]
    for name in calls:
        c = calls[name]["compile"]["total"]
        print(f"{name:18s}: wall {calls[name]['wall_s']:8.2f} s = compile (trace + lower + "
              f"XLA) {c:7.2f} s + the rest {calls[name]['wall_s'] - c:8.2f} s")
    rest = {k: calls[k]["wall_s"] - calls[k]["compile"]["total"] for k in calls}
    print(f"ratio without compile time: cold {rest['faithfulness_cold'] / rest['saliency_cold']:.2f}x"
          f"   warm {rest['faithfulness_warm'] / rest['saliency_warm']:.2f}x")
    means = {k: round(float(v), 4) for k, v in res.mean().items()}
    print("means:", means)
    record.update(
        ratio_wall={"cold": eval_cold[0] / attr_cold[0], "warm": eval_warm[0] / attr_warm[0]},
        ratio_cpu={"cold": eval_cold[1] / attr_cold[1], "warm": eval_warm[1] / attr_warm[1]},
        ratio_without_compile={"cold": rest["faithfulness_cold"] / rest["saliency_cold"],
                               "warm": rest["faithfulness_warm"] / rest["saliency_warm"]},
        n_rows=int(n_rows), n_forwards=int(n_fwd), forward_tokens=int(tokens),
        padded_tokens=int(padded), n_programs=int(programs), means=means)
    if args.profile:
        record["profile"] = _profile(evaluate)
        print(f"warm evaluation under cProfile: {record['profile']['total_s']:.2f} s, of which "
              f"waiting for device results {record['profile']['device_wait_s']:.2f} s "
              f"(host-side rest {record['profile']['host_s']:.2f} s); top functions by "
              f"cumulative time:\n{record['profile']['top']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


def _profile(fn, n_top=15):
    """One call of ``fn`` under cProfile: total seconds, seconds inside ``jax.device_get``
    (waiting for the device's results, with the transfer), the rest (host-side Python) and
    the top ``n_top`` functions by cumulative time."""
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    _timed(fn)
    prof.disable()
    total = time.perf_counter() - t
    stats = pstats.Stats(prof)
    wait = sum(v[3] for k, v in stats.stats.items()
               if k[2] == "device_get" or k[2] == "block_until_ready")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(n_top)
    top = "\n".join(l for l in buf.getvalue().splitlines() if l.strip())
    return {"total_s": total, "device_wait_s": wait, "host_s": total - wait, "top": top}


if __name__ == "__main__":
    main()
