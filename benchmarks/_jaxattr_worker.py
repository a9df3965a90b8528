"""Fresh-process jaxattr measurements for side_by_side.py (JSON lines on stdout).

Serve mode (what side_by_side.py uses; one command per stdin line, one JSON line back):

    python benchmarks/_jaxattr_worker.py --serve --method saliency --n-prompts 8
      -> {"msg": "ready", "load_s": ...}          after importing and loading the checkpoint
    call     -> {"msg": "call", "t": seconds, ...}   one model.attribute call; the FIRST one
                                                     in the process is the cold call (trace +
                                                     XLA compile + run; "events" splits it)
    peak     -> {"msg": "peak", "flops_per_s": ...}  jitted f32 2048x2048 jnp.dot, median of 10
    analyze  -> {"msg": "analyze", "xla_flops": ..., "memory": {...}, ...}
    quit

Batch mode (by hand): ``--repeats N [--analyze]`` does cold + N warm calls and prints one
JSON object.

Every call goes through the public ``model.attribute(prompts, generated_texts, method=...,
batch_size=8)`` and ends with numpy views on the host, so device work is finished. ``analyze``
lowers and compiles again the ``attribute_batch`` call that model.attribute made (captured)
for XLA's ``cost_analysis()`` FLOPs and ``memory_analysis()``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _workload import matmul_flops_per_s  # noqa: E402

EVENT_KEYS = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration",
              "backend_compile_duration")


def per_token_flops(cfg, ctx):
    """Matmul FLOPs of one token's forward at context length ``ctx``: 2 * (12 n_layer H^2
    [qkv, proj, mlp] + V H [LM head]) + 4 n_layer ctx H [attention scores and values]."""
    H, nl, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    return 2 * (12 * nl * H * H + V * H) + 4 * nl * ctx * H


def analytic_flops(cfg, B, L, T, n_points):
    """jaxattr: one forward over [n_points * B, L] and T input-gradient backward passes
    (each about one forward), all over the padded length L."""
    return n_points * (1 + T) * B * L * per_token_flops(cfg, L)


class Worker:
    def __init__(self, args):
        t_start = time.perf_counter()
        import jax
        import numpy as np
        import jaxattr
        import jaxattr.model as jm
        import _workload as w

        self.jax, self.np = jax, np
        ckpt = args.ckpt or w.CKPT
        t0 = time.perf_counter()
        self.model = jaxattr.load_model(ckpt)
        self.load_s = time.perf_counter() - t0
        self.import_s = t0 - t_start
        prompts, gens = w.make_prompts(8, ckpt)
        self.prompts, self.gens = prompts[:args.n_prompts], gens[:args.n_prompts]
        self.args = args
        self.kw = {}
        if args.n_steps is not None:
            self.kw["n_steps"] = args.n_steps
        if args.internal_batch_size is not None:
            self.kw["internal_batch_size"] = args.internal_batch_size
        self.captured = {}
        orig = jm.attribute_batch

        def spy(*a, **k):
            self.captured["args"], self.captured["kwargs"] = a, dict(k)
            return orig(*a, **k)

        jm.attribute_batch = spy
        self.events = {}
        try:
            import jax.monitoring
            jax.monitoring.register_event_duration_secs_listener(self._event)
        except Exception:  # pragma: no cover
            pass
        self.n_calls = 0

    def _event(self, name, secs, **_):
        key = name.rsplit("/", 1)[-1]
        if key in EVENT_KEYS:
            self.events[key] = self.events.get(key, 0.0) + secs

    def call(self):
        self.events.clear()
        t = time.perf_counter()
        out = self.model.attribute(self.prompts, self.gens, method=self.args.method,
                                   batch_size=self.args.batch_size, show_progress=False,
                                   **self.kw)
        dt = time.perf_counter() - t
        self.n_calls += 1
        res = dict(msg="call", t=dt, index=self.n_calls, events=dict(self.events))
        if self.n_calls == 1:
            np = self.np
            res["shapes"] = [list(s.target_attributions.shape)
                             for s in out.sequence_attributions]
            res["norms"] = [[[None if v != v else float(v) for v in row]
                             for row in np.linalg.norm(s.target_attributions, axis=-1).tolist()]
                            for s in out.sequence_attributions]
        return res

    def analyze(self):
        import jaxattr.pipeline as jp
        a, k = self.captured["args"], dict(self.captured["kwargs"])
        k.pop("jit", None)
        batch = a[1]
        B, L = (int(v) for v in batch.target_ids.shape)
        T = int(batch.step_mask.shape[1])
        t = time.perf_counter()
        if hasattr(jp, "compiled_attribute"):
            compiled = jp.compiled_attribute(*a, **k)
        else:  # older pipeline without the helper
            compiled = jp._attribute_jit.lower(*a, **k).compile()
        aot_s = time.perf_counter() - t
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        mem = compiled.memory_analysis()
        is_ig = self.args.method == "integrated_gradients"
        n_points = self.kw.get("n_steps", 50) if is_ig else 1
        return dict(
            msg="analyze", padded_shape=dict(B=B, L=L, T=T), aot_lower_compile_s=aot_s,
            xla_flops=float(cost.get("flops", float("nan"))) if cost else None,
            xla_bytes_accessed=float(cost.get("bytes accessed", float("nan"))) if cost else None,
            analytic_flops=analytic_flops(self.model.config, B, L, T, n_points),
            memory=None if mem is None else {
                f: int(getattr(mem, f)) for f in (
                    "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
                    "alias_size_in_bytes", "generated_code_size_in_bytes")
                if hasattr(mem, f)},
            jax=self.jax.__version__, devices=[str(d) for d in self.jax.devices()],
            compilation_cache_dir=self.jax.config.jax_compilation_cache_dir or None,
            cpu_affinity=sorted(os.sched_getaffinity(0)))


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="saliency")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-steps", type=int, default=None)
    ap.add_argument("--internal-batch-size", type=int, default=None)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--analyze", action="store_true")
    args = ap.parse_args()

    wk = Worker(args)
    if args.serve:
        emit(dict(msg="ready", load_s=wk.load_s, import_s=wk.import_s))
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "call":
                emit(wk.call())
            elif cmd == "peak":
                emit(dict(msg="peak", flops_per_s=matmul_flops_per_s()))
            elif cmd == "analyze":
                emit(wk.analyze())
            elif cmd == "quit":
                break
        return
    cold = wk.call()
    times = [wk.call()["t"] for _ in range(args.repeats)]
    res = dict(method=args.method, load_s=wk.load_s, cold_s=cold["t"],
               cold_events=cold["events"], times_s=times,
               warm_s=statistics.median(times) if times else None)
    if args.analyze:
        res.update(wk.analyze())
        res["matmul_flops_per_s"] = matmul_flops_per_s()
    emit(res)


if __name__ == "__main__":
    main()
