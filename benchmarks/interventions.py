"""Causal tracing and activation patching: jaxattr's vmapped grids vs the per-cell PyTorch loops
of ROME and TransformerLens, side by side on the same weights and CPU.

    python benchmarks/interventions.py                # ~10 min on 2 shared cores
    python benchmarks/interventions.py --json out.json

Workload: the cached random GPT-2-124M checkpoint of the other benchmarks (``_workload.py``),
one 16-token prompt (the first 16 tokens of a passage) with a 4-token subject at positions
2..5, 10 noise samples (3 × the embedding table's std, one fixed array handed to both sides),
the corrupted prompt = the same tokens with the subject replaced by 4 other tokens.

* causal trace, kind None: the full ``[16 tokens, 12 layers]`` grid (192 cells × 10 samples);
* exact activation patching of ``blocks.*.resid_pre`` at every position: ``[12, 16]`` cells;
* attribution patching (one forward + one backward) and its Spearman correlation with exact.

Both sides' grids are compared number for number (they must agree: same weights, same noise,
same cells). Times are warm (each side runs its grid once before timing).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _workload as w  # noqa: E402


def spearman(a, b):
    ra = np.argsort(np.argsort(a.ravel()))
    rb = np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


def _cached_reference(path, inputs):
    """The PyTorch side's last results if they were made from the same inputs."""
    if not os.path.exists(path):
        return None
    z = dict(np.load(path))
    if all(np.array_equal(z.get(f"input_{k}"), v) for k, v in inputs.items()):
        print(f"reusing the PyTorch timings and grids of {path} (same inputs)", flush=True)
        return z
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--reuse-torch", action="store_true",
                    help="reuse the PyTorch side's cached results for the same inputs (its "
                         "times were measured in an earlier run, so the ratio mixes two runs)")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import jaxattr
    from jaxattr.interventions import activation_patching, causal_trace

    ckpt = w.ensure_checkpoint()
    prompts, _ = w.make_prompts(2)
    model = jaxattr.load_model(ckpt)
    tok = model.tokenizer
    clean_ids = tok(prompts[0])["input_ids"][:16]
    other = tok(prompts[1])["input_ids"]
    corrupt_ids = clean_ids[:2] + other[2:6] + clean_ids[6:]
    clean, corrupt = tok.decode(clean_ids), tok.decode(corrupt_ids)
    assert tok(clean)["input_ids"] == clean_ids and tok(corrupt)["input_ids"] == corrupt_ids
    subject = (2, 6)
    hidden = model.adapter.embedding_matrix().shape[1]
    std = float(jnp.std(model.adapter.embedding_matrix()))
    noise = (3.0 * std * np.random.default_rng(0).normal(
        size=(args.samples, 4, hidden))).astype(np.float32)
    out = model.adapter.forward(target_ids=jnp.asarray([clean_ids]),
                                target_mask=jnp.ones((1, 16), jnp.int32))
    top2 = np.argsort(-np.asarray(out["logits"][0, -1]))[:2]
    answer, foil = int(top2[0]), int(top2[1])

    results = {"workload": {"tokens": 16, "layers": 12, "samples": args.samples,
                            "cells_trace": 16 * 12, "cells_patch": 12 * 16}}
    inputs = dict(clean_ids=np.array(clean_ids), corrupt_ids=np.array(corrupt_ids),
                  subject=np.array(subject), noise=noise, answer=np.array(answer),
                  foil=np.array(foil))
    cached = os.path.join(w.CACHE, "interventions_torch.npz")
    ref = _cached_reference(cached, inputs) if args.reuse_torch else None
    if ref is None:
        with tempfile.TemporaryDirectory() as tmp:
            inp, res = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
            np.savez(inp, **inputs)
            env = w.python_env()
            env["OMP_WAIT_POLICY"] = "PASSIVE"
            print("PyTorch per-cell loops ...", flush=True)
            subprocess.run([w.SIDE_PY, os.path.join(HERE, "interventions_side",
                                                    "torch_loops.py"), ckpt, inp, res],
                           check=True, env=env)
            ref = dict(np.load(res))
        np.savez(cached, **ref, **{f"input_{k}": v for k, v in inputs.items()})

    def timed(fn):
        fn()                                                    # compile + warm
        t0 = time.perf_counter()
        r = fn()
        return r, time.perf_counter() - t0

    print("jaxattr grids ...", flush=True)
    trace, t_trace = timed(lambda: causal_trace(model, clean, subject, answer=answer,
                                                noise=noise, chunk=args.chunk))
    patch, t_patch = timed(lambda: activation_patching(
        model, clean, corrupt, answer=answer, foil=foil, sites="blocks.*.resid_pre",
        chunk=args.chunk))
    attr, t_attr = timed(lambda: activation_patching(
        model, clean, corrupt, answer=answer, foil=foil, sites="blocks.*.resid_pre",
        method="attribution"))
    exact = patch.scores[0]
    results.update({
        "torch_s": {"causal_trace": float(ref["t_trace"]), "exact_patching": float(ref["t_patch"])},
        "jaxattr_s": {"causal_trace": t_trace, "exact_patching": t_patch,
                      "attribution_patching": t_attr},
        "speedup": {"causal_trace": float(ref["t_trace"]) / t_trace,
                    "exact_patching": float(ref["t_patch"]) / t_patch},
        "max_abs_diff_vs_torch": {
            "causal_trace": float(np.max(np.abs(trace.scores - ref["trace"]))),
            "exact_patching": float(np.max(np.abs(exact - ref["patching"])))},
        "attribution_vs_exact_spearman": spearman(attr.scores[0] - patch.corrupted[0],
                                                  exact - patch.corrupted[0]),
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                    "jax": jax.__version__, "torch": str(ref["torch_version"])},
    })
    s = results
    print(f"causal trace (16 x 12 cells x {args.samples} samples): torch "
          f"{s['torch_s']['causal_trace']:.2f}s, jaxattr {t_trace:.2f}s -> "
          f"{s['speedup']['causal_trace']:.1f}x; max |diff| "
          f"{s['max_abs_diff_vs_torch']['causal_trace']:.2e}")
    print(f"exact patching (12 x 16 cells): torch {s['torch_s']['exact_patching']:.2f}s, "
          f"jaxattr {t_patch:.2f}s -> {s['speedup']['exact_patching']:.1f}x; max |diff| "
          f"{s['max_abs_diff_vs_torch']['exact_patching']:.2e}")
    print(f"attribution patching: {t_attr:.3f}s ({t_patch / t_attr:.0f}x faster than exact); "
          f"Spearman with exact {s['attribution_vs_exact_spearman']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
