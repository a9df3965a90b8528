"""Contrastive attribution: why did the model say this colour rather than a distractor's?

    python examples/contrastive.py

``contrast_prob_diff`` attributes p(answer) - p(foil) at the same step (the foil: the colour
of another fact in the prompt), so tokens that only make *some* colour likely cancel out and
what remains is the evidence for the answer over the foil. Unlike Inseq, this works with
integrated gradients and with batches.
"""
import numpy as np

import jaxattr
from jaxattr.zoo import tasks

model = jaxattr.load_model("toy-recall")
examples = tasks.recall_examples(2, seed=2)
prompts = [e["prompt"] for e in examples]
answers = [e["answer"] for e in examples]
foils = [e["distractor_colours"][0] for e in examples]
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
