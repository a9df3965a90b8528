"""Inseq 0.7.1 ReAGent on the tiny GPT-2 checkpoint, over many seeds (a statistical record).

Run in the SIDE env:

    /work/inseq-venv/bin/python benchmarks/inseq_side/run_inseq_reagent.py CKPT_DIR OUT.npz

ReAGent is stochastic (torch.rand for its initial scores, replacement masks and replacement
tokens), so no single run can be matched number for number by a JAX program with another
random generator; this records the distribution instead. Inseq's defaults (keep_top_n=5,
stopping_condition_top_k=3, replacing_ratio=0.3, max_probe_steps=3000, num_probes=16) with
one change: Inseq samples replacement tokens among those with the same NLTK POS tag, and
NLTK and its tagger data are not installed here (no network), so ``POSTagTokenSampler`` is
replaced by a uniform sampler over the vocabulary (one group: exactly the layout the POS
sampler uses with a single tag), jaxattr's ``replacement_groups=None``.

The forced continuation is the model's own greedy one (so the target is the top prediction
on the unperturbed prefix and probes can stop). Records:

* ``reagent/importance`` ``[R, len(target), n_steps]`` (rewritten after every seed): the importance (hidden unit 0 of
  Inseq's repeated scores) of run ``r`` after ``torch.manual_seed(r)``;
* meta ``input_text`` / ``generated_text`` / ``n_seeds``.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

N_SEEDS = 12
PROMPT = "The cat sat on the"
NEW_TOKENS = 5


def main():
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} CKPT_DIR OUT_FILE.npz")
    ckpt, out_file = sys.argv[1], sys.argv[2]
    import inseq
    import inseq.attr.feat.ops.reagent as reagent_mod
    from inseq.attr.feat.ops.reagent_core.token_sampler import TokenSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class UniformSampler(TokenSampler):
        def __init__(self, tokenizer, identifier=None, device=None, **kwargs):
            self.vocab_size = tokenizer.vocab_size

        def __call__(self, input_ids):
            u = torch.rand(input_ids.shape, device=input_ids.device)
            return (u * self.vocab_size).long()

    reagent_mod.POSTagTokenSampler = UniformSampler
    tok = AutoTokenizer.from_pretrained(f"{ckpt}/gpt2")
    hf = AutoModelForCausalLM.from_pretrained(f"{ckpt}/gpt2").eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            nxt = hf(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
    generated = tok.decode(ids[0])
    assert generated.startswith(PROMPT) and tok(generated).input_ids == ids[0].tolist(), generated
    model = inseq.load_model(f"{ckpt}/gpt2", "reagent")
    runs = []
    for seed in range(N_SEEDS):
        torch.manual_seed(seed)
        out = model.attribute(PROMPT, generated, show_progress=False)
        a = out.sequence_attributions[0].target_attributions
        runs.append(a[..., 0].float().numpy())
        print(f"seed {seed}: {np.round(runs[-1][:, 0], 3).tolist()}", flush=True)
        # saved after every seed: a run where some step never stops takes 3000 probe steps
        meta = {"versions": {"inseq": getattr(inseq, "__version__", "0.7.1"),
                             "torch": torch.__version__},
                "input_text": PROMPT, "generated_text": generated, "n_seeds": len(runs),
                "sampler": "uniform over the vocabulary (POSTagTokenSampler replaced)",
                "target": [[t.token, int(t.id)] for t in out.sequence_attributions[0].target]}
        np.savez_compressed(out_file, **{"reagent/importance": np.stack(runs).astype(np.float32),
                                         "__meta__": np.array(json.dumps(meta))})
    print(f"saved -> {out_file}")


if __name__ == "__main__":
    main()
