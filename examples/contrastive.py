"""Contrastive attribution: why did the model say "blue" rather than "red"?

    python examples/contrastive.py

``contrast_prob_diff`` attributes p(blue) - p(red) at the same step, so tokens that only make
*some* colour likely cancel out and what remains is the evidence for blue over red. Unlike
Inseq, this works with integrated gradients and with batches.
"""
import numpy as np

import jaxattr

model = jaxattr.load_model("toy-recall")
prompts = ["Kim has a red ball. Sam has a blue cup. Sam has a",
           "Omar has a green hat. Eva has a red box. Lena has a pink pen. Eva has a"]
answers, foils = ["blue", "red"], ["red", "green"]
out = model.attribute(prompts, [p + " " + a for p, a in zip(prompts, answers)],
                      method="integrated_gradients", n_steps=32,
                      attributed_fn="contrast_prob_diff",
                      contrast_targets=[p + " " + f for p, f in zip(prompts, foils)],
                      step_scores=("probability", "contrast_prob_diff"))
for seq, answer, foil in zip(out.aggregate().sequence_attributions, answers, foils):
    col = seq.target_attributions[:, 0]
    order = np.argsort(-np.nan_to_num(col))[:3]
    print(f"{answer!r} rather than {foil!r}: top input tokens "
          + ", ".join(f"{seq.target[i]!r} ({col[i]:.2f})" for i in order))
for seq in out.sequence_attributions:
    print("p(answer) - p(foil) =", float(seq.step_scores["contrast_prob_diff"][0]))
