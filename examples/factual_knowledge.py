"""The factual-knowledge case study (ROME's causal tracing; the Inseq paper's contrastive
attribution tracing), in miniature and offline, on the bundled ``toy-facts``.

    python examples/factual_knowledge.py                    # ~3-6 min on 2 CPU cores
    python examples/factual_knowledge.py --n 40 --figures docs/figures

``toy-facts`` has memorised synthetic facts ("Ada Moreno lives in" -> " Oslo"; the answer is
never in the prompt). On held-out paraphrases it answers right, we ask where the fact is
recalled:

1. causal tracing (Meng et al., 2022): noise on the subject's embeddings, then restore the
   block output / MLP output / attention output at each (token, layer) and measure how much of
   p(answer) comes back; averaged by ROME's six position categories (with 95% intervals);
2. contrastive attribution tracing (Sarti et al., 2023): layer gradient x activation of
   p(true) - p(false) at every MLP output, from one backward per prompt;
3. the Spearman correlation between the two category x layer maps.
"""
from __future__ import annotations

import argparse
import os
import random

import numpy as np

import jaxattr
from jaxattr.interventions import (CATEGORIES, attribution_trace, average_traces,
                                   causal_trace)
from jaxattr.zoo import facts


def spearman(a, b):
    ok = np.isfinite(a) & np.isfinite(b)
    ra = np.argsort(np.argsort(a[ok]))
    rb = np.argsort(np.argsort(b[ok]))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=24, help="held-out prompts to trace")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--window", type=int, default=2,
                    help="layers restored around each layer for kind mlp/attn (ROME: 10 of 48)")
    ap.add_argument("--figures", default=None, help="folder for the PNG figures")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    model = jaxattr.load_model("toy-facts")
    held = facts.facts_examples("heldout")
    rng = random.Random(args.seed)
    rng.shuffle(held)
    # keep prompts the model answers right (ROME traces known facts)
    chosen = []
    for e in held:
        out = model.generate(e["prompt"], max_new_tokens=1)[0]
        if out.split()[-1] == e["answer"]:
            chosen.append(e)
        if len(chosen) == args.n:
            break
    print(f"{len(chosen)} held-out prompts answered right, e.g. {chosen[0]['prompt']!r} -> "
          f"{chosen[0]['answer']!r}")

    maps = {}
    for kind in (None, "mlp", "attn"):
        traces = [causal_trace(model, e["prompt"], e["subject"], answer=" " + e["answer"],
                               samples=args.samples, kind=kind, window=args.window,
                               key=__import__("jax").random.key(i))
                  for i, e in enumerate(chosen)]
        avg = average_traces(traces)
        maps[kind or "hidden"] = avg
        print()
        print(avg.to_text())
        print(f"  p(answer): clean {avg.high.mean():.3f}, subject noised {avg.low.mean():.3f}")
    attr = average_traces([attribution_trace(model, e["prompt"], e["subject"],
                                             answer=" " + e["answer"],
                                             foil=" " + rng.choice(e["foils"]))
                           for e in chosen])
    maps["attribution"] = attr
    print()
    print(attr.to_text())
    rho = {k: spearman(maps[k].mean.ravel(), attr.mean.ravel()) for k in ("hidden", "mlp",
                                                                         "attn")}
    print("\nSpearman correlation, attribution map vs causal-trace map (6 categories x layers):")
    for k, v in rho.items():
        print(f"  {k:6s} {v:+.3f}")
    best = {k: CATEGORIES[int(np.nanargmax(np.nanmax(maps[k].mean, 1)))] for k in maps}
    print("category with the strongest effect:", best)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        for k, avg in maps.items():
            fig = avg.figure()
            path = os.path.join(args.figures, f"factual_{k}.png")
            fig.savefig(path, dpi=110)
            print("wrote", path)
    return maps, rho


if __name__ == "__main__":
    main()
