"""jaxattr vs Inseq 0.7.1 on a GPT-2-124M-sized random model: warm, cold, FLOP/s.

    . .venv/bin/activate
    python benchmarks/side_by_side.py                 # all three methods, ~10-15 min on 2 cores
    python benchmarks/side_by_side.py --methods saliency --rounds 5
    python benchmarks/side_by_side.py --ig-rounds 3 --ig-prompts 2 --json out.json

Workload (see benchmarks/README.md): GPT2Config() sizes (12 layers, 768 hidden, vocab 50257),
random weights (std 0.02), saved once as PyTorch model.safetensors under benchmarks/.cache/
and loaded by both tools (jaxattr converts with from_pt). 8 prompts of 16 tokens, each forced
to continue with 16 tokens (decoder-only: generated_texts = prompt + continuation).

Per method:
  1. a FRESH jaxattr process (_jaxattr_worker.py) loads the model and makes its first
     model.attribute call: the cold time (trace + XLA compile + run);
  2. an Inseq process of the side venv (inseq_side/time_inseq.py) loads the same checkpoint;
  3. --rounds rounds, each: a jitted 2048x2048 float32 matmul in the jaxattr process (the
     machine's matmul throughput right now), one warm jaxattr call, one Inseq call. The speed
     ratio is the median of the per-round ratios: each pair is measured seconds apart, which
     matters on this shared machine where the load changes by 2x within minutes;
  4. XLA's cost analysis of the compiled jaxattr pipeline (FLOPs) and its memory analysis.
jaxattr uses batch_size=8 (one batch). Inseq gets batch_size=8 too, but 0.7.1 runs forced
decoder-only inputs one sequence at a time regardless.

Integrated gradients (n_steps=32) runs on the first --ig-prompts prompts only (default 1),
with --ig-rounds rounds (default 1): all 8 prompts cost ~30 TFLOP per call, 8-15 minutes
per call here, and 23 GiB of XLA temporaries in one vmapped batch (more than this machine's
memory; internal_batch_size=8 brings it to 6 GiB). Inseq loops over sequences,
so its IG time is additive over prompts; jaxattr's is linear in batch x n_steps at these
sizes (the matmuls are already large), so the 1-prompt ratio stands for the 8-prompt one.

The Inseq process runs with OMP_WAIT_POLICY=PASSIVE: on this shared, oversubscribed 2-core
machine torch's spinning OpenMP threads made one GPT-2 forward+backward 15x slower (7.3 s vs
0.44 s); passive waiting removes that artefact without changing torch's thread count.
``--cpus 0`` pins both sides (and the matmul reference) to one core with taskset.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _workload as w  # noqa: E402

METHODS = ("saliency", "input_x_gradient", "integrated_gradients")


def _taskset(cpus):
    return ["taskset", "-c", cpus] if cpus else []


class Server:
    """A measurement subprocess speaking JSON lines (see _jaxattr_worker.py --serve)."""

    def __init__(self, cmd, env):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, text=True, env=env, bufsize=1)
        self.ready = self._read()

    def _read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"measurement process exited ({self.proc.wait()})")
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if "msg" in obj:
                    return obj

    def ask(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self.proc.wait()


def jaxattr_server(method, n_prompts, n_steps, cpus, persistent_cache=False):
    env = w.python_env()
    if not persistent_cache:  # cold = compilation included (jaxattr's on-disk XLA cache off)
        env["JAXATTR_CACHE_DIR"] = "0"
    cmd = _taskset(cpus) + [sys.executable, os.path.join(HERE, "_jaxattr_worker.py"),
                            "--serve", "--method", method, "--n-prompts", str(n_prompts),
                            "--batch-size", "8"]
    if n_steps is not None:
        cmd += ["--n-steps", str(n_steps)]
    return Server(cmd, env)


def inseq_server(method, n_prompts, n_steps, prompts, gens, cpus, spec_path):
    spec = dict(model_dir=w.CKPT, prompts=prompts, generated=gens, batch_size=8,
                runs=[dict(method=method, n_prompts=n_prompts,
                           kwargs={"n_steps": n_steps} if n_steps else {})])
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    env = w.python_env()
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return Server(_taskset(cpus) + [w.SIDE_PY, os.path.join(HERE, "inseq_side", "time_inseq.py"),
                                    spec_path, "--serve"], env)


def inseq_flops(cfg, prompt_len, n_steps_attr, n_prompts, n_points):
    """Inseq's work: for each generated token t, a forward and an input-gradient backward
    (about one forward) over the prefix of prompt_len + t tokens, for n_points inputs
    (IG interpolation points) at once. A lower bound (extra forwards not counted)."""
    from _jaxattr_worker import per_token_flops
    per_prompt = sum(2 * (prompt_len + t) * per_token_flops(cfg, prompt_len + t)
                     for t in range(n_steps_attr))
    return n_prompts * n_points * per_prompt


def measure(method, n, n_steps, rounds, prompts, gens, cpus, tmpdir, persistent_cache=False):
    """Fresh jaxattr process: cold call; then `rounds` x (matmul peak, jaxattr warm call,
    Inseq call), interleaved so that each ratio compares calls made seconds apart."""
    ja = jaxattr_server(method, n, n_steps, cpus, persistent_cache)
    try:
        cold = ja.ask("call")
        print(f"  jaxattr cold {cold['t']:.2f}s (trace "
              f"{cold['events'].get('jaxpr_trace_duration', float('nan')):.1f}s, to MLIR "
              f"{cold['events'].get('jaxpr_to_mlir_module_duration', float('nan')):.1f}s, "
              f"XLA compile {cold['events'].get('backend_compile_duration', float('nan')):.1f}s)",
              flush=True)
        ins = inseq_server(method, n, n_steps, prompts, gens, cpus,
                           os.path.join(tmpdir, f"{method}.json"))
        try:
            peaks, warm, calls = [], [], []
            first_ins = None
            for r in range(rounds):
                peaks.append(ja.ask("peak")["flops_per_s"])
                warm.append(ja.ask("call")["t"])
                c = ins.ask("call")
                first_ins = first_ins or c
                calls.append(c["t"])
                print(f"  round {r + 1}: jaxattr warm {warm[-1]:.2f}s, Inseq {calls[-1]:.2f}s, "
                      f"ratio {calls[-1] / warm[-1]:.2f}x, matmul {peaks[-1] / 1e9:.0f} GFLOP/s "
                      f"(load avg {os.getloadavg()[0]:.1f})", flush=True)
            an = ja.ask("analyze")
        finally:
            ins.close()
    finally:
        ja.close()
    return dict(cold=cold, warm_s=warm, inseq_s=calls, peaks=peaks, analyze=an,
                jax_load_s=ja.ready["load_s"], inseq_load_s=ins.ready["load_s"],
                torch_threads=ins.ready["torch_threads"],
                norms=(cold.get("norms"), first_ins.get("norms")),
                shapes=(cold.get("shapes"), first_ins.get("shapes")))


def compare_norms(a, b):
    """Max relative difference of per-token attribution norms (finite entries of both)."""
    worst, n = 0.0, 0
    for sa, sb in zip(a, b):
        for ra, rb in zip(sa, sb):
            for x, y in zip(ra, rb):
                if x is None or y is None:
                    continue
                worst = max(worst, abs(x - y) / max(abs(y), 1e-30))
                n += 1
    return worst, n


def fmt_s(x):
    return "-" if x is None else f"{x:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved (jaxattr warm, Inseq) call pairs per method")
    ap.add_argument("--ig-rounds", type=int, default=1, help="the same for IG")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--ig-prompts", type=int, default=1)
    ap.add_argument("--n-steps", type=int, default=32, help="IG steps")
    ap.add_argument("--cpus", default=None, help="taskset CPU list for both sides, e.g. 0")
    ap.add_argument("--persistent-cache", action="store_true",
                    help="keep jaxattr's on-disk compilation cache on (default: off, so the "
                         "cold call includes XLA compilation)")
    ap.add_argument("--json", default=None, help="also write all raw results here")
    args = ap.parse_args()

    t_all = time.perf_counter()
    w.ensure_checkpoint()
    prompts, gens = w.make_prompts(8)
    meta = json.load(open(os.path.join(w.CKPT, "bench_meta.json")))
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(w.CKPT)
    print(f"model: {w.CKPT}\n  {meta['n_params'] / 1e6:.1f}M params, model vocab "
          f"{meta['model_vocab']}, tokenizer vocab {meta['tokenizer_vocab']} (BPE trained on "
          f"{meta['corpus_chars'] / 1e6:.0f}M local chars)")
    print(f"workload: {args.n_prompts} prompts x (16 prompt + 16 forced tokens), batch_size=8; "
          f"IG n_steps={args.n_steps} on {args.ig_prompts} prompt(s); "
          f"cpus={args.cpus or 'all'} (os.cpu_count()={os.cpu_count()}); jaxattr persistent "
          f"compilation cache {'on' if args.persistent_cache else 'off'}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    results = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for method in args.methods:
            is_ig = method == "integrated_gradients"
            n = args.ig_prompts if is_ig else args.n_prompts
            n_steps = args.n_steps if is_ig else None
            rounds = args.ig_rounds if is_ig else args.rounds
            print(f"\n[{method}] {n} prompt(s): fresh jaxattr process (cold call), then "
                  f"{rounds} interleaved rounds", flush=True)
            m = measure(method, n, n_steps, rounds, prompts, gens, args.cpus, tmpdir,
                        args.persistent_cache)
            an = m["analyze"]
            flops = an.get("xla_flops") or an["analytic_flops"]
            warm = statistics.median(m["warm_s"])
            ins = statistics.median(m["inseq_s"])
            pairs = [i / j for i, j in zip(m["inseq_s"], m["warm_s"])]
            fracs = [flops / t / p for t, p in zip(m["warm_s"], m["peaks"])]
            ins_flops = inseq_flops(cfg, 16, 16, n, n_steps or 1)
            err, n_cmp = compare_norms(*m["norms"])
            results.append(dict(
                method=method, n_prompts=n, n_steps=n_steps, rounds=rounds, measure=m,
                warm_s=warm, cold_s=m["cold"]["t"], inseq_s=ins,
                ratio_warm=statistics.median(pairs), ratio_warm_pairs=pairs,
                ratio_cold=ins / m["cold"]["t"], flops=flops,
                achieved_flops_per_s=flops / warm, peak_flops_per_s=statistics.median(m["peaks"]),
                fraction_of_peak=statistics.median(fracs), inseq_flops=ins_flops,
                inseq_flops_per_s=ins_flops / ins, norm_max_rel_diff=err, norm_compared=n_cmp,
                shapes_equal=m["shapes"][0] == m["shapes"][1]))

    print("\n=== results: seconds, medians; shared 2-core CPU, noisy (see ratios per round) ===")
    print(f"{'method':<21}{'prompts':>7}{'jax warm':>9}{'jax cold':>9}{'Inseq':>8}"
          f"{'Ins/warm':>9}{'Ins/cold':>9}{'jax GFLOP':>10}{'GFLOP/s':>8}{'peak':>6}"
          f"{'%peak':>6}{'Ins GFLOP':>10}{'GFLOP/s':>8}{'norm err':>9}")
    for r in results:
        print(f"{r['method']:<21}{r['n_prompts']:>7}{r['warm_s']:>9.2f}{r['cold_s']:>9.2f}"
              f"{r['inseq_s']:>8.2f}{r['ratio_warm']:>8.2f}x{r['ratio_cold']:>8.2f}x"
              f"{r['flops'] / 1e9:>10.0f}{r['achieved_flops_per_s'] / 1e9:>8.1f}"
              f"{r['peak_flops_per_s'] / 1e9:>6.0f}{100 * r['fraction_of_peak']:>5.0f}%"
              f"{r['inseq_flops'] / 1e9:>10.0f}{r['inseq_flops_per_s'] / 1e9:>8.1f}"
              f"{r['norm_max_rel_diff']:>9.0e}")
    print("""
jax warm   median of the jaxattr warm calls (batch_size=8: one batch, one compiled program)
jax cold   first model.attribute call in a fresh process: trace + XLA compile + run
           (model load and imports excluded; they are listed below)
Inseq      median of its calls (it compiles nothing; its first call is included)
Ins/warm   median over rounds of Inseq / jaxattr-warm, each pair measured back to back
Ins/cold   Inseq median / jaxattr cold
jax GFLOP  XLA cost analysis of the compiled pipeline; GFLOP/s = that / jax warm
peak       jitted float32 2048x2048 jnp.dot in the jaxattr process, measured every round;
           %peak = median over rounds of (GFLOP/s of that round) / (peak of that round)
Ins GFLOP  analytic count of Inseq's work (per generated token: forward + input-gradient
           backward over the prefix); GFLOP/s = that / Inseq time
norm err   max relative difference of per-token attribution L2 norms, jaxattr vs Inseq""")
    for r in results:
        m = r["measure"]
        ev = m["cold"]["events"]
        mem = m["analyze"]["memory"] or {}
        print(f"{r['method']}: rounds jax {[round(t, 2) for t in m['warm_s']]} / Inseq "
              f"{[round(t, 2) for t in m['inseq_s']]} -> ratios "
              f"{[round(p, 2) for p in r['ratio_warm_pairs']]}; cold call: trace "
              f"{ev.get('jaxpr_trace_duration', float('nan')):.1f}s + MLIR "
              f"{ev.get('jaxpr_to_mlir_module_duration', float('nan')):.1f}s + XLA compile "
              f"{ev.get('backend_compile_duration', float('nan')):.1f}s; loads: jaxattr "
              f"{m['jax_load_s']:.1f}s (from_pt), Inseq {m['inseq_load_s']:.1f}s; XLA temp "
              f"{mem.get('temp_size_in_bytes', 0) / 2**30:.2f} GiB; torch threads "
              f"{m['torch_threads']}; padded {m['analyze']['padded_shape']}; shapes equal "
              f"{r['shapes_equal']}")
    targets = []
    for r in results:
        if r["method"] in ("saliency", "integrated_gradients"):
            targets.append(f"{r['method']} warm >= 4x faster than Inseq: "
                           f"{'MET' if r['ratio_warm'] >= 4 else 'NOT met'} "
                           f"({r['ratio_warm']:.2f}x)")
        targets.append(f"{r['method']} cold not slower than Inseq: "
                       f"{'MET' if r['ratio_cold'] >= 1 else 'NOT met'} "
                       f"({r['ratio_cold']:.2f}x)")
        targets.append(f"{r['method']} FLOP/s >= 50% of matmul peak: "
                       f"{'MET' if r['fraction_of_peak'] >= 0.5 else 'NOT met'} "
                       f"({100 * r['fraction_of_peak']:.0f}%)")
    print("\ntargets (issue 7):\n  " + "\n  ".join(targets))
    print(f"\ntotal benchmark time {time.perf_counter() - t_all:.0f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(args=vars(args), meta=meta, results=results), fh, indent=1)


if __name__ == "__main__":
    main()
