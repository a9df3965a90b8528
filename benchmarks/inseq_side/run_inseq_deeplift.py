"""Inseq 0.7.1 DeepLIFT references on the tiny checkpoints (same texts as run_inseq.py).

Run in the SIDE env:

    /work/inseq-venv/bin/python benchmarks/inseq_side/run_inseq_deeplift.py CKPT_DIR OUT.npz

Same .npz layout as run_inseq.py. Calls: ``gpt2/deeplift`` and ``marian_fixedscale/deeplift``
(decoder double scaling neutralised, as in run_inseq.py), both with Captum's default
``multiply_by_inputs=True``. (``inseq.load_model(..., "deeplift", multiply_by_inputs=False)``
was tried: Inseq 0.7.1 returned numbers identical to the default, so that option is not
recorded; jaxattr's ``multiply_by_inputs=False`` is tested against the formula instead.)
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_inseq import (GPT2_GENERATED, GPT2_PROMPTS, MARIAN_SOURCES,  # noqa: E402
                       MARIAN_TARGETS, Recorder, run_call)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} CKPT_DIR OUT_FILE.npz")
    ckpt, out_file = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    import captum
    import inseq
    import transformers

    rec = Recorder()
    gpt2 = inseq.load_model(f"{ckpt}/gpt2", "deeplift")
    run_call(rec, gpt2, "gpt2", "gpt2/deeplift", "deeplift",
             input_texts=GPT2_PROMPTS, generated_texts=GPT2_GENERATED,
             step_scores=["probability"])
    marian = inseq.load_model(f"{ckpt}/marian", "deeplift")
    marian.model.get_decoder().embed_scale = 1.0
    run_call(rec, marian, "marian", "marian_fixedscale/deeplift", "deeplift",
             input_texts=MARIAN_SOURCES, generated_texts=MARIAN_TARGETS,
             attribute_target=True, step_scores=["probability"])
    meta = {"versions": {"inseq": getattr(inseq, "__version__", "0.7.1"),
                         "torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "captum": captum.__version__},
            "calls": rec.calls}
    arrays = dict(rec.arrays)
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez_compressed(out_file, **arrays)
    print(f"saved {len(rec.arrays)} arrays + meta -> {out_file}")


if __name__ == "__main__":
    main()
