"""Time Inseq 0.7.1 attributions on the side-by-side workload (JSON on stdout).

Run in the SIDE env, normally by benchmarks/side_by_side.py:

    /work/inseq-venv/bin/python benchmarks/inseq_side/time_inseq.py SPEC.json          # batch
    /work/inseq-venv/bin/python benchmarks/inseq_side/time_inseq.py SPEC.json --serve  # server

SPEC.json: {"model_dir": ..., "prompts": [...], "generated": [...], "batch_size": 8,
            "load_method": "saliency" (optional: the method inseq.load_model gets),
            "runs": [{"method": "saliency", "kwargs": {...}, "n_prompts": 8, "repeats": 3}]}

Batch mode: for each run, the first call (``first_s``) and ``repeats`` more (``times_s``,
``median_s``); one JSON object at the end.

Serve mode (first run of the spec only): prints ``{"msg": "ready", "load_s": ...}``, then
answers each stdin line ``call`` with ``{"msg": "call", "t": ...}`` (the first answer also
carries per-sequence shapes and attribution norms) until ``quit``.

Each call is ``model.attribute(prompts, generated_texts, method=..., batch_size=8,
show_progress=False, **kwargs)``. For a decoder-only model with forced ``generated_texts``
and several inputs Inseq 0.7.1 runs one sequence at a time whatever batch_size says.
``norms``: L2 norm over hidden units of the target attributions, per sequence, for a numeric
sanity check against jaxattr (NaN -> null).
"""
from __future__ import annotations

import json
import logging
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(spec_path, serve=False):
    with open(spec_path) as fh:
        spec = json.load(fh)
    import torch
    import inseq

    t0 = time.perf_counter()
    # "load_method": the method the model is loaded with (DIG builds its kNN graph then)
    model = inseq.load_model(spec["model_dir"], spec.get("load_method", "saliency"))
    load_s = time.perf_counter() - t0
    info = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_s": load_s}

    def make_call(run):
        n = run.get("n_prompts") or len(spec["prompts"])
        prompts, gens = spec["prompts"][:n], spec["generated"][:n]
        kw = dict(method=run["method"], show_progress=False, batch_size=spec.get("batch_size"),
                  **run.get("kwargs", {}))

        def call():
            t = time.perf_counter()
            res = model.attribute(input_texts=prompts, generated_texts=gens, **kw)
            return time.perf_counter() - t, res
        return call, n

    def describe(res):
        shapes, norms = [], []
        for s in res.sequence_attributions:
            a = s.target_attributions.detach().float()
            shapes.append(list(a.shape))
            norms.append([[None if v != v else float(v) for v in row]
                          for row in a.norm(dim=-1).tolist()])
        return dict(shapes=shapes, norms=norms)

    if serve:
        call, _ = make_call(spec["runs"][0])
        emit(dict(msg="ready", **info))
        first = True
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "call":
                t, res = call()
                out = dict(msg="call", t=t)
                if first:
                    out.update(describe(res))
                    first = False
                emit(out)
            elif cmd == "quit":
                break
        return

    out = dict(info, runs=[])
    for run in spec["runs"]:
        call, n = make_call(run)
        first_s, res = call()
        times = [call()[0] for _ in range(int(run.get("repeats", 3)))]
        out["runs"].append(dict(method=run["method"], kwargs=run.get("kwargs", {}), n_prompts=n,
                                first_s=first_s, times_s=times,
                                median_s=statistics.median(times) if times else first_s,
                                **describe(res)))
        print(f"[inseq] {run['method']}: first {first_s:.2f}s, "
              f"times {[round(t, 2) for t in times]}", file=sys.stderr, flush=True)
    emit(out)


if __name__ == "__main__":
    main(sys.argv[1], serve="--serve" in sys.argv[2:])
