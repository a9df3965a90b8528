"""Native decoder vs transformers' Flax Llama at GPT-2-124M size, and compile time vs depth.

    PYTHONPATH=$PWD python benchmarks/native_vs_flax.py [all|compile|speed] [--rounds 3] [--ig-steps 16]

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

No torch. The machine is shared: times are also given in process CPU seconds (all threads),
which the other processes on the machine do not inflate; each number is one run.
"""
from __future__ import annotations

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


def prepare_call(model, prompts, texts, method, **kw):
    """XLA FLOPs of ``method``'s compiled program on ``model`` and a timed call
    ``() -> (wall s, process CPU s, result)``. Counting clears JAX's caches, so count every
    path before warming any up."""
    import jax
    from jaxattr import pipeline
    args = dict(method=method, prefix_groups=1, **kw)
    prep = model.prepare(prompts, texts, **args)
    batch = prep.batch(0)
    call = {k: v for k, v in prep.spec.pipeline_kwargs().items() if k != "prefix_groups"}
    flops = unrolled_flops(pipeline._attribute_jit, model.adapter, batch, None, **call)
    args["show_progress"] = False

    def timed():
        t, c = time.perf_counter(), time.process_time()
        out = model.attribute(prompts, texts, **args)
        jax.block_until_ready(out.batches)
        return time.perf_counter() - t, time.process_time() - c, out
    return flops, timed


def compile_time(layers, tok):
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
    params = jax.block_until_ready(params)   # not still being sampled while compiling
    model = jaxattr.load_model(NativeModel(config, NativeDecoder(params=params, spec=spec)),
                               tokenizer=tok)
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
    args = ap.parse_args(argv)
    tok = T.AutoTokenizer.from_pretrained(os.path.join(HERE, "native_side", "tokenizer"))
    print(f"load average {os.getloadavg()} (shared machine)", flush=True)
    if args.part in ("all", "compile"):
        ct = {n: compile_time(n, tok) for n in (4, 32)}
        print(f"compile (saliency program, native), CPU seconds (wall): 4 layers {ct[4][1]:.1f} "
              f"({ct[4][0]:.1f}), 32 layers {ct[32][1]:.1f} ({ct[32][0]:.1f}); CPU ratio "
              f"{ct[32][1] / ct[4][1]:.2f}", flush=True)
    if args.part == "compile":
        return
    flax_model = T.FlaxLlamaForCausalLM(llama_config(), seed=0)
    with tempfile.TemporaryDirectory() as d:
        export_pt_safetensors(flax_model, tok, d)
        native = jaxattr.load_model(d)
    assert isinstance(native.adapter, NativeDecoder)
    legacy = jaxattr.load_model(flax_model, tokenizer=tok)
    prompts, texts = map(list, zip(*workload(tok)))
    rows = []
    for method, kw in (("saliency", {}), ("integrated_gradients", {"n_steps": args.ig_steps})):
        flops, calls = {}, {}
        for name, model in (("flax", legacy), ("native", native)):
            flops[name], calls[name] = prepare_call(model, prompts, texts, method, **kw)
        for name in calls:   # compile both after all counting (counting clears the caches)
            calls[name]()
        wall = {"flax": [], "native": []}
        cpu = {"flax": [], "native": []}
        ratios, cpu_ratios, outs = [], [], {}
        for r in range(args.rounds):
            order = ("flax", "native") if r % 2 == 0 else ("native", "flax")
            for name in order:
                t, c, outs[name] = calls[name]()
                wall[name].append(t)
                cpu[name].append(c)
            # FLOP/s ratio native / flax in this round
            ratios.append(flops["native"] / wall["native"][-1] / (flops["flax"] / wall["flax"][-1]))
            cpu_ratios.append(flops["native"] / cpu["native"][-1]
                              / (flops["flax"] / cpu["flax"][-1]))
            print(f"{method} round {r}: flax {wall['flax'][-1]:.2f} s, native "
                  f"{wall['native'][-1]:.2f} s, FLOP/s ratio native/flax {ratios[-1]:.2f} "
                  f"(CPU {cpu_ratios[-1]:.2f}), load {os.getloadavg()[0]:.1f}", flush=True)
        a, b = (np.concatenate([np.nan_to_num(s.target_attributions).ravel()
                                for s in outs[k].sequence_attributions])
                for k in ("flax", "native"))
        err = np.abs(a - b).max() / np.abs(a).max()
        for name in ("flax", "native"):
            t, c = statistics.median(wall[name]), statistics.median(cpu[name])
            rows.append((method, name, flops[name], t, c, err))
            print(f"{method:<22}{name:<8}{flops[name] / 1e9:8.1f} GFLOP {t:7.2f} s wall "
                  f"{c:7.2f} s CPU {flops[name] / t / 1e9:7.1f} GFLOP/s  max|diff|/max "
                  f"{err:.1e}", flush=True)
        print(f"{method}: FLOP/s native / flax, median of {args.rounds} per-round ratios: "
              f"wall {statistics.median(ratios):.2f}, CPU {statistics.median(cpu_ratios):.2f}",
              flush=True)
    print("\n| method | path | GFLOP | warm wall s | warm CPU s | GFLOP/s (wall) |")
    print("|---|---|---|---|---|---|")
    for method, name, flops_, t, c, _ in rows:
        print(f"| {method} | {name} | {flops_ / 1e9:.1f} | {t:.2f} | {c:.2f} | "
              f"{flops_ / t / 1e9:.1f} |")
    print(f"uptime: {os.getloadavg()}")


if __name__ == "__main__":
    main()
