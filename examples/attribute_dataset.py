"""Attributing a dataset from the command line (batched, incremental, resumable).

    python examples/attribute_dataset.py [--out DIR]

Writes a small JSON-lines dataset from the recall task (plus one bad row, which is reported
and skipped), runs ``jaxattr attribute-dataset`` on it, and reads the results back. Rerunning
the same command resumes: rows already in the output are not redone.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from jaxattr.zoo import tasks

parser = argparse.ArgumentParser()
parser.add_argument("--out", default=tempfile.mkdtemp(prefix="jaxattr-dataset-"))
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
src, dst = os.path.join(args.out, "recall.jsonl"), os.path.join(args.out, "attributions.jsonl")
with open(src, "w") as f:
    for e in tasks.recall_examples(12, seed=5):
        f.write(json.dumps({"prompt": e["prompt"], "full": e["generated"]}) + "\n")
    f.write(json.dumps({"prompt": "Kim has a", "full": "Sam has a red"}) + "\n")  # bad row

cmd = [sys.executable, "-m", "jaxattr.cli", "attribute-dataset", "--model", "toy-recall",
       "--input-file", src, "--input-field", "prompt", "--generated-field", "full",
       "--output", dst, "--batch-size", "4", "--method", "input_x_gradient"]
print("$", " ".join(cmd[2:]))
subprocess.run(cmd, check=True)
rows = [json.loads(line) for line in open(dst)]
print(f"{sum('result' in r for r in rows)} results and {sum('error' in r for r in rows)} "
      f"reported error(s) in {dst}")
subprocess.run(cmd, check=True)  # resuming: nothing left to do
