"""What stacking the layers' weights costs on XLA CPU: the native decoder's layer loop in
isolation.

    python benchmarks/stacked_weights.py [--rounds 9]

Twelve GPT-2-124M-sized layers (hidden 768, MLP 3072; seven weight matrices each, the
attention replaced by elementwise work so the matmuls dominate as they do in the decoder),
2 × 32 tokens, and the saliency program's shape: one forward and a VJP vmapped over 16 one-hot
cotangents. The same function run four ways, interleaved in each round (one call of each,
compiled before timing):

- ``scan``: ``lax.scan`` over weights stacked ``[layers, ...]`` (the native decoder: compile
  time independent of depth; each iteration slices its layer's weights out of the stack),
- ``scan-unroll2``: the same scan with two layers per iteration,
- ``static-slices``: a Python loop over ``w[i]`` of the stacked arrays (unrolled, static slices),
- ``separate``: a Python loop over one array per weight and layer (what transformers' Flax
  classes hold; compile time grows with depth).

Medians of ``--rounds`` warm calls and each variant's ratio to ``separate``. On XLA CPU a slice
of a stacked weight is a copy before the matmul (``dynamic-slice`` fusions in the profile),
in the forward and again in the backward: ~38 MB per layer and direction at this size.
Two idle runs (2 cores): scan 1.08x / 1.02x, scan-unroll2 1.01x / 1.05x, static-slices
1.55x / 1.07x of ``separate`` -- a few percent, within run-to-run spread for unroll 2, which is
why the native decoder keeps one layer per iteration (``docs/design.md``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

H, F, N_LAYERS, B, L, STEPS = 768, 3072, 12, 2, 32, 16
SHAPES = {"q": (H, H), "k": (H, H), "v": (H, H), "o": (H, H), "gate": (H, F), "up": (H, F),
          "down": (F, H)}


def layer(x, p):
    """One block's matmuls: ``x [B, L, H] -> [B, L, H]``."""
    h = jnp.tanh(x @ p["q"]) * (x @ p["k"]) + x @ p["v"]
    x = x + h @ p["o"]
    return x + (jax.nn.silu(x @ p["gate"]) * (x @ p["up"])) @ p["down"]


def run_scan(x, w, unroll=1):
    return jax.lax.scan(lambda x, p: (layer(x, p), None), x, w, unroll=unroll)[0]


def run_static(x, w):
    for i in range(N_LAYERS):
        x = layer(x, jax.tree_util.tree_map(lambda a: a[i], w))
    return x


def run_separate(x, ws):
    for p in ws:
        x = layer(x, p)
    return x


def saliency(forward):
    """``(x, w) -> [STEPS, B, L, H]``: input gradients of 16 positions' first logit."""
    def program(x, w):
        y, vjp = jax.vjp(lambda x: forward(x, w), x)
        steps = jnp.arange(STEPS)
        cts = jnp.zeros((STEPS,) + y.shape, y.dtype).at[steps, :, steps + L - STEPS, 0].set(1.0)
        return jax.vmap(vjp)(cts)[0]
    return jax.jit(program)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    key = jax.random.PRNGKey(0)
    stacked = {n: 0.02 * jax.random.normal(jax.random.fold_in(key, i), (N_LAYERS,) + s)
               for i, (n, s) in enumerate(SHAPES.items())}
    separate = [{n: jnp.array(a[i]) for n, a in stacked.items()} for i in range(N_LAYERS)]
    x = jax.random.normal(key, (B, L, H))
    variants = {"scan": (saliency(run_scan), stacked),
                "scan-unroll2": (saliency(lambda x, w: run_scan(x, w, 2)), stacked),
                "static-slices": (saliency(run_static), stacked),
                "separate": (saliency(run_separate), separate)}
    ref = None
    for name, (fn, w) in variants.items():
        out = jax.block_until_ready(fn(x, w))
        ref = out if ref is None else ref
        err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
        if err > 1e-5:
            raise SystemExit(f"{name} differs from scan: {err:.1e}")
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        names = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in names:
            fn, w = variants[name]
            t = time.perf_counter()
            jax.block_until_ready(fn(x, w))
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["separate"])
    print(f"load average {os.getloadavg()}; medians of {args.rounds} interleaved rounds")
    print("| layer loop | warm s | / separate |\n|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.3f} | {m / base:.3f} |")


if __name__ == "__main__":
    main()
