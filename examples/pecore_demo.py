"""PECoRe on the bundled ``toy-context`` model, against its ground truth.

On held-out examples ("Kim is a woman from Rome." + "Kim said that" -> "she is happy."), CTI
should select the pronoun (output token 0) and CCI should rank the gender word (context token
3) first. Prints a markdown table of the CTI hit rate (the pronoun is selected), the CTI
precision (selected tokens that are the pronoun) and the CCI top-1 cue rate (among examples
where the pronoun is selected, its highest-scored context token is the gender word)::

    python examples/pecore_demo.py            # 100 held-out examples, about 2 minutes on CPU
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import jaxattr
from jaxattr.zoo.context_task import context_examples

HELD_OUT_SEED = 1_000_003


def evaluate(model, examples, **kwargs) -> dict:
    """CTI hit rate, CTI precision and CCI top-1 cue rate of one batched call."""
    outs = jaxattr.attribute_context(
        model, [e["input_current_text"] for e in examples],
        input_context_text=[e["input_context_text"] for e in examples],
        output_current_text=[e["output_current_text"] for e in examples], **kwargs)
    hits, selected, right_cue = 0, 0, 0
    for e, out in zip(examples, outs):
        idx = out.cti_idx
        selected += len(idx)
        if e["cti_index"] in idx:
            hits += 1
            cci = out.cci_scores[idx.index(e["cti_index"])]
            right_cue += int(np.argmax(cci.input_context_scores) == e["cue_index"])
    n = len(examples)
    return {"cti_hit": hits / n, "cti_precision": hits / max(selected, 1),
            "cci_top1": right_cue / max(hits, 1), "n": n}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args(argv)
    model = jaxattr.load_model("toy-context")
    examples = context_examples(args.n, seed=HELD_OUT_SEED)
    rows = []
    for method, fn in (("saliency", None), ("saliency", "contrast_prob_diff"),
                       ("input_x_gradient", "contrast_prob_diff")):
        t0 = time.time()
        r = evaluate(model, examples, attribution_method=method, attributed_fn=fn)
        rows.append((method, fn or "probability", r, time.time() - t0))
    print(f"| CCI method | attributed_fn | CTI hit rate | CTI precision | CCI top-1 cue rate |"
          f"\n|---|---|---|---|---|")
    for method, fn, r, _ in rows:
        print(f"| {method} | {fn} | {100 * r['cti_hit']:.1f}% | "
              f"{100 * r['cti_precision']:.1f}% | {100 * r['cci_top1']:.1f}% |")
    print(f"\n{args.n} held-out examples (context_examples(seed={HELD_OUT_SEED})); CTI: "
          "kl_divergence, threshold mean + 1.0 std (defaults); times "
          + ", ".join(f"{t:.0f}s" for *_, t in rows))


if __name__ == "__main__":
    main()
