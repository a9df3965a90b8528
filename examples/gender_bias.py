"""The gender-bias case study of the Inseq paper, in miniature, on the bundled ``toy-mt``.

    python examples/gender_bias.py

``toy-mt`` translates English into a toy language whose articles agree in gender with the
referent of an occupation. Its training data is occupationally skewed ("nurse" mostly
feminine). For sentences where a pronoun sets the gender against the stereotype
("the nurse said he is tired"), we ask: when the model writes the article, does it rely on the
pronoun (the right cue) or on the occupation (the stereotype)? We attribute the article with
contrastive saliency: p(article) - p(article of the other gender).
"""
import numpy as np

import jaxattr
from jaxattr.zoo import tasks

model = jaxattr.load_model("toy-mt")
examples = [e for e in tasks.mt_examples(400, seed=7, templates={"pronoun": 1.0})
            if e["anti_stereotypical"]][:16]
out = model.attribute([e["source"] for e in examples], [e["target"] for e in examples],
                      method="input_x_gradient", attributed_fn="contrast_prob_diff",
                      contrast_targets=[e["contrast_target"] for e in examples],
                      attr_pos_start=1, attr_pos_end=2,      # the article only
                      step_scores=("probability",))
agg = out.aggregate()
pronoun_wins, correct = 0, 0
for e, seq, raw in zip(examples, agg.sequence_attributions, out.sequence_attributions):
    col = np.abs(seq.source_attributions[:, 0])
    pronoun, occupation = col[e["cue_index"]], col[e["occupation_index"]]
    pronoun_wins += pronoun > occupation
    correct += raw.step_scores["probability"][0] > 0.5
print(f"{len(examples)} anti-stereotypical sentences (e.g. {examples[0]['source']!r} -> "
      f"{examples[0]['target']!r})")
print(f"article translated with the right gender: {correct}/{len(examples)}")
print(f"pronoun attributed more than the occupation: {pronoun_wins}/{len(examples)}")
