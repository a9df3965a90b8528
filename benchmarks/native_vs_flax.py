"""Native decoder vs transformers' Flax Llama at GPT-2-124M size, and compile time vs depth.

    PYTHONPATH=$PWD python benchmarks/native_vs_flax.py [all|compile|speed] [--rounds 3]
        [--ig-steps 16] [--batch 2] [--layer-loops scan,unroll] [--no-flop-count]
        [--program-only K] [--profile] [--json PATH]

1. A random Llama config of GPT-2-124M size (hidden 768, 12 layers, 12 heads, MLP 3072,
   vocab 32000, θ 1e4 where the Flax class is right) is built as a Flax model, exported to
   PyTorch-layout ``model.safetensors`` (no torch) and loaded twice: through the Flax adapter
   and natively. Saliency and integrated gradients (``--ig-steps``, 16 by default) on the same
   batch (2 sequences, 16 + 16 tokens): XLA FLOPs of the compiled program (counted with every
   ``lax.scan`` unrolled, since XLA's cost analysis counts a loop body once), warm times in ``--rounds`` interleaved
   rounds (one call of each path per round, the order alternating, so the shared machine's
   load affects both), the median of the per-round FLOP/s ratios and the largest attribution
   difference.
2. Compile time (lower + compile of the saliency program) of native configs of the same width
   with 4 and 32 layers.

Both native layer loops run by default (``--layer-loops scan,unroll``): ``native`` (weights
stacked, one ``lax.scan`` iteration per layer) and ``native-unroll`` (per-layer weights, the
layers unrolled; ``load_model(..., layer_loop="unroll")``), each against the Flax path.

``--batch`` sets the number of sequences (1 to 8; on an accelerator 2 x 32 tokens is too
small to time). ``--no-flop-count`` skips counting (two more compiles per path, with every scan
unrolled): the ratio is then the time ratio flax / native, which equals the FLOP/s ratio
because both programs execute the same FLOPs (252.7 / 1043.1 GFLOP at 2 sequences, counted).
``--program-only K`` times the compiled program alone (K runs per timing) instead of the
whole ``model.attribute`` call, whose host work (tokenising, batching, results) would hide an
accelerator's milliseconds. ``--profile`` traces 3 more calls of each path with
``jax.profiler`` and prints XLA CPU's operation events per call summed by kind (``dot``,
``dynamic-slice_bitcast_fusion``: a layer's weights copied out of the stack; ``while``;
``wrapped_broadcast``: zero-filled stacks of saved activations; …). ``--json`` writes every number (``benchmarks/gpu_check.sh`` runs
it on a lent GPU).

No torch. The machine is shared: times are also given in process CPU seconds (all threads),
which the other processes on the machine do not inflate; each number is one run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ["JAXATTR_CACHE_DIR"] = "0"


def llama_config(layers=12, vocab=32000):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=vocab, hidden_size=768, intermediate_size=3072,
                       num_hidden_layers=layers, num_attention_heads=12, num_key_value_heads=12,
                       max_position_embeddings=1024, rope_theta=10000.0, bos_token_id=3,
                       eos_token_id=2, pad_token_id=1, tie_word_embeddings=False)


def workload(tok, n=2, prompt=16, cont=16):
    """``n`` (prompt, full text) pairs of exactly ``prompt`` + ``cont`` tokens."""
    import _workload as w
    pairs = []
    for text in w.PASSAGES:
        ids = tok(text)["input_ids"]
        if len(ids) < prompt + cont:
            continue
        p, full = tok.decode(ids[1:prompt]), tok.decode(ids[1:prompt + cont])
        if tok(p)["input_ids"] == ids[:prompt] and tok(full)["input_ids"] == ids[:prompt + cont]:
            pairs.append((p, full))
        if len(pairs) == n:
            return pairs
    raise RuntimeError("no passages re-tokenise exactly")


def unrolled_flops(jitted, *args, **kw):
    """XLA FLOPs of ``jitted(*args, **kw)`` with every ``lax.scan`` unrolled: XLA's cost
    analysis counts a loop body once, so the native decoder's scanned layers would count as
    one layer. The unrolled program is only counted, never run (caches cleared after)."""
    import jax
    from profile_pipeline import xla_flops
    scan = jax.lax.scan

    def unrolled(f, init, xs=None, length=None, **opts):
        opts["unroll"] = True
        return scan(f, init, xs, length, **opts)
    jax.clear_caches()
    jax.lax.scan = unrolled
    try:
        return xla_flops(jitted, *args, **kw)[0]
    finally:
        jax.lax.scan = scan
        jax.clear_caches()


def prepare_call(model, prompts, texts, method, *, count=True, program_only=0, **kw):
    """XLA FLOPs of ``method``'s compiled program on ``model`` (``None`` when not ``count``),
    a timed call ``() -> (wall s, process CPU s, result or None)`` and the full call
    ``() -> AttributionOutput``. The timed call is ``model.attribute`` (host work included),
    or with ``program_only = k > 0`` the compiled program alone, run ``k`` times on the
    prepared batch (times per run). Counting clears JAX's caches, so count every path before
    warming any up."""
    import jax
    from jaxattr import pipeline
    args = dict(method=method, prefix_groups=1, **kw)
    prep = model.prepare(prompts, texts, **args)
    batch = prep.batch(0)
    call = {k: v for k, v in prep.spec.pipeline_kwargs().items() if k != "prefix_groups"}
    flops = (unrolled_flops(pipeline._attribute_jit, model.adapter, batch, None, **call)
             if count else None)
    args["show_progress"] = False

    def full():
        out = model.attribute(prompts, texts, **args)
        jax.block_until_ready(out.batches)
        return out

    def timed():
        t, c = time.perf_counter(), time.process_time()
        if not program_only:
            out = full()
            return time.perf_counter() - t, time.process_time() - c, out
        for _ in range(program_only):
            jax.block_until_ready(pipeline._attribute_jit(model.adapter, batch, None, **call))
        return ((time.perf_counter() - t) / program_only,
                (time.process_time() - c) / program_only, None)
    return flops, timed, full


def profile(run, runs=3, top=14):
    """XLA CPU operation events of ``runs`` calls of ``run``, summed by kind (the HLO name
    without its numeric suffix): ``[(kind, ms per call, events per call)]``, largest first.
    Durations are summed over the threads: CPU time by operation, not a split of wall time."""
    import collections
    import glob
    import re
    import jax
    with tempfile.TemporaryDirectory() as d:
        opts = jax.profiler.ProfileOptions()
        opts.host_tracer_level, opts.python_tracer_level = 3, 0
        jax.profiler.start_trace(d, profiler_options=opts)
        for _ in range(runs):
            run()
        jax.profiler.stop_trace()
        data = jax.profiler.ProfileData.from_file(
            glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0])
        ns, count = collections.Counter(), collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                for ev in line.events:
                    if ("Thunk" in ev.name or ev.name.startswith(("$", "end: "))
                            or "Pjit" in ev.name or "PjRt" in ev.name):
                        continue
                    kind = re.sub(r"\.\d+$", "", ev.name)
                    ns[kind] += ev.duration_ns
                    count[kind] += 1
    return [(k, v / runs / 1e6, count[k] // runs) for k, v in ns.most_common(top)]


def compile_time(layers, tok, loop="scan"):
    import jax
    import jax.numpy as jnp
    import jaxattr
    from jaxattr import pipeline
    from jaxattr.models import NativeDecoder, NativeModel, spec_from_config
    config = llama_config(layers)
    spec = spec_from_config(config)
    k = jax.random.PRNGKey(0)
    H, F, V, n = 768, 3072, config.vocab_size, layers
    shapes = {"q": (n, H, H), "k": (n, H, H), "v": (n, H, H), "o": (n, H, H),
              "gate": (n, H, F), "up": (n, H, F), "down": (n, F, H), "attn_in": (n, H),
              "mlp_in": (n, H)}
    params = {"embed": 0.02 * jax.random.normal(k, (V, H)), "final_norm": jnp.ones(H),
              "head": 0.02 * jax.random.normal(k, (H, V)),
              "layers": {name: 0.02 * jax.random.normal(k, s) for name, s in shapes.items()}}
    decoder = NativeDecoder(params=params, spec=spec).with_layer_loop(loop)
    decoder = jax.block_until_ready(decoder)   # not still being sampled while compiling
    model = jaxattr.load_model(NativeModel(config, decoder), tokenizer=tok)
    prompts, texts = map(list, zip(*workload(tok)))
    prep = model.prepare(prompts, texts, method="saliency", prefix_groups=1)
    batch = prep.batch(0)
    call = {k: v for k, v in prep.spec.pipeline_kwargs().items() if k != "prefix_groups"}
    jax.clear_caches()
    t, c = time.perf_counter(), time.process_time()
    pipeline._attribute_jit.lower(model.adapter, batch, None, **call).compile()
    return time.perf_counter() - t, time.process_time() - c


def main(argv=None):
    import argparse
    import numpy as np
    import transformers as T
    import jaxattr
    from _pt_export import export_pt_safetensors
    from jaxattr.models import NativeDecoder
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", nargs="?", default="all", choices=("all", "compile", "speed"))
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved warm rounds (one call of each path, order alternating)")
    ap.add_argument("--ig-steps", type=int, default=16, help="integrated gradients n_steps")
    ap.add_argument("--batch", type=int, default=2, choices=range(1, 9), metavar="{1..8}",
                    help="sequences of 16 + 16 tokens attributed in one call")
    ap.add_argument("--layer-loops", default="scan,unroll",
                    help="native layer loops to compare with Flax: scan, unroll or both")
    ap.add_argument("--no-flop-count", action="store_true",
                    help="skip counting FLOPs; ratio = time ratio (same FLOPs on both paths)")
    ap.add_argument("--program-only", type=int, default=0, metavar="K",
                    help="time the compiled program alone, K runs per timing (0: the whole "
                         "model.attribute call, host work included)")
    ap.add_argument("--profile", action="store_true",
                    help="after the rounds, trace 3 calls of each path with jax.profiler and "
                         "print XLA CPU's operation time per call by kind")
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args(argv)
    loops = [x for x in args.layer_loops.split(",") if x]
    if not loops or set(loops) - {"scan", "unroll"}:
        ap.error(f"--layer-loops {args.layer_loops!r}: use scan, unroll or scan,unroll")
    natives = ["native" if x == "scan" else "native-unroll" for x in loops]
    report = {"argv": sys.argv[1:], "load_before": os.getloadavg(), "batch": args.batch,
              "tokens_per_sequence": 32, "program_only": args.program_only,
              "layer_loops": loops}

    def dump():
        if args.json:
            import jax
            report["devices"] = [str(d) for d in jax.devices()]
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
    tok = T.AutoTokenizer.from_pretrained(os.path.join(HERE, "native_side", "tokenizer"))
    print(f"load average {os.getloadavg()} (shared machine)", flush=True)
    if args.part in ("all", "compile"):
        report["compile_s"] = {}
        for loop in loops:
            ct = {n: compile_time(n, tok, loop) for n in (4, 32)}
            print(f"compile (saliency program, native, layer_loop={loop}), CPU seconds (wall): "
                  f"4 layers {ct[4][1]:.1f} ({ct[4][0]:.1f}), 32 layers {ct[32][1]:.1f} "
                  f"({ct[32][0]:.1f}); CPU ratio {ct[32][1] / ct[4][1]:.2f}", flush=True)
            report["compile_s"][loop] = {str(n): {"wall": ct[n][0], "cpu": ct[n][1]}
                                         for n in ct}
            dump()
    if args.part == "compile":
        return
    flax_model = T.FlaxLlamaForCausalLM(llama_config(), seed=0)
    with tempfile.TemporaryDirectory() as d:
        export_pt_safetensors(flax_model, tok, d)
        native = jaxattr.load_model(d)
    assert isinstance(native.adapter, NativeDecoder)
    models = {"flax": jaxattr.load_model(flax_model, tokenizer=tok)}
    for loop, name in zip(loops, natives):
        models[name] = native if loop == "scan" else jaxattr.load_model(dataclasses.replace(
            native.hf_model, functions=native.adapter.with_layer_loop(loop)), tokenizer=tok)
    prompts, texts = map(list, zip(*workload(tok, n=args.batch)))
    rows = []
    for method, kw in (("saliency", {}), ("integrated_gradients", {"n_steps": args.ig_steps})):
        flops, calls, fulls = {}, {}, {}
        for name, model in models.items():
            flops[name], calls[name], fulls[name] = prepare_call(
                model, prompts, texts, method, count=not args.no_flop_count,
                program_only=args.program_only, **kw)
        if args.no_flop_count:   # equal work on every path (counted: see the docstring)
            flops = {name: 1.0 for name in models}
        for name in calls:   # compile all after all counting (counting clears the caches)
            calls[name]()
            fulls[name]()
        wall = {name: [] for name in models}
        cpu = {name: [] for name in models}
        ratios = {name: [] for name in natives}
        cpu_ratios = {name: [] for name in natives}
        outs = {}
        for r in range(args.rounds):
            order = list(models) if r % 2 == 0 else list(models)[::-1]
            for name in order:
                t, c, outs[name] = calls[name]()
                wall[name].append(t)
                cpu[name].append(c)
            for name in natives:   # FLOP/s ratio native / flax in this round
                ratios[name].append(flops[name] / wall[name][-1]
                                    / (flops["flax"] / wall["flax"][-1]))
                cpu_ratios[name].append(flops[name] / cpu[name][-1]
                                        / (flops["flax"] / cpu["flax"][-1]))
            print(f"{method} round {r}: " + ", ".join(
                f"{name} {wall[name][-1]:.2f} s" for name in models) + "; FLOP/s ratio to flax "
                + ", ".join(f"{name} {ratios[name][-1]:.2f} (CPU {cpu_ratios[name][-1]:.2f})"
                            for name in natives) + f"; load {os.getloadavg()[0]:.1f}", flush=True)
        outs = {k: fulls[k]() if v is None else v for k, v in outs.items()}
        flat = {k: np.concatenate([np.nan_to_num(s.target_attributions).ravel()
                                   for s in outs[k].sequence_attributions]) for k in models}
        errs = {k: float(np.abs(flat[k] - flat["flax"]).max() / np.abs(flat["flax"]).max())
                for k in natives}
        counted = not args.no_flop_count
        for name in models:
            t, c = statistics.median(wall[name]), statistics.median(cpu[name])
            rows.append((method, name, flops[name] if counted else None, t, c))
            gf = (f"{flops[name] / 1e9:8.1f} GFLOP" if counted else "   (not counted)")
            rate = f"{flops[name] / t / 1e9:7.1f} GFLOP/s" if counted else ""
            err = f"max|diff|/max {errs[name]:.1e}" if name in errs else ""
            print(f"{method:<22}{name:<14}{gf} {t:7.3f} s wall {c:7.2f} s CPU {rate}  {err}",
                  flush=True)
        report[method] = {"flops": flops if counted else None, "wall_s": wall, "cpu_s": cpu}
        if args.profile:
            report[method]["profile_ms_per_call"] = {}
            for name in models:
                rows_ = profile(calls[name])
                report[method]["profile_ms_per_call"][name] = rows_
                print(f"{method} {name}: operation events per call, ms (count): " + ", ".join(
                    f"{k} {ms:.1f} ({c})" for k, ms, c in rows_), flush=True)
        for name in natives:
            print(f"{method}: FLOP/s {name} / flax, median of {args.rounds} per-round ratios: "
                  f"wall {statistics.median(ratios[name]):.2f}, CPU "
                  f"{statistics.median(cpu_ratios[name]):.2f}", flush=True)
            report[method][name] = {
                "ratio_per_round": ratios[name], "cpu_ratio_per_round": cpu_ratios[name],
                "ratio_median": statistics.median(ratios[name]),
                "cpu_ratio_median": statistics.median(cpu_ratios[name]),
                "max_diff_over_max": errs[name]}
        dump()
    print("\n| method | path | GFLOP | warm wall s | warm CPU s | GFLOP/s (wall) |")
    print("|---|---|---|---|---|---|")
    for method, name, flops_, t, c in rows:
        gf, rate = ((f"{flops_ / 1e9:.1f}", f"{flops_ / t / 1e9:.1f}") if flops_ is not None
                    else ("-", "-"))
        print(f"| {method} | {name} | {gf} | {t:.3f} | {c:.2f} | {rate} |")
    print(f"uptime: {os.getloadavg()}")
    report["load_after"] = os.getloadavg()
    dump()


if __name__ == "__main__":
    main()
