"""Time Inseq 0.7.1's attribute-context (side env).

    /work/inseq-venv/bin/python benchmarks/pecore_side/time_inseq_context.py CKPT ARGS.json REPEATS
    /work/inseq-venv/bin/python benchmarks/pecore_side/time_inseq_context.py CKPT ARGS.json --serve

Batch mode prints one JSON line (load, first call, ``REPEATS`` warm calls). Serve mode prints
``{"msg": "ready", "load_s": ..., "threads": ...}``, then answers each stdin line ``call`` with
``{"msg": "call", "t": ...}`` (the first answer also carries the selected indices and scores)
until ``quit``, so that a driver can interleave its own timed calls with Inseq's.
"""
import json
import statistics
import sys
import time

import torch


def main():
    ckpt, args_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    import inseq
    from inseq.commands.attribute_context.attribute_context import attribute_context_with_model
    from inseq.commands.attribute_context.attribute_context_args import AttributeContextArgs
    with open(args_path) as f:
        kwargs = json.load(f)
    t0 = time.perf_counter()
    model = inseq.load_model(ckpt, kwargs.get("attribution_method", "saliency"))
    load_s = time.perf_counter() - t0

    def run():
        args = AttributeContextArgs(model_name_or_path=ckpt, show_viz=False,
                                    handle_output_context_strategy="pre", **kwargs)
        return attribute_context_with_model(args, model)

    def describe(out):
        return {"selected": [c.cti_idx for c in out.cci_scores], "cti_scores": out.cti_scores,
                "cci_first": out.cci_scores[0].input_context_scores if out.cci_scores else None}

    if mode == "--serve":
        print(json.dumps({"msg": "ready", "load_s": load_s,
                          "threads": torch.get_num_threads()}), flush=True)
        first = True
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            t0 = time.perf_counter()
            out = run()
            msg = {"msg": "call", "t": time.perf_counter() - t0}
            if first:
                msg.update(describe(out))
                first = False
            print(json.dumps(msg), flush=True)
        return
    repeats = int(mode)
    t0 = time.perf_counter()
    out = run()
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"load_s": load_s, "first_s": first_s, "times_s": times,
                      "median_s": statistics.median(times), "threads": torch.get_num_threads(),
                      **describe(out)}))


if __name__ == "__main__":
    main()
