"""Cost of the internals at GPT-2-124M size (random weights, GPT-2's default config).

Prints two ratios (targets from issue 14):

* all-layer ``layer_gradient_x_activation`` at every ``blocks.*.mlp_out`` (12 sites, one
  forward and one set of VJPs) over one single-layer run (target <= 1.5x; Inseq needs one
  run per layer, i.e. 12x);
* a forward capturing every ``blocks.*.resid_post`` over a plain forward (target <= 1.2x).

Times are medians of warm (compiled) calls. Usage: ``python benchmarks/internals.py
[--repeats 3] [--batch 1] [--prompt 16] [--generated 8]``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--generated", type=int, default=8)
    parser.add_argument("--forward-batch", type=int, default=4)
    parser.add_argument("--forward-length", type=int, default=128)
    args = parser.parse_args()

    import transformers as T

    import jaxattr
    from jaxattr.encoding import EncodedSequence, pad_batch
    from jaxattr.internals import run_sites
    from jaxattr.pipeline import ModelBatch, attribute_batch, resolve_layer
    from jaxattr.methods import input_x_gradient
    from jaxattr.targets import get_target
    from jaxattr.testing import make_tokenizer

    hf = T.FlaxGPT2LMHeadModel(T.GPT2Config(), seed=0)  # 124M parameters
    model = jaxattr.load_model(hf, tokenizer=make_tokenizer())
    rng = np.random.default_rng(0)
    n = args.prompt + args.generated
    seqs = [EncodedSequence(target_ids=rng.integers(0, 50000, n).tolist(),
                            attr_start=args.prompt, attr_end=n) for _ in range(args.batch)]
    batch = ModelBatch(**{k: jnp.asarray(v) for k, v in
                          pad_batch(seqs, pad_id=0, bucket=False).items()})
    common = dict(method=input_x_gradient, target_fn=get_target("probability"),
                  attribute_source=False, attribute_target=True, prefix_groups=1)

    def layer_run(layer):
        names = resolve_layer(model.adapter, layer)
        return lambda: attribute_batch(model.adapter, batch, layer=names, **common)

    one = _median_time(layer_run("blocks.5.mlp_out"), args.repeats)
    every = _median_time(layer_run("blocks.*.mlp_out"), args.repeats)

    ids = jnp.asarray(rng.integers(0, 50000, (args.forward_batch, args.forward_length)),
                      jnp.int32)
    arrays = dict(target_ids=ids, target_mask=jnp.ones_like(ids))
    every_resid = resolve_layer(model.adapter, "blocks.*.resid_post")
    plain = _median_time(lambda: run_sites(model.adapter, **arrays)[0], args.repeats * 2)
    captured = _median_time(lambda: run_sites(model.adapter, capture=every_resid, **arrays),
                            args.repeats * 2)

    print(f"device: {jax.devices()[0].platform}; layer attribution batch {args.batch} x "
          f"{n} tokens ({args.generated} attributed); forward {args.forward_batch} x "
          f"{args.forward_length} tokens")
    print(f"layer_gradient_x_activation  one layer {one:.3f}s  all 12 mlp_out {every:.3f}s  "
          f"ratio {every / one:.2f}x (target <= 1.5x; one run per layer: 12x)")
    print(f"forward  plain {plain * 1e3:.1f}ms  capturing 12 resid_post {captured * 1e3:.1f}ms  "
          f"ratio {captured / plain:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
