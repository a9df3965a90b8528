"""Where jaxattr's time goes on the side-by-side workload, and what two pipeline changes buy.

    . .venv/bin/activate
    python benchmarks/profile_pipeline.py            # ~5-8 min on 2 busy cores
    python benchmarks/profile_pipeline.py --n-prompts 2 --repeats 2   # quicker

Same checkpoint and prompts as side_by_side.py (GPT-2-124M-sized, 16 + 16 tokens, batch 8),
saliency with the ``probability`` target. Each program is jitted separately and costed with
XLA's ``cost_analysis()``; then --repeats rounds time every program once, round-robin (so a
change in machine load hits all programs alike), and the median per program is reported:

  pipeline     jaxattr.pipeline._attribute_jit, exactly as model.attribute calls it (with
               the split-head backward: d score[b,t] / d h[b,t] for every t comes from ONE
               backward through head + target, and the T vmapped backward passes start at
               the final hidden states, never touching the [*, V] vocabulary axis)
  fwd          the forward alone: logits at the scored positions -> target scores
  fwd+1vjp     forward + ONE backward (gradient of the summed scores): the marginal cost of
               one of the T vmapped backward passes is (pipeline - fwd) / T
  full-head    the pipeline with ``split_head=False``: each of the T backward passes goes
               back through the LM head with a [B, T, V] logits cotangent (checked equal to
               the pipeline's attributions)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def xla_flops(jitted, *args, **kw):
    compiled = jitted.lower(*args, **kw).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    return float(cost.get("flops", float("nan"))), getattr(mem, "temp_size_in_bytes", None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxattr
    import _workload as w
    from jaxattr.encoding import pad_batch
    from jaxattr.methods import get_method
    from jaxattr.pipeline import ModelBatch, _attribute_jit, _gather_steps
    from jaxattr.targets import TargetBatch, get_target

    w.ensure_checkpoint()
    model = jaxattr.load_model(w.CKPT)
    prompts, gens = w.make_prompts(8)
    seqs = model.encode(prompts[:args.n_prompts], gens[:args.n_prompts])
    arrays = pad_batch(seqs, pad_id=model.pad_token_id, max_positions=model.max_positions)
    batch = ModelBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})
    adapter = model.adapter
    prob = get_target("probability")
    sal = get_method("saliency")
    B, L = batch.target_ids.shape
    T = batch.step_mask.shape[1]
    print(f"batch B={B} L={L} T={T}; load average {os.getloadavg()[0]:.1f}", flush=True)

    static = dict(method=sal, method_kwargs=(), target_fn=prob, target_kwargs=(), step_fns=(),
                  attribute_source=False, attribute_target=True)
    rows = []
    progs = []  # (name, callable): timed round-robin at the end, so drift hits all alike

    def record(name, jitted, *a, **kw):
        fn = lambda: jitted(*a, **kw)  # noqa: E731
        out = fn()
        jax.block_until_ready(out)
        flops, temp = xla_flops(jitted, *a, **kw)
        progs.append((name, fn, flops, temp))
        print(f"  {name:<12} compiled: {flops / 1e9:8.0f} GFLOP, temp "
              f"{temp / 2**30 if temp else float('nan'):.2f} GiB", flush=True)
        return out

    ref = record("pipeline", _attribute_jit, adapter, batch, None, **static)
    ref_attr = np.asarray(ref.target_attributions)  # [B, L, T, H]

    def tbatch_of(bt):
        return TargetBatch(target_ids=_gather_steps(bt.target_ids, bt.step_positions),
                           step_mask=bt.step_mask)

    def score_fn_full(ad, bt, x):
        step_logits = ad.forward(target_ids=bt.target_ids, target_mask=bt.target_mask,
                                 target_embeds=x, positions=bt.step_positions - 1)["logits"]
        return prob(step_logits, tbatch_of(bt)) * bt.step_mask

    @jax.jit
    def fwd(ad, bt):
        return score_fn_full(ad, bt, ad.embed(bt.target_ids))

    @jax.jit
    def fwd_1vjp(ad, bt):
        x = ad.embed(bt.target_ids)
        return jax.grad(lambda z: score_fn_full(ad, bt, z).sum())(x)

    record("fwd", fwd, adapter, batch)
    record("fwd+1vjp", fwd_1vjp, adapter, batch)

    # the pipeline before the split-head backward: T backward passes through the LM head
    full = record("full-head", _attribute_jit, adapter, batch, None,
                  **dict(static, split_head=False))
    err = (np.max(np.abs(np.asarray(full.target_attributions) - ref_attr))
           / np.max(np.abs(ref_attr)))
    print(f"    max |diff| / max |pipeline| = {err:.1e}", flush=True)

    times = {name: [] for name, *_ in progs}
    for r in range(args.repeats):
        for name, fn, _, _ in progs:
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f}s" for n, v in times.items())
              + f" (load avg {os.getloadavg()[0]:.1f})", flush=True)
    rows = [(name, statistics.median(times[name]), flops, temp)
            for name, _, flops, temp in progs]
    t_pipe, f_pipe = rows[0][1], rows[0][2]
    t_fwd, t_1 = rows[1][1], rows[2][1]
    print("\n=== breakdown (saliency, warm medians of round-robin timings; noisy shared CPU) ===")
    print(f"{'program':<12}{'time s':>9}{'GFLOP':>9}{'GFLOP/s':>9}{'temp GiB':>10}"
          f"{'vs pipeline':>13}")
    for name, t, f, temp in rows:
        print(f"{name:<12}{t:>9.2f}{f / 1e9:>9.0f}{f / t / 1e9:>9.1f}"
              f"{(temp or 0) / 2**30:>10.2f}{t_pipe / t:>12.2f}x")
    per_vjp = (t_pipe - t_fwd) / T
    print(f"\nforward {t_fwd:.2f}s = {100 * t_fwd / t_pipe:.0f}% of the pipeline; "
          f"one backward (fwd+1vjp - fwd) {t_1 - t_fwd:.2f}s; marginal cost of each of the "
          f"T={T} vmapped backward passes (pipeline - fwd)/T = {per_vjp:.2f}s")
    H, V, nl = model.config.n_embd, model.config.vocab_size, model.config.n_layer
    body_pt, head_pt = 2 * 12 * nl * H * H, 2 * V * H
    print(f"per token, matmul FLOPs: body {body_pt / 1e6:.0f}M, LM head {head_pt / 1e6:.0f}M "
          f"({100 * head_pt / (body_pt + head_pt):.0f}% of a forward). The pipeline applies "
          f"the head to the T={T} scored positions and back-propagates through it once "
          f"(split head, {2 * B * T * head_pt / 1e9:.0f} GFLOP with its forward); full-head "
          f"sends a [T, B, T, V] cotangent through it in each of the T backward passes: "
          f"{T * B * T * head_pt / 1e9:.0f} GFLOP.")
    useful = sum(int(p) for p in np.asarray(batch.step_positions).ravel()) / (B * T * L)
    print(f"causal waste: each backward runs over all L={L} positions but step t only "
          f"reaches positions < its own; useful fraction here {useful:.2f}")


if __name__ == "__main__":
    main()
