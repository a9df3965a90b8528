"""Mixture-of-experts MLPs: the dense formulation (every expert on every token, the default)
against the ragged one (tokens sorted by expert, ``jax.lax.ragged_dot``) and the blocked one
(sorted tokens in one-expert blocks under ``lax.scan``), side by side.

    PYTHONPATH=$PWD python benchmarks/native_moe.py [--experts 8] [--top-k 2] [--rounds 3]

A random Mixtral-shaped decoder (hidden 512, 4 layers, 8 heads / 2 kv heads, expert width 1024,
vocab 8000; ``--experts`` experts, top ``--top-k``) on a batch of 2 x 128 tokens. For each
formulation: XLA FLOPs of the compiled program (``lax.scan`` unrolled, since XLA's cost analysis
counts a loop body once; :func:`native_vs_flax.unrolled_flops`), warm wall and process-CPU time of (a) the logits and (b) one input
gradient (``jax.grad`` of the summed log-probabilities; no ``vmap``, which ``ragged_dot`` lacks
in JAX 0.10.2), median over ``--rounds`` interleaved rounds, and the largest logit difference.
The machine is shared: CPU seconds are not inflated by other processes; each number is one run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr.models import DecoderSpec, NativeDecoder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from native_vs_flax import unrolled_flops  # noqa: E402


def random_params(spec: DecoderSpec, seed: int = 0) -> dict:
    """A random parameter tree of ``spec`` (:mod:`jaxattr.models.decoder`'s layout)."""
    n, H, E, F = spec.n_layers, spec.hidden_size, spec.n_experts, spec.intermediate_size
    q, kv = spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    shapes = {"q": (n, H, q), "k": (n, H, kv), "v": (n, H, kv), "o": (n, q, H),
              "router": (n, H, E), "gate": (n, E, H, F), "up": (n, E, H, F),
              "down": (n, E, F, H)}
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes) + 2)
    layers = {name: jax.random.normal(k, s) / np.sqrt(s[-2])
              for k, (name, s) in zip(keys, shapes.items())}
    layers.update(attn_in=jnp.ones((n, H)), mlp_in=jnp.ones((n, H)))
    return {"embed": jax.random.normal(keys[-2], (spec.vocab_size, H)),
            "final_norm": jnp.ones(H), "head": jax.random.normal(keys[-1], (H, spec.vocab_size))
            / np.sqrt(H), "layers": layers}


def timed(fn, *args, rounds: int):
    out = jax.block_until_ready(fn(*args))        # compile + warm
    walls, cpus = [], []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return out, statistics.median(walls), statistics.median(cpus)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    spec = DecoderSpec(model_type="mixtral", vocab_size=8000, hidden_size=512, n_layers=4,
                       n_heads=8, n_kv_heads=2, head_dim=64, intermediate_size=1024,
                       attn_scale=64 ** -0.5, layer_window=(None,) * 4, layer_rope=(1,) * 4,
                       n_experts=args.experts, experts_per_token=args.top_k)
    params = random_params(spec)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 128), 0, spec.vocab_size)
    mask = jnp.ones_like(ids)
    programs = {}
    for impl in ("dense", "ragged", "blocked"):
        fns = NativeDecoder(params=params, spec=dataclasses.replace(spec, moe_impl=impl))

        def logits(x, fns=fns):
            return fns.logits(target_ids=ids, target_mask=mask, target_embeds=x)

        def grad(x, logits=logits):
            return jax.grad(lambda y: jnp.sum(jax.nn.log_softmax(logits(y))[..., 0]))(x)

        programs[impl] = (fns.embed(ids), jax.jit(logits), jax.jit(grad))
    # counting clears JAX's caches: count every program before timing any
    rows = {impl: dict(flops_fwd=unrolled_flops(f, x), flops_grad=unrolled_flops(g, x))
            for impl, (x, f, g) in programs.items()}
    for impl, (x, f, g) in programs.items():
        out, rows[impl]["wall_fwd"], rows[impl]["cpu_fwd"] = timed(f, x, rounds=args.rounds)
        _, rows[impl]["wall_grad"], rows[impl]["cpu_grad"] = timed(g, x, rounds=args.rounds)
        rows[impl]["out"] = np.asarray(out)
    d = rows["dense"]
    print(f"experts {args.experts}, top-{args.top_k}; load {os.getloadavg()[0]:.2f}")
    print("| program | dense | ragged | blocked | dense / ragged | dense / blocked |")
    print("|---|---|---|---|---|---|")
    for key, unit, scale in (("flops_fwd", "GFLOP", 1e-9), ("wall_fwd", "ms", 1e3),
                             ("cpu_fwd", "CPU ms", 1e3), ("flops_grad", "GFLOP", 1e-9),
                             ("wall_grad", "ms", 1e3), ("cpu_grad", "CPU ms", 1e3)):
        vals = [rows[i][key] for i in ("dense", "ragged", "blocked")]
        print(f"| {key} ({unit}) | " + " | ".join(f"{v * scale:.3g}" for v in vals)
              + f" | {vals[0] / vals[1]:.2f} | {vals[0] / vals[2]:.2f} |")
    for impl in ("ragged", "blocked"):
        print(f"max |logit difference| dense vs {impl} "
              f"{np.abs(d['out'] - rows[impl]['out']).max():.2e}")

if __name__ == "__main__":
    main()
