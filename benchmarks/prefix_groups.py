"""What prefix groups buy on a causal decoder: one-pass vs grouped attribution of the same
batch, by continuation length.

    . .venv/bin/activate
    python benchmarks/prefix_groups.py                   # ~6 min on 2 cores
    python benchmarks/prefix_groups.py --cont 16,48 --repeats 3 --batch 2

Same GPT-2-124M-sized checkpoint as side_by_side.py; two passages are joined so continuations
can be longer than 16 tokens: 16 prompt tokens + ``--cont`` generated tokens. For each length,
saliency (``probability`` target) runs with ``prefix_groups=1`` (the one-pass program) and
``"auto"``; the script prints the groups "auto" chose, XLA's FLOP count of each (the grouped
one summed over its group programs), the cold time (first call, compilation included) and
the median warm time of ``--repeats`` round-robin rounds, and checks that both give the same
attributions. Cold means compiled from scratch: JAX's in-memory caches are cleared before each
first call and jaxattr's persistent compilation cache is off for this script. ``--ig-steps N`` adds the FLOP count (compile only, not run) of integrated
gradients with N steps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def pairs(tok, n, cont, prompt_len=16):
    """``n`` (prompt, prompt + continuation) texts of exactly ``prompt_len`` + ``cont`` tokens."""
    from _workload import PASSAGES
    out = []
    for i in range(len(PASSAGES)):
        ids = tok(PASSAGES[i] + " " + PASSAGES[(i + 1) % len(PASSAGES)])["input_ids"]
        p, g = tok.decode(ids[:prompt_len]), tok.decode(ids[:prompt_len + cont])
        if (len(ids) >= prompt_len + cont and g.startswith(p)
                and tok(p)["input_ids"] == ids[:prompt_len]
                and tok(g)["input_ids"] == ids[:prompt_len + cont]):
            out.append((p, g))
        if len(out) == n:
            return out
    raise RuntimeError(f"only {len(out)} passages give {prompt_len} + {cont} clean tokens")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cont", default="16,32,48", help="continuation lengths")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ig-steps", type=int, default=0)
    args = ap.parse_args(argv)

    os.environ["JAXATTR_CACHE_DIR"] = "0"    # cold times compile, not load from disk
    import jax
    import numpy as np

    import jaxattr
    import _workload as w
    from jaxattr import pipeline
    from jaxattr.prefix_groups import truncate_batch
    from profile_pipeline import xla_flops

    model = jaxattr.load_model(w.ensure_checkpoint())
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for cont in [int(c) for c in args.cont.split(",")]:
        prompts, gens = zip(*pairs(model.tokenizer, args.batch, cont))
        kw = dict(method="saliency", batch_size=args.batch)
        prep = model.prepare(list(prompts), list(gens), **kw)
        kw["show_progress"] = False
        batch = prep.batch(0)
        L = batch.target_ids.shape[1]
        groups = pipeline.prefix_plan(model.adapter, batch, "auto")   # what "auto" runs
        call = {k: v for k, v in prep.spec.pipeline_kwargs().items() if k != "prefix_groups"}

        def flops(call):
            one = xla_flops(pipeline._attribute_jit, model.adapter, batch, None, **call)[0]
            split = sum(xla_flops(pipeline._attribute_jit, model.adapter,
                                  truncate_batch(batch, a, b, p), None, **call)[0]
                        for a, b, p in groups)
            return one, split

        progs, cold, out = {}, {}, {}
        for name, pg in (("one-pass", 1), ("auto", "auto")):
            fn = lambda pg=pg: model.attribute(list(prompts), list(gens), prefix_groups=pg, **kw)  # noqa: E731
            jax.clear_caches()     # cold: compile everything (the persistent cache is off)
            t = time.perf_counter()
            out[name] = fn()
            cold[name] = time.perf_counter() - t
            progs[name] = fn
        a, b = (np.concatenate([np.nan_to_num(np.asarray(s.target_attributions)).ravel()
                                for s in out[name].sequence_attributions])
                for name in ("one-pass", "auto"))
        err = np.max(np.abs(a - b)) / np.max(np.abs(a))
        f_one, f_split = flops(call)
        times = {name: [] for name in progs}
        for _ in range(args.repeats):
            for name, fn in progs.items():
                t = time.perf_counter()
                jax.block_until_ready(fn().batches)
                times[name].append(time.perf_counter() - t)
        warm = {k: statistics.median(v) for k, v in times.items()}
        ig = ""
        if args.ig_steps:
            ig_call = dict(call, method=jaxattr.methods.get_method("integrated_gradients"),
                           method_kwargs=(("n_steps", args.ig_steps),))
            g_one, g_split = flops(ig_call)
            ig = f"; IG ({args.ig_steps} steps) {g_one / 1e9:.0f} -> {g_split / 1e9:.0f} GFLOP"
        rows.append((cont, L, groups, f_one, f_split, cold, warm, err))
        rounds = ", ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in times.items())
        print(f"16 + {cont} (L={L}): groups {groups}; saliency {f_one / 1e9:.0f} -> "
              f"{f_split / 1e9:.0f} GFLOP; cold {cold['one-pass']:.1f} -> {cold['auto']:.1f} s; "
              f"warm {warm['one-pass']:.2f} -> {warm['auto']:.2f} s ({rounds}); "
              f"max |diff| / max |attr| {err:.1e}{ig} (load {os.getloadavg()[0]:.1f})",
              flush=True)
    print(f"\n=== prefix groups, saliency, batch {args.batch}, GPT-2-124M size ===")
    print(f"{'tokens':<10}{'groups':>7}{'GFLOP 1':>9}{'GFLOP auto':>12}{'FLOP saved':>12}"
          f"{'warm 1 s':>10}{'warm auto s':>13}{'speed-up':>10}{'cold 1 s':>10}"
          f"{'cold auto s':>13}")
    for cont, L, groups, f1, fs, cold, warm, err in rows:
        print(f"{f'16 + {cont}':<10}{len(groups):>7}{f1 / 1e9:>9.0f}{fs / 1e9:>12.0f}"
              f"{100 * (1 - fs / f1):>11.0f}%{warm['one-pass']:>10.2f}{warm['auto']:>13.2f}"
              f"{warm['one-pass'] / warm['auto']:>9.2f}x{cold['one-pass']:>10.1f}"
              f"{cold['auto']:>13.1f}")
    return rows


if __name__ == "__main__":
    main()
