"""Native decoder vs transformers' Flax Llama at GPT-2-124M size, and compile time vs depth.

    PYTHONPATH=$PWD python benchmarks/native_vs_flax.py [compile]   # compile: part 2 only

1. A random Llama config of GPT-2-124M size (hidden 768, 12 layers, 12 heads, MLP 3072,
   vocab 32000, θ 1e4 where the Flax class is right) is built as a Flax model, exported to
   PyTorch-layout ``model.safetensors`` (no torch) and loaded twice: through the Flax adapter
   and natively. Saliency and integrated gradients (16 steps) on the same batch (2 sequences,
   16 + 16 tokens): XLA FLOPs of the compiled program, warm time (median of 3), FLOP/s and
   the largest attribution difference.
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


def measure(model, prompts, texts, method, **kw):
    import jax
    from jaxattr import pipeline
    from profile_pipeline import xla_flops
    args = dict(method=method, show_progress=False, prefix_groups=1, **kw)
    args.pop("show_progress")
    prep = model.prepare(prompts, texts, **args)
    args["show_progress"] = False
    batch = prep.batch(0)
    call = {k: v for k, v in prep.spec.pipeline_kwargs().items() if k != "prefix_groups"}
    flops = xla_flops(pipeline._attribute_jit, model.adapter, batch, None, **call)[0]
    out = model.attribute(prompts, texts, **args)
    times, cpu = [], []
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(model.attribute(prompts, texts, **args).batches)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return flops, statistics.median(times), statistics.median(cpu), out


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


def main():
    import numpy as np
    import transformers as T
    import jaxattr
    from _pt_export import export_pt_safetensors
    from jaxattr.models import NativeDecoder
    tok = T.AutoTokenizer.from_pretrained(os.path.join(HERE, "native_side", "tokenizer"))
    print(f"load average {os.getloadavg()[0]:.1f} (shared machine)", flush=True)
    ct = {n: compile_time(n, tok) for n in (4, 32)}
    print(f"compile (saliency program, native), CPU seconds (wall): 4 layers {ct[4][1]:.1f} "
          f"({ct[4][0]:.1f}), 32 layers {ct[32][1]:.1f} ({ct[32][0]:.1f}); CPU ratio "
          f"{ct[32][1] / ct[4][1]:.2f}", flush=True)
    if sys.argv[1:] == ["compile"]:
        return
    flax_model = T.FlaxLlamaForCausalLM(llama_config(), seed=0)
    with tempfile.TemporaryDirectory() as d:
        export_pt_safetensors(flax_model, tok, d)
        native = jaxattr.load_model(d)
    assert isinstance(native.adapter, NativeDecoder)
    legacy = jaxattr.load_model(flax_model, tokenizer=tok)
    prompts, texts = map(list, zip(*workload(tok)))
    rows = []
    for method, kw in (("saliency", {}), ("integrated_gradients", {"n_steps": 16})):
        res = {}
        for name, model in (("flax", legacy), ("native", native)):
            res[name] = measure(model, prompts, texts, method, **kw)
        a, b = (np.concatenate([np.nan_to_num(s.target_attributions).ravel()
                                for s in res[k][3].sequence_attributions]) for k in res)
        err = np.abs(a - b).max() / np.abs(a).max()
        for name, (flops, t, c, _) in res.items():
            rows.append((method, name, flops, t, c, err))
            print(f"{method:<22}{name:<8}{flops / 1e9:8.1f} GFLOP {t:7.2f} s wall {c:7.2f} s "
                  f"CPU {flops / c / 1e9:7.1f} GFLOP/CPU-s  max|diff|/max {err:.1e}", flush=True)
    print("\n| method | path | GFLOP | warm wall s | warm CPU s | GFLOP per CPU-s |")
    print("|---|---|---|---|---|---|")
    for method, name, flops, t, c, _ in rows:
        print(f"| {method} | {name} | {flops / 1e9:.1f} | {t:.2f} | {c:.2f} | "
              f"{flops / c / 1e9:.1f} |")


if __name__ == "__main__":
    main()
