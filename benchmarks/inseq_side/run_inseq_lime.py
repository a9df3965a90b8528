"""Inseq 0.7.1 LIME on the tiny GPT-2 checkpoint: seeded determinism and its surrogate fits.

Run in the SIDE env:

    /work/inseq-venv/bin/python benchmarks/inseq_side/run_inseq_lime.py CKPT_DIR OUT.npz

Records, for the first forced text of run_inseq.py (``n_samples=50``, Inseq's defaults):

* call ``gpt2/lime_seed0`` (``torch.manual_seed(0)`` first) in run_inseq.py's layout, and
  ``gpt2/lime_seed0_again``: the same call after re-seeding (bit-identical, checked here);
* ``fits/{c}/X`` ``[50, L_c * H]`` float64 (the surrogate's inputs: the perturbed
  embeddings, flattened), ``fits/{c}/y`` ``[50]`` (the model's probability of the forced
  token for each perturbed input), ``fits/{c}/w`` ``[50]`` (the similarity weights) and
  ``fits/{c}/coef`` ``[L_c * H]`` (the fitted ridge coefficients Inseq returns) for every
  generation step ``c``: captured from ``SkLearnLinearModel.fit`` during the first call.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_inseq import GPT2_GENERATED, GPT2_PROMPTS, Recorder, run_call  # noqa: E402


def main():
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} CKPT_DIR OUT_FILE.npz")
    ckpt, out_file = sys.argv[1], sys.argv[2]
    import captum
    import inseq
    import sklearn
    import transformers
    from captum._utils.models.linear_model import SkLearnLinearModel

    fits = []
    original_fit = SkLearnLinearModel.fit

    def recording_fit(self, train_data, **kwargs):
        X, y, w = (t.numpy() for t in next(iter(train_data)))
        out = original_fit(self, train_data, **kwargs)
        fits.append((X, y, w, self.representation().detach().double().numpy().ravel()))
        return out

    rec = Recorder()
    model = inseq.load_model(f"{ckpt}/gpt2", "lime")
    texts = dict(input_texts=GPT2_PROMPTS[0], generated_texts=GPT2_GENERATED[0],
                 step_scores=["probability"], n_samples=50)
    SkLearnLinearModel.fit = recording_fit
    torch.manual_seed(0)
    run_call(rec, model, "gpt2", "gpt2/lime_seed0", "lime", **texts)
    SkLearnLinearModel.fit = original_fit
    torch.manual_seed(0)
    run_call(rec, model, "gpt2", "gpt2/lime_seed0_again", "lime", **texts)
    a = rec.arrays["gpt2/lime_seed0/0/target_attributions"]
    b = rec.arrays["gpt2/lime_seed0_again/0/target_attributions"]
    print("seeded rerun identical:", np.array_equal(a, b, equal_nan=True))
    for c, (X, y, w, coef) in enumerate(fits):
        rec.arrays[f"fits/{c}/X"] = X
        rec.arrays[f"fits/{c}/y"] = y
        rec.arrays[f"fits/{c}/w"] = w
        rec.arrays[f"fits/{c}/coef"] = coef
    meta = {"versions": {"inseq": getattr(inseq, "__version__", "0.7.1"),
                         "torch": torch.__version__, "transformers": transformers.__version__,
                         "captum": captum.__version__, "scikit-learn": sklearn.__version__},
            "n_fits": len(fits), "unk_token_id": model.tokenizer.unk_token_id,
            "calls": rec.calls}
    arrays = dict(rec.arrays)
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez_compressed(out_file, **arrays)
    print(f"saved {len(rec.arrays)} arrays + meta -> {out_file}")


if __name__ == "__main__":
    main()
