"""PECoRe side by side: jaxattr.attribute_context vs Inseq 0.7.1 attribute-context on the same
random GPT-2-124M-sized weights and CPU (``benchmarks/_workload.py``'s checkpoint).

Workload: a ~30-token context passage, an 8-token current prompt, ~20 forced output tokens;
CTI with kl_divergence (threshold mean + 1 std), CCI with saliency of contrast_prob_diff.
Each tool runs once cold (jaxattr: compilation included), then ``--repeats`` warm runs; the
median warm times are compared. Both tools must select the same tokens (checked)::

    python benchmarks/pecore_side_by_side.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _workload import PASSAGES, SIDE_PY, ensure_checkpoint, run_json, python_env  # noqa: E402


def workload(ckpt):
    """Context (~30 tokens), current prompt (8 tokens) and its ~20-token continuation."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ckpt)
    ctx_ids = tok(PASSAGES[0])["input_ids"][:30]
    ctx = tok.decode(ctx_ids).strip()
    cur_ids = tok(PASSAGES[3])["input_ids"]
    cur = tok.decode(cur_ids[:8]).strip()
    out = tok.decode(cur_ids[8:28]).strip()
    return {"input_context_text": ctx, "input_current_text": cur, "output_current_text": out,
            "attributed_fn": "contrast_prob_diff", "output_template": "{current}"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    ckpt = ensure_checkpoint()
    kwargs = workload(ckpt)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(kwargs, f)
    inseq = run_json([SIDE_PY, os.path.join(HERE, "pecore_side", "time_inseq_context.py"),
                      ckpt, f.name, str(args.repeats)], env=python_env())
    os.unlink(f.name)

    import numpy as np
    import jaxattr
    t0 = time.perf_counter()
    model = jaxattr.load_model(ckpt)
    load_s = time.perf_counter() - t0
    ours_kw = {k: v for k, v in kwargs.items() if k != "output_template"}

    def run():
        return jaxattr.attribute_context(model, **ours_kw)

    t0 = time.perf_counter()
    out = run()
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    n_ctx = len(out.input_context_tokens)
    print(f"context {n_ctx} tokens, output {len(out.output_current_tokens)} tokens, "
          f"selected {out.cti_idx} (Inseq {inseq['selected']})")
    assert out.cti_idx == inseq["selected"], "the tools selected different tokens"
    cti_err = float(np.max(np.abs(np.array(out.cti_scores) - np.array(inseq["cti_scores"]))))
    cci_err = float(np.max(np.abs(np.array(out.cci_scores[0].input_context_scores)
                                  - np.array(inseq["cci_first"])))) if out.cci_scores else 0.0
    print(f"max |CTI diff| {cti_err:.2e}, max |CCI diff| (first token) {cci_err:.2e}")
    print("| tool | load (s) | first call (s) | warm call, median of "
          f"{args.repeats} (s) |\n|---|---|---|---|")
    print(f"| Inseq 0.7.1 (torch, {inseq['threads']} threads) | {inseq['load_s']:.1f} | "
          f"{inseq['first_s']:.2f} | {inseq['median_s']:.2f} |")
    print(f"| jaxattr | {load_s:.1f} | {first_s:.2f} | {med:.2f} |")
    print(f"speed-up (warm): {inseq['median_s'] / med:.1f}x; first call: "
          f"{inseq['first_s'] / first_s:.1f}x")


if __name__ == "__main__":
    main()
