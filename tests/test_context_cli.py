"""``jaxattr attribute-context``: one example (JSON and HTML written, same numbers as the API),
the resumable JSON-lines dataset mode, and a clear error on a bad template."""
import json
import os

import numpy as np

import jaxattr
from jaxattr.cli import main
from jaxattr.context import load_context
from jaxattr.context.dataset import attribute_context_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "benchmarks", "inseq_side", "tiny_ckpt", "gpt2")
CTX, CUR, OUT = "The cat sat on the mat.", "The dog is happy because", "it has a new ball."


def test_single_example_writes_json_and_html(tmp_path, capsys):
    js, page = tmp_path / "ctx.json", tmp_path / "ctx.html"
    rc = main(["attribute-context", "-m", CKPT, "--input_current_text", CUR,
               "--input-context-text", CTX, "--output_current_text", OUT,
               "--attributed_fn", "contrast_prob_diff",
               "--context_sensitivity_std_threshold", "0", "-o", str(js),
               "--viz_path", str(page), "--no-color"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Context-sensitive tokens (*)" in printed
    got = load_context(js)
    ref = jaxattr.attribute_context(jaxattr.load_model(CKPT), CUR, input_context_text=CTX,
                                    output_current_text=OUT, attributed_fn="contrast_prob_diff",
                                    context_sensitivity_std_threshold=0.0)
    np.testing.assert_allclose(got.cti_scores, ref.cti_scores, rtol=1e-6)
    assert got.cti_idx == ref.cti_idx and len(got.cti_idx) > 1
    assert "Content-Security-Policy" in page.read_text()


def test_dataset_mode_resumes_and_reports_bad_rows(tmp_path, capsys):
    rows = [{"input_current_text": CUR, "input_context_text": CTX, "output_current_text": OUT},
            {"input_current_text": "", "input_context_text": CTX},
            {"input_current_text": "The cat", "input_context_text": CTX,
             "output_current_text": "sat on the mat."},
            {"input_current_text": "Hello", "oops": 1}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = jaxattr.load_model(CKPT)
    first = attribute_context_dataset(model, str(src), str(dst), batch_size=2,
                                      show_progress=False, max_batches=0,
                                      context_sensitivity_std_threshold=0.0)
    assert first["done"] == 0 and first["errors"] == 1      # the unknown-field row
    rc = main(["attribute-context", "-m", CKPT, "--input_file", str(src), "--output", str(dst),
               "--batch_size", "2", "--no_progress", "--context_sensitivity_std_threshold", "0"])
    assert rc == 0
    lines = [json.loads(x) for x in dst.read_text().splitlines()]
    assert sorted(x["index"] for x in lines) == [0, 1, 2, 3]          # each row exactly once
    by = {x["index"]: x for x in lines}
    assert "non-empty" in by[1]["error"] and "unknown fields" in by[3]["error"]
    assert by[0]["result"]["output_current"] == OUT and by[2]["result"]["cci_scores"]
    rc = main(["attribute-context", "-m", CKPT, "--input_file", str(src), "--output", str(dst),
               "--no_progress"])
    assert rc == 0 and len(dst.read_text().splitlines()) == 4         # nothing left to do
    assert "4 already done" in capsys.readouterr().err


def test_bad_template_is_a_clear_error(capsys):
    rc = main(["attribute-context", "-m", CKPT, "--input_current_text", CUR,
               "--input_context_text", CTX, "--input_template", "{context}"])
    assert rc == 2
    assert "no {current} placeholder" in capsys.readouterr().err
