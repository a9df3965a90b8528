"""PECoRe side by side: jaxattr.attribute_context vs Inseq 0.7.1 attribute-context on the same
random GPT-2-124M-sized weights and CPU (``benchmarks/_workload.py``'s checkpoint).

Workload: a ~30-token context passage, an 8-token current prompt, ~20 forced output tokens;
CTI with kl_divergence (threshold mean + 1 std), CCI with saliency of contrast_prob_diff.
Each tool runs once cold (jaxattr: compilation included), then ``--repeats`` interleaved
rounds (one warm call of each, the order alternating; Inseq runs in a side process served
one call at a time) so that the shared machine's load affects both; the speed-up is the
median of the per-round ratios. Both tools must select the same tokens (checked)::

    python benchmarks/pecore_side_by_side.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _workload import PASSAGES, SIDE_PY, ensure_checkpoint, python_env  # noqa: E402


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


class InseqServer:
    """Inseq's attribute-context in a side process (``--serve``), called one run at a time."""

    def __init__(self, ckpt, args_path):
        self.proc = subprocess.Popen(
            [SIDE_PY, os.path.join(HERE, "pecore_side", "time_inseq_context.py"), ckpt,
             args_path, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=python_env())
        self.ready = self._read()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the Inseq side process ended (exit code {self.proc.wait()})")

    def call(self):
        self.proc.stdin.write("call\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved warm rounds")
    args = ap.parse_args(argv)
    ckpt = ensure_checkpoint()
    kwargs = workload(ckpt)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(kwargs, f)
    print(f"uptime: {os.getloadavg()}", flush=True)
    inseq = InseqServer(ckpt, f.name)

    import numpy as np
    import jaxattr
    t0 = time.perf_counter()
    model = jaxattr.load_model(ckpt)
    load_s = time.perf_counter() - t0
    ours_kw = {k: v for k, v in kwargs.items() if k != "output_template"}

    def run():
        t0 = time.perf_counter()
        res = jaxattr.attribute_context(model, **ours_kw)
        return time.perf_counter() - t0, res

    # cold calls back to back (jaxattr: compilation included), then interleaved warm rounds
    first = inseq.call()
    print(f"Inseq first call {first['t']:.2f} s", flush=True)
    first_s, out = run()
    print(f"jaxattr first call {first_s:.2f} s", flush=True)
    t_inseq, t_ours, ratios = [], [], []
    for r in range(args.repeats):
        if r % 2:   # alternate which tool goes first in a round
            a = run()[0]
            b = inseq.call()["t"]
        else:
            b = inseq.call()["t"]
            a = run()[0]
        t_inseq.append(b)
        t_ours.append(a)
        ratios.append(b / a)
        print(f"round {r}: Inseq {b:.2f} s, jaxattr {a:.2f} s, ratio {b / a:.1f}x, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    inseq.close()
    os.unlink(f.name)
    n_ctx = len(out.input_context_tokens)
    print(f"context {n_ctx} tokens, output {len(out.output_current_tokens)} tokens, "
          f"selected {out.cti_idx} (Inseq {first['selected']})")
    assert out.cti_idx == first["selected"], "the tools selected different tokens"
    cti_err = float(np.max(np.abs(np.array(out.cti_scores) - np.array(first["cti_scores"]))))
    cci_err = float(np.max(np.abs(np.array(out.cci_scores[0].input_context_scores)
                                  - np.array(first["cci_first"])))) if out.cci_scores else 0.0
    print(f"max |CTI diff| {cti_err:.2e}, max |CCI diff| (first token) {cci_err:.2e}")
    print("| tool | load (s) | first call (s) | warm call, median of "
          f"{args.repeats} interleaved rounds (s) |\n|---|---|---|---|")
    print(f"| Inseq 0.7.1 (torch, {inseq.ready['threads']} threads) | "
          f"{inseq.ready['load_s']:.1f} | {first['t']:.2f} | {statistics.median(t_inseq):.2f} |")
    print(f"| jaxattr | {load_s:.1f} | {first_s:.2f} | {statistics.median(t_ours):.2f} |")
    print(f"speed-up (warm, median of per-round ratios): {statistics.median(ratios):.1f}x; "
          f"first call: {first['t'] / first_s:.1f}x; uptime: {os.getloadavg()}")


if __name__ == "__main__":
    main()
