"""Probing every layer of a GPT-2-124M-sized representation: jaxattr.probing.fit (one vmapped
program) vs a per-layer scikit-learn LogisticRegression loop, in one process.

Features: 10,000 examples × 13 layers (embeddings + 12 blocks) × 768, synthetic so that the
answer is known and the run needs no model: anisotropic Gaussian states (log-normal variances
in a random rotation per layer) plus a binary label along a random direction whose strength rises and falls across
layers, as real probing curves do. Both sides get the same standardised training rows (the
split of ``fit``) and are scored on the same test rows. jaxattr gets the features as
``Features.array()`` (or a memory-mapped ``.npy``) gives them: 64-byte aligned, so JAX reads
them in place; the warm time on the same values in NumPy's own (16-byte aligned) allocation,
which ``fit`` copies once, is printed too.

    python benchmarks/probing.py                    # 10k × 13 × 768
    python benchmarks/probing.py --n 2000 --layers 4   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def make_features(n: int, layers: int, h: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.empty((n, layers, h), np.float32)
    strength = 0.25 + 1.25 * np.sin(np.pi * np.arange(layers) / max(layers - 1, 1))
    for layer in range(layers):
        scales = np.exp(rng.normal(size=h) * 0.5)
        mix = np.linalg.qr(rng.normal(size=(h, h)))[0]          # a random rotation
        d = rng.normal(size=h)
        d /= np.linalg.norm(d)
        z = rng.standard_normal((n, h), dtype=np.float32) * scales.astype(np.float32)
        x[:, layer] = z @ mix.astype(np.float32) + (strength[layer] * (2 * y[:, None] - 1)
                                                     * d).astype(np.float32)
    return x, y


def sklearn_loop(x, y, spec):
    """Per-layer LogisticRegression on the same split and standardisation as ``fit``."""
    from sklearn.linear_model import LogisticRegression
    from jaxattr.probing import data
    order, (n_train, n_val, n_test) = data.split_order(
        len(y), val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
        seed=spec.split_seed)
    tr, te = order[:n_train], order[n_train + n_val:]
    acc = []
    for layer in range(x.shape[1]):
        xl = x[:, layer]
        mu, sd = xl[tr].mean(0), xl[tr].std(0)
        xs = (xl - mu) / np.where(sd > 0, sd, 1)
        clf = LogisticRegression(max_iter=1000).fit(xs[tr], y[tr])
        acc.append(clf.score(xs[te], y[te]))
    return np.array(acc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--batch-size", type=int, default=256,
                    help="rows per step of the minibatch AdamW configuration")
    ap.add_argument("--configs", nargs="*", default=None,
                    help="jaxattr configurations to run (default: all; lbfgs-l2 fits "
                         "scikit-learn's optimum with its stopping rule)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    import jax
    import jaxattr.probing as P
    x, y = make_features(args.n, args.layers, args.hidden)
    # what Features.array() (and a memory-mapped .npy) hands to fit: 64-byte aligned, read in
    # place; ``x`` itself (NumPy's allocation, 16-byte aligned) is copied once inside fit
    from jaxattr.probing.data import aligned_empty
    xa = aligned_empty(x.shape)
    xa[...] = x
    print(f"features {x.shape} ({x.nbytes / 2**20:.0f} MiB), backend {jax.default_backend()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    base = P.TrainSpec()
    n_train = args.n - round(base.val_fraction * args.n) - round(base.test_fraction * args.n)
    # LogisticRegression(C=1) on a binary label: mean loss + |d|^2 / (2 n) with one weight
    # vector d; the probe's two softmax columns are ±d / 2, so l2 = 2 / n (TrainSpec.l2)
    sk_l2 = 2.0 / n_train
    configs = {
        # scikit-learn's stopping rule: largest gradient entry <= its default tol=1e-4
        "lbfgs-l2": P.TrainSpec(optimizer="lbfgs", l2=sk_l2, early_stopping=False,
                                max_steps=500, tol=1e-4),
        "lbfgs-l2-tol1e-5": P.TrainSpec(optimizer="lbfgs", l2=sk_l2, early_stopping=False,
                                        max_steps=500),
        "adamw-default": base,
        "adamw-mb-l2": P.TrainSpec(batch_size=args.batch_size, learning_rate=1e-3,
                                   l2=sk_l2, early_stopping=False, max_steps=3000,
                                   eval_every=50, patience=3, min_delta=1e-4),
    }
    if args.configs:
        configs = {k: configs[k] for k in args.configs}
    import sklearn.linear_model  # noqa: F401  (import outside the timing)

    def timed(fn):
        """(result, wall seconds, CPU seconds of this process, all threads)."""
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - w, time.process_time() - c
    sk, t_sk, c_sk = timed(lambda: sklearn_loop(x, y, base))
    print(f"sklearn LogisticRegression loop: {t_sk:.1f} s wall, {c_sk:.1f} s CPU", flush=True)
    rows = {}
    for name, spec in configs.items():
        _, cold, c_cold = timed(lambda: P.fit(xa, y, spec=spec))
        res, warm, c_warm = timed(lambda: P.fit(xa, y, spec=spec))
        _, warm_u, c_warm_u = timed(lambda: P.fit(x, y, spec=spec))
        diff = np.abs(res.accuracy - sk)
        rows[name] = dict(cold_s=cold, warm_s=warm, cold_cpu_s=c_cold, warm_cpu_s=c_warm,
                          warm_unaligned_s=warm_u, warm_unaligned_cpu_s=c_warm_u,
                          accuracy=res.accuracy.tolist(), steps=res.steps.tolist(),
                          max_diff_points=100 * float(diff.max()))
        print(f"{name}: first call {cold:.1f} s wall ({t_sk / cold:.1f}x) / {c_cold:.1f} s CPU "
              f"({c_sk / c_cold:.1f}x); warm {warm:.1f} s wall ({t_sk / warm:.1f}x) / "
              f"{c_warm:.1f} s CPU ({c_sk / c_warm:.1f}x); unaligned input warm {warm_u:.1f} s "
              f"wall ({t_sk / warm_u:.1f}x) / {c_warm_u:.1f} s CPU ({c_sk / c_warm_u:.1f}x); "
              f"max |accuracy - sklearn| {100 * diff.max():.2f} points", flush=True)
    print(f"{'layer':>5} {'sklearn':>8} " + " ".join(f"{n:>14}" for n in rows))
    for i in range(args.layers):
        print(f"{i:>5} {sk[i]:8.4f} " + " ".join(f"{rows[n]['accuracy'][i]:14.4f}"
                                               for n in rows))
    print(f"load at end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(shape=list(x.shape), sklearn_s=t_sk, sklearn_cpu_s=c_sk,
                           sklearn_accuracy=sk.tolist(),
                           jaxattr=rows), f, indent=1)


if __name__ == "__main__":
    main()
