"""Time the tuned-lens package's (0.2.0, PyTorch) training step on a batch of token ids.

Run by ``benchmarks/lens.py`` with the side python (it needs torch and tuned-lens):
``python time_tuned_lens.py CKPT IDS.npy STEPS [--device auto|cpu|cuda]``. Its training loop
(``tuned_lens.scripts.train_loop.Train``) needs a hub dataset and model loader, so this script
runs the body of that loop on our batch instead, as the package writes it: frozen model forward
with ``output_hidden_states`` under ``no_grad``, KL(final ‖ lens) per layer under bfloat16
autocast, one backward per layer, gradient clipping to 1, SGD Nesterov step (the package's
default optimiser, lr 1.0 * (1 - 0.9), weight decay 1e-3), linear LR decay. It also times the
same step with autocast off (float32), which is faster on CPU, and on a GPU a third variant,
float32 with TF32 matmuls allowed (``tf32``; JAX's default precision for float32 matmuls on
such a GPU), so each precision has its like on the other side.

``--device auto`` (default) picks ``cuda`` when torch sees a GPU. On a GPU each timed step ends
with ``torch.cuda.synchronize()``; the first (warm-up) step, which includes cuBLAS and kernel
set-up, is reported apart (``warmup_s``). Prints one JSON line.
"""
import argparse
import json
import time

import numpy as np
import torch as th
from transformers import GPT2LMHeadModel, get_linear_schedule_with_warmup
from tuned_lens.nn.lenses import TunedLens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("ids")
    ap.add_argument("steps", type=int)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args()
    device = ("cuda" if th.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    th.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(args.ckpt).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = th.as_tensor(np.load(args.ids)).long().to(device)
    sync = th.cuda.synchronize if device == "cuda" else (lambda: None)
    out = {"torch": th.__version__, "device": device, "threads": th.get_num_threads(),
           "batch": list(ids.shape),
           "gpu": th.cuda.get_device_name() if device == "cuda" else None}
    variants = [("bf16_autocast", True, False), ("float32", False, False)]
    if device == "cuda":
        variants.append(("tf32", False, True))
    for key, autocast, tf32 in variants:
        if device == "cuda":
            th.backends.cuda.matmul.allow_tf32 = tf32
            th.backends.cudnn.allow_tf32 = tf32
        lens = TunedLens.from_model(model).to(device)
        opt = th.optim.SGD(lens.parameters(), lr=1.0 * (1 - 0.9), momentum=0.9,
                           nesterov=True, weight_decay=1e-3)
        sched = get_linear_schedule_with_warmup(opt, 0, args.steps + 1)

        def step():
            with th.no_grad():
                output = model(input_ids=ids, output_hidden_states=True)
            labels = output.logits.float().log_softmax(dim=-1)
            for i, h in enumerate(output.hidden_states[:-1]):
                with th.autocast(device, dtype=th.bfloat16, enabled=autocast):
                    logits = lens(h, idx=i)
                    loss = th.sum(labels.exp() * (labels - logits.log_softmax(-1)),
                                  dim=-1).mean()
                loss.backward()
            th.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=False)
            sched.step()
            sync()

        t0 = time.perf_counter()
        step()                                          # warm-up
        warmup = time.perf_counter() - t0
        times, cpu = [], []
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[key] = {"step_s": float(np.median(times)), "times": times, "warmup_s": warmup,
                    "tokens_per_s": float(ids.numel() / np.median(times)),
                    "step_cpu_s": float(np.median(cpu)),
                    "tokens_per_cpu_s": float(ids.numel() / np.median(cpu))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
