"""Time the tuned-lens package's (0.2.0, PyTorch) training step on a batch of token ids.

Run by ``benchmarks/lens.py`` in the side venv (it needs torch):
``python time_tuned_lens.py CKPT IDS.npy STEPS``. Its training loop (``tuned_lens.scripts.
train_loop.Train``) needs a hub dataset and model loader, so this script runs the body of
that loop on our batch instead, as the package writes it: frozen model forward with
``output_hidden_states`` under ``no_grad``, KL(final ‖ lens) per layer under bfloat16
autocast, one backward per layer, gradient clipping to 1, SGD Nesterov step (the package's
default optimiser, lr 1.0 * (1 - 0.9), weight decay 1e-3), linear LR decay. It also times the
same step with autocast off (float32), which is faster on CPU. Prints one JSON line.
"""
import json
import sys
import time

import numpy as np
import torch as th
from transformers import GPT2LMHeadModel, get_linear_schedule_with_warmup
from tuned_lens.nn.lenses import TunedLens


def main():
    ckpt, ids_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    th.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(ckpt).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = th.as_tensor(np.load(ids_path)).long()
    out = {"torch": th.__version__, "threads": th.get_num_threads(),
           "batch": list(ids.shape)}
    for autocast in (True, False):
        lens = TunedLens.from_model(model)
        opt = th.optim.SGD(lens.parameters(), lr=1.0 * (1 - 0.9), momentum=0.9,
                           nesterov=True, weight_decay=1e-3)
        sched = get_linear_schedule_with_warmup(opt, 0, steps + 1)

        def step():
            with th.no_grad():
                output = model(input_ids=ids, output_hidden_states=True)
            labels = output.logits.float().log_softmax(dim=-1)
            for i, h in enumerate(output.hidden_states[:-1]):
                with th.autocast("cpu", dtype=th.bfloat16, enabled=autocast):
                    logits = lens(h, idx=i)
                    loss = th.sum(labels.exp() * (labels - logits.log_softmax(-1)),
                                  dim=-1).mean()
                loss.backward()
            th.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=False)
            sched.step()

        step()                                          # warm-up
        times, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        key = "bf16_autocast" if autocast else "float32"
        out[key] = {"step_s": float(np.median(times)), "times": times,
                    "tokens_per_s": float(ids.numel() / np.median(times)),
                    "step_cpu_s": float(np.median(cpu)),
                    "tokens_per_cpu_s": float(ids.numel() / np.median(cpu))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
