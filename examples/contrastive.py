"""Contrastive attribution: why did the model say this colour rather than a distractor's?

    python examples/contrastive.py

``contrast_prob_diff`` attributes p(answer) - p(foil) at the same step (the foil: the colour
of another fact in the prompt), so tokens that only make *some* colour likely cancel out and
what remains is the evidence for the answer over the foil. Unlike Inseq, this works with
integrated gradients and with batches.

The default view of a contrastive run is signed (``aggregate()`` sums over the hidden axis):
a positive share is evidence for the answer, a negative one for the foil; the shares add up
to the change of p(answer) - p(foil) from the baseline. An L2 norm would show the foil's
colour as large as the answer's, with no way to tell which side it is on.
"""
import warnings

import numpy as np

import jaxattr
from jaxattr.model import completeness
from jaxattr.zoo import tasks

model = jaxattr.load_model("toy-recall")
examples = tasks.recall_examples(2, seed=2)
prompts = [e["prompt"] for e in examples]
answers = [e["answer"] for e in examples]
foils = [e["distractor_colours"][0] for e in examples]
with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)     # fail loudly if IG did not converge
    out = model.attribute(prompts, [p + " " + a for p, a in zip(prompts, answers)],
                          method="integrated_gradients", n_steps=256,
                          attributed_fn="contrast_prob_diff",
                          contrast_targets=[p + " " + f for p, f in zip(prompts, foils)],
                          step_scores=("probability", "contrast_prob_diff"))
for seq, answer, foil in zip(out.aggregate().sequence_attributions, answers, foils):
    col = np.nan_to_num(seq.target_attributions[:, 0])
    pro, con = np.argsort(-col)[:2], np.argsort(col)[:1]
    print(f"{answer!r} rather than {foil!r}: top input tokens "
          + ", ".join(f"{seq.target[i]!r} ({col[i]:+.2f})" for i in pro)
          + f"; for {foil!r}: " + ", ".join(f"{seq.target[i]!r} ({col[i]:+.2f})" for i in con))
for seq in out.sequence_attributions:
    delta, change = completeness(seq)
    print(f"p(answer) - p(foil) = {float(seq.step_scores['contrast_prob_diff'][0]):.3f}; "
          f"attributions sum to the change from the baseline ({float(change[0]):.3f}) "
          f"up to {abs(float(delta[0])):.3f}")
