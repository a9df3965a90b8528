"""Exact causal truncation (``prefix_groups="exact"``) vs the one-pass program on the native
decoder at GPT-2-124M size.

    PYTHONPATH=$PWD python benchmarks/causal_chunks.py [--batch 2] [--n-steps 16] [--repeats 3]

A random Llama config of GPT-2-124M size (hidden 768, 12 layers, 12 heads, MLP 3072, vocab
32000, the config of ``native_vs_flax.py``), a batch of 16 prompt + 16 generated tokens
(random ids; the second row is right-padded by 3 tokens unless ``--no-pad``), ``logprob``
target. For saliency and integrated gradients (``--n-steps`` nodes), prints for each compiled
program XLA's cost analysis (FLOPs and bytes accessed; it counts a loop body once, so the
12-layer scans weigh as one layer), the matmul FLOPs it executes (each ``dot`` of the
optimised HLO times its loops' trip counts), the median warm wall and process CPU time of
``--repeats`` round-robin rounds (CPU time is steadier on a shared machine), the ratios, and
the largest attribution difference relative to the largest attribution. Each program is
compiled once (its counts read and the same executable timed). No torch, no tokenizer.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("JAXATTR_CACHE_DIR", "0")


def executed_matmul_flops(hlo: str) -> float:
    """FLOPs of the ``dot`` instructions of an optimised HLO module's text, each computation's
    counted as many times as it runs (a ``while`` body times its known trip count)."""
    comps, cur = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            cur = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            comps[cur] = ([], line.startswith("ENTRY"))
        elif cur is not None:
            comps[cur][0].append(line)

    def dims(text):
        return [int(d) for d in text.split(",") if d]

    own, calls, shapes = {}, {}, {}
    for name, (lines, _) in comps.items():
        own[name], calls[name] = 0.0, []
        for line in lines:
            m = re.match(r"\s+(?:ROOT )?%(\S+) = \w+\[([0-9,]*)\]", line)
            if m:
                shapes[m.group(1)] = dims(m.group(2))
        for line in lines:
            m = re.match(r"\s+(?:ROOT )?%\S+ = \w+\[([0-9,]*)\]\S* dot\(%([\w.-]+)", line)
            if m:
                lhs = shapes[m.group(2)]
                contract = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line).group(1)
                own[name] += 2.0 * np.prod(dims(m.group(1))) * np.prod(
                    [lhs[i] for i in dims(contract)])
            trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            for kind, callee in re.findall(r"(body|calls|to_apply)=%([\w.-]+)", line):
                calls[name].append((callee, int(trips.group(1)) if kind == "body" and trips
                                    else 1))

    def total(name):
        return own[name] + sum(n * total(c) for c, n in calls[name] if c in comps)

    return total(next(n for n, (_, entry) in comps.items() if entry))


def native_model(layers=12, vocab=32000, hidden=768, heads=12, mlp=3072, seed=0):
    """A :class:`~jaxattr.models.NativeDecoder` with random weights of a Llama config."""
    import jax
    import jax.numpy as jnp
    from transformers import LlamaConfig
    from jaxattr.models import NativeDecoder, spec_from_config
    spec = spec_from_config(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
        rope_theta=10000.0, tie_word_embeddings=False))
    hd = hidden // heads
    shapes = {"q": (hidden, heads * hd), "k": (hidden, heads * hd), "v": (hidden, heads * hd),
              "o": (heads * hd, hidden), "gate": (hidden, mlp), "up": (hidden, mlp),
              "down": (mlp, hidden)}
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    lay = {k: 0.02 * jax.random.normal(next(keys), (layers,) + s) for k, s in shapes.items()}
    lay.update({n: jnp.ones((layers, hidden)) for n in spec.norms})
    params = {"embed": 0.02 * jax.random.normal(next(keys), (vocab, hidden)),
              "head": 0.02 * jax.random.normal(next(keys), (hidden, vocab)),
              "final_norm": jnp.ones((hidden,)), "layers": lay}
    return NativeDecoder(params=params, spec=spec)


def make_batch(batch=2, prompt=16, cont=16, vocab=32000, pad=3, seed=1):
    """A :class:`~jaxattr.pipeline.ModelBatch` of ``prompt + cont`` tokens per row, row ``i``
    right-padded by ``i * pad`` tokens (fewer steps)."""
    import jax.numpy as jnp
    import numpy as np
    from jaxattr.pipeline import ModelBatch
    rng = np.random.default_rng(seed)
    L = prompt + cont
    ids = rng.integers(4, vocab, (batch, L)).astype(np.int32)
    mask = np.ones((batch, L), np.int32)
    steps = np.tile(np.arange(prompt, L, dtype=np.int32), (batch, 1))
    smask = np.ones((batch, cont), np.int32)
    for i in range(batch):
        n = L - i * pad
        mask[i, n:], ids[i, n:], smask[i, n - prompt:] = 0, 1, 0
        steps[i, n - prompt:] = prompt      # padded steps: any position < L
    return ModelBatch(target_ids=jnp.asarray(ids), target_mask=jnp.asarray(mask),
                      step_positions=jnp.asarray(steps), step_mask=jnp.asarray(smask))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--n-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-pad", action="store_true")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--ig-only", action="store_true", help="skip saliency")
    args = ap.parse_args(argv)
    import jax
    from jaxattr import pipeline, targets
    from jaxattr.methods import integrated_gradients, saliency

    model = native_model(layers=args.layers)
    batch = make_batch(args.batch, pad=0 if args.no_pad else 3)
    print(f"load average {os.getloadavg()[0]:.1f} (shared machine); groups "
          f"{pipeline.exact_plan(batch)}", flush=True)
    rows = []
    for name, method, mkw in ((f"IG ({args.n_steps} steps)", integrated_gradients,
                               (("n_steps", args.n_steps),)),
                              ("saliency", saliency, ()))[:1 if args.ig_only else 2]:
        call = dict(method=method, method_kwargs=mkw, target_fn=targets.logprob, target_kwargs=(),
                    step_fns=(), attribute_source=False, attribute_target=True)
        progs, cost = {}, {}
        for k, extra in (("one-pass", {}), ("exact", {"causal_chunks": pipeline.exact_plan(batch)})):
            # one compilation per program: its counts are read and the same executable is timed
            compiled = pipeline._attribute_jit.lower(model, batch, None, **call, **extra).compile()
            xla = compiled.cost_analysis()
            xla = xla[0] if isinstance(xla, (list, tuple)) else xla
            cost[k] = (float(xla["flops"]), float(xla["bytes accessed"]),
                       executed_matmul_flops(compiled.as_text()))
            progs[k] = lambda compiled=compiled: compiled(model, batch, None)
        out = {k: jax.block_until_ready(fn()) for k, fn in progs.items()}
        a, b = (np.nan_to_num(np.asarray(out[k].target_attributions)) for k in progs)
        err = np.abs(a - b).max() / np.abs(a).max()
        times = {k: [] for k in progs}
        for _ in range(args.repeats):
            for k, fn in progs.items():
                t, c = time.perf_counter(), time.process_time()
                jax.block_until_ready(fn())
                times[k].append((time.perf_counter() - t, time.process_time() - c))
        warm = {k: tuple(statistics.median(x[i] for x in v) for i in (0, 1))
                for k, v in times.items()}
        rows.append((name, cost, warm, err))
        print(f"{name}: " + "; ".join(
            f"{k}: XLA GFLOP {c[0] / 1e9:.1f}, GB accessed {c[1] / 1e9:.1f}, executed matmul "
            f"GFLOP {c[2] / 1e9:.0f}" for k, c in cost.items())
              + "; warm wall/CPU s " + ", ".join(
                  f"{k} " + " ".join(f"{w:.2f}/{c:.2f}" for w, c in v) for k, v in times.items())
              + f"; max|diff|/max {err:.1e} (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n=== exact causal truncation, native GPT-2-124M size, batch {args.batch}, "
          "16 + 16 tokens ===")
    print("| method | executed matmul GFLOP one-pass / exact (fewer) | XLA GFLOP one-pass / "
          "exact (fewer) | XLA GB accessed one-pass / exact | warm wall s one-pass / exact "
          "(speed-up) | warm CPU s one-pass / exact (speed-up) | max diff / max |")
    print("|---|---|---|---|---|---|---|")
    for name, c, w, err in rows:
        o, e = c["one-pass"], c["exact"]
        wo, we = w["one-pass"], w["exact"]
        print(f"| {name} | {o[2] / 1e9:.0f} / {e[2] / 1e9:.0f} ({1 - e[2] / o[2]:.1%}) | "
              f"{o[0] / 1e9:.1f} / {e[0] / 1e9:.1f} ({1 - e[0] / o[0]:.1%}) | "
              f"{o[1] / 1e9:.1f} / {e[1] / 1e9:.1f} | {wo[0]:.2f} / {we[0]:.2f} "
              f"({wo[0] / we[0]:.2f}x) | {wo[1]:.2f} / {we[1]:.2f} ({wo[1] / we[1]:.2f}x) | "
              f"{err:.1e} |")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
