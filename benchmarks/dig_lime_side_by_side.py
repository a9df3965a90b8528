"""jaxattr vs Inseq 0.7.1: discretized integrated gradients and LIME on the same weights.

    . .venv/bin/activate
    python benchmarks/dig_lime_side_by_side.py                   # tiny GPT-2, 2 rounds
    python benchmarks/dig_lime_side_by_side.py --methods lime --rounds 5
    python benchmarks/dig_lime_side_by_side.py --model DIR --n-prompts 1   # another checkpoint

Default workload: the tiny GPT-2 checkpoint of the Inseq records
(``inseq_side/tiny_ckpt/gpt2``: 2 layers, hidden 32, vocabulary 400) and the three forced
texts of ``inseq_side/run_inseq.py`` (7 + 10, 5 + 8 and 6 + 6 tokens). A tiny model because
Inseq's DIG builds every path with a Python loop over tokens, anchors and neighbours (torch
ops on 32-float vectors, ~0.3 s per token per generation step here) at every step: on
GPT-2-124M (vocabulary 50257) it also fits scikit-learn's kNN over the whole vocabulary
first, and one 16 + 16-token sequence takes minutes. ``--model`` takes any decoder-only
checkpoint directory both tools load.

Per method, both tools get their defaults except ``n_samples=50`` for LIME on both sides
(Inseq's default; jaxattr's is 64): DIG ``n_steps=50``, greedy paths, 50 neighbours.
  1. cold: the first call of a jaxattr process (this one: trace + compile + run, with the
     kNN graph built on the device) and Inseq's first call (its kNN graph fitted and pickled
     under a fresh ``INSEQ_ARTIFACTS_CACHE`` when the model is loaded with the method);
  2. ``--rounds`` rounds of one warm jaxattr call then one warm Inseq call (seconds apart:
     this shared machine's load changes within minutes); the ratio is the median of the
     per-round ratios.
Inseq runs decoder-only forced inputs one sequence at a time (and LIME at batch size 1
always); jaxattr runs the three as one padded batch. Inseq runs with OMP_WAIT_POLICY=PASSIVE
(see side_by_side.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _workload as w  # noqa: E402
from side_by_side import Server  # noqa: E402

TINY = os.path.join(HERE, "inseq_side", "tiny_ckpt", "gpt2")
PROMPTS = ["The cat sat on the", "Hello world, this is", "Birds fly south when"]
GENERATED = ["The cat sat on the mat and looked at the dog.",
             "Hello world, this is a tiny test.",
             "Birds fly south when the winter comes."]
METHODS = {"discretized_integrated_gradients": {}, "lime": {"n_samples": 50}}


def inseq_server(model_dir, method, kwargs, prompts, gens, spec_path):
    spec = dict(model_dir=model_dir, prompts=prompts, generated=gens, batch_size=len(prompts),
                load_method=method, runs=[dict(method=method, kwargs=kwargs)])
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    env = w.python_env()
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["INSEQ_ARTIFACTS_CACHE"] = tempfile.mkdtemp(prefix="inseq_bench_")
    return Server([w.SIDE_PY, os.path.join(HERE, "inseq_side", "time_inseq.py"), spec_path,
                   "--serve"], env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=TINY)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-prompts", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("JAXATTR_CACHE_DIR", "0")  # cold = compile and kNN included
    import jax
    import jaxattr

    prompts, gens = PROMPTS[:args.n_prompts], GENERATED[:args.n_prompts]
    print(f"load average: {os.getloadavg()}", flush=True)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; model {args.model}")
    model = jaxattr.load_model(args.model)
    results = {}
    for method in args.methods:
        kwargs = METHODS[method]

        def jcall():
            t = time.perf_counter()
            out = model.attribute(prompts, gens, method=method, show_progress=False, **kwargs)
            _ = [s.target_attributions for s in out.sequence_attributions]  # on the host
            return time.perf_counter() - t

        spec = os.path.join(tempfile.mkdtemp(), "spec.json")
        inseq = inseq_server(args.model, method, kwargs, prompts, gens, spec)
        j_cold = jcall()
        i_cold = inseq.ask("call")["t"]
        rows = []
        for r in range(args.rounds):
            jt = jcall()
            it = inseq.ask("call")["t"]
            rows.append((jt, it))
            print(f"[{method}] round {r}: jaxattr {jt:.3f}s  inseq {it:.3f}s  "
                  f"ratio {it / jt:.1f}x  load {os.getloadavg()[0]:.1f}", flush=True)
        inseq.close()
        ratio = statistics.median(it / jt for jt, it in rows)
        results[method] = dict(jaxattr_cold_s=j_cold, inseq_cold_s=i_cold,
                               jaxattr_warm_s=statistics.median(r[0] for r in rows),
                               inseq_warm_s=statistics.median(r[1] for r in rows),
                               warm_ratio=ratio, cold_ratio=i_cold / j_cold,
                               inseq_load_s=inseq.ready.get("load_s"))
        res = results[method]
        print(f"[{method}] cold: jaxattr {j_cold:.2f}s  inseq {i_cold:.2f}s "
              f"(+ load with kNN {res['inseq_load_s']:.2f}s); warm median: jaxattr "
              f"{res['jaxattr_warm_s']:.3f}s  inseq {res['inseq_warm_s']:.3f}s  "
              f"-> {ratio:.1f}x faster (median of per-round ratios)", flush=True)
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(model=args.model, n_prompts=args.n_prompts, results=results), fh,
                      indent=1)


if __name__ == "__main__":
    main()
