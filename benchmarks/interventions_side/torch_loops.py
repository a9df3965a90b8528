"""The PyTorch reference for ``benchmarks/interventions.py``: causal tracing and activation
patching as ROME and TransformerLens run them — one hooked forward per grid cell.

Run in the SIDE env (torch + transformers), normally through ``benchmarks/interventions.py``:

    /work/inseq-venv/bin/python benchmarks/interventions_side/torch_loops.py CKPT_DIR INPUTS.npz OUT.npz

INPUTS.npz holds ``clean_ids`` / ``corrupt_ids`` ``[L]`` (same length), ``subject`` (start,
stop), ``noise`` ``[samples, n_subject, H]``, ``answer``, ``foil``. Writes OUT.npz with the two
grids and the wall times (warm: each loop is run once untimed first on a smaller grid).

* Causal trace (ROME's ``trace_with_patch``): per cell (token t, layer l), one forward of a
  batch of ``1 + samples`` copies of the prompt; a hook on ``wte`` adds the noise to the
  subject tokens of rows 1..; a hook on block ``l`` copies row 0's (clean) state at ``t`` into
  the noisy rows; the score is the mean over noisy rows of p(answer) at the last token.
* Exact patching (TransformerLens' ``get_act_patch_resid_pre``): per cell (layer l, position
  t), one forward of the corrupted prompt with a pre-hook on block ``l`` that writes the clean
  run's ``resid_pre`` at ``t``; metric: logit(answer) − logit(foil) at the last token.
"""
from __future__ import annotations

import sys
import time

import numpy as np


def main(ckpt, inputs, out):
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    model = GPT2LMHeadModel.from_pretrained(ckpt, attn_implementation="eager").eval()
    z = np.load(inputs)
    clean = torch.tensor(z["clean_ids"])[None]
    corrupt = torch.tensor(z["corrupt_ids"])[None]
    s0, s1 = (int(v) for v in z["subject"])
    noise = torch.tensor(z["noise"])
    answer, foil = int(z["answer"]), int(z["foil"])
    blocks = model.transformer.h
    n_layers, length, samples = len(blocks), clean.shape[1], noise.shape[0]

    # ---------------------------------------------------------------- causal trace
    def trace_cell(t, l):
        batch = clean.repeat(1 + samples, 1)

        def add_noise(mod, inp, output):
            output = output.clone()
            output[1:, s0:s1] += noise.to(output.dtype)
            return output

        def restore(mod, inp, output):
            h = output[0] if isinstance(output, tuple) else output
            h[1:, t] = h[0, t]
            return output
        hooks = [model.transformer.wte.register_forward_hook(add_noise),
                 blocks[l].register_forward_hook(restore)]
        try:
            logits = model(batch).logits[1:, -1]
        finally:
            for h in hooks:
                h.remove()
        return torch.softmax(logits.float(), -1)[:, answer].mean().item()

    def trace_grid(positions, layers):
        return np.array([[trace_cell(t, l) for l in layers] for t in positions])

    trace_grid([0], [0])                                      # warm-up
    t0 = time.perf_counter()
    trace = trace_grid(range(length), range(n_layers))
    t_trace = time.perf_counter() - t0

    # ---------------------------------------------------------------- exact patching
    cache = {}
    hooks = [blocks[l].register_forward_pre_hook(
        lambda mod, args, l=l: cache.__setitem__(l, args[0].detach().clone()))
        for l in range(n_layers)]
    model(clean)
    for h in hooks:
        h.remove()

    def patch_cell(l, t):
        def hook(mod, args):
            x = args[0].clone()
            x[:, t] = cache[l][:, t]
            return (x,) + tuple(args[1:])
        h = blocks[l].register_forward_pre_hook(hook)
        try:
            lg = model(corrupt).logits[0, -1]
        finally:
            h.remove()
        return (lg[answer] - lg[foil]).item()

    patch_cell(0, 0)                                          # warm-up
    t0 = time.perf_counter()
    patching = np.array([[patch_cell(l, t) for t in range(length)] for l in range(n_layers)])
    t_patch = time.perf_counter() - t0
    np.savez(out, trace=trace, patching=patching, t_trace=t_trace, t_patch=t_patch,
             torch_version=torch.__version__, threads=torch.get_num_threads())
    print(f"torch: causal trace {t_trace:.2f}s, exact patching {t_patch:.2f}s")


if __name__ == "__main__":
    main(*sys.argv[1:4])
