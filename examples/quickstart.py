"""Quickstart: attribute the bundled in-context-recall model, look, save, reload.

    python examples/quickstart.py [--out DIR]
"""
import argparse
import os
import tempfile

import numpy as np

import jaxattr
from jaxattr.zoo import tasks

parser = argparse.ArgumentParser()
parser.add_argument("--out", default=tempfile.mkdtemp(prefix="jaxattr-quickstart-"))
args = parser.parse_args()

model = jaxattr.load_model("toy-recall")      # bundled, offline
ex = tasks.recall_examples(1, seed=1)[0]         # e.g. "Kim's red ball. Sam's blue cup. Sam's"
out = model.attribute(ex["prompt"], ex["generated"], method="integrated_gradients", n_steps=64,
                      step_scores=("probability",))
out.show()                                      # heatmap in the terminal

seq = out.aggregate()[0]
col = seq.target_attributions[:, 0]             # the column of the generated " blue"
top = int(np.nanargmax(col))
print(f"{ex['prompt']!r} -> {ex['answer']!r}: p = {out[0].step_scores['probability'][0]:.3f}; "
      f"completeness delta {out[0].step_scores['deltas'][0]:+.1e}; most important input "
      f"token: {seq.target[top]!r} at {top} (true cue at {ex['cue_index']})")

os.makedirs(args.out, exist_ok=True)
json_path, html_path = os.path.join(args.out, "recall.json"), os.path.join(args.out, "recall.html")
out.save(json_path)
out.to_html()  # a string; save_html writes a self-contained file
from jaxattr.render import save_html  # noqa: E402

save_html(out, html_path)
back = jaxattr.load(json_path)
assert np.array_equal(back[0].target_attributions, out[0].target_attributions, equal_nan=True)
print(f"saved {json_path} and {html_path}; reloaded identical arrays")
