"""The command line: attribute, attribute-dataset (incremental, resumable, bad rows reported)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import jaxattr
from jaxattr import cli
from jaxattr.dataset import completed_rows
from jaxattr.testing import make_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-gpt2")
    model, tok = make_model("gpt2")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_attribute_prints_heatmap_and_writes_reports(model_dir, tmp_path, capsys):
    js, html = tmp_path / "out.json", tmp_path / "out.html"
    rc = cli.main(["attribute", "--model", model_dir, "--input", "The cat sat",
                   "--generated", "The cat sat on the mat", "--json", str(js),
                   "--html", str(html), "--no-color"])
    assert rc == 0
    text = capsys.readouterr().out
    tok = jaxattr.load_model(model_dir).tokenizer
    tokens = tok.tokenize("The cat sat on the mat")
    assert "probability" in text and "Sequence 0" in text
    loaded = jaxattr.load(str(js))
    assert loaded[0].target == tokens
    assert "<html" in html.read_text().lower()


def test_attribute_reports_bad_input_clearly(model_dir, capsys):
    rc = cli.main(["attribute", "--model", model_dir, "--input", "The cat",
                   "--generated", "A dog"])
    assert rc == 2
    assert "does not start with its prompt" in capsys.readouterr().err


def _write_rows(path):
    rows = [{"text": "The cat", "full": "The cat sat on the mat"},
            {"text": "Kim has", "full": "Kim has a red ball"},
            {"nope": 1},                                             # missing field
            {"text": "Hello", "full": "Goodbye world"},              # not prompt + continuation
            {"text": "The dog", "full": "The dog slept near the door"},
            {"text": "A small", "full": "A small model can"},
            {"text": "Numbers", "full": "Numbers like 1, 2"}]
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write("{not json\n")                                       # malformed line
    return len(rows) + 1


def _indices(path):
    with open(path) as f:
        return [json.loads(line)["index"] for line in f]


def test_dataset_resumes_after_interruption(model_dir, tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    n = _write_rows(src)
    base = ["attribute-dataset", "--model", model_dir, "--input-file", str(src),
            "--input-field", "text", "--generated-field", "full", "--output", str(out),
            "--batch-size", "2", "--no-progress"]
    assert cli.main(base + ["--max-batches", "1"]) == 0  # stops after one batch
    first = _indices(out)
    assert 0 < len(first) < n
    err = capsys.readouterr().err
    assert "row 2: skipped" in err and "row 3: skipped" in err and "row 7: skipped" in err
    with open(out, "a") as f:
        f.write('{"index": 5, "resu')  # a write cut by a kill
    assert cli.main(base) == 0
    idx = _indices(out)
    assert sorted(idx) == list(range(n))  # every row exactly once
    recs = {json.loads(line)["index"]: json.loads(line) for line in open(out)}
    assert {i for i, r in recs.items() if "error" in r} == {2, 3, 7}
    # each result line is a one-sequence jaxattr results document
    one = jaxattr.io.loads(json.dumps(recs[0]["result"]))
    assert one[0].target == jaxattr.load_model(model_dir).tokenizer.tokenize(
        "The cat sat on the mat")
    assert cli.main(base) == 0 and _indices(out) == idx  # nothing left to do


@pytest.mark.slow
def test_dataset_survives_a_real_kill(model_dir, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"p": f"The cat {i}", "g": f"The cat {i} sat on the mat"} for i in range(24)]
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    cmd = [sys.executable, "-m", "jaxattr.cli", "attribute-dataset", "--model", model_dir,
           "--input-file", str(src), "--input-field", "p", "--generated-field", "g",
           "--output", str(out), "--batch-size", "2", "--no-progress",
           # enough work per batch (~0.1-1 s) that the kill lands mid-run even on a busy machine
           "--method", "integrated_gradients", "--n-steps", "48"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # read only: the child is still writing the file (repair=True would truncate it)
        if out.exists() and len(completed_rows(str(out), repair=False)) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    # The kill landed mid-run: the child died by it, after the first row and before the last.
    assert proc.returncode == -signal.SIGKILL
    at_kill = completed_rows(str(out), repair=False)
    assert 2 <= len(at_kill) < len(lines), len(at_kill)
    assert subprocess.run(cmd, stderr=subprocess.DEVNULL).returncode == 0
    assert sorted(_indices(out)) == list(range(len(lines)))


def test_txt_and_csv_inputs(model_dir, tmp_path):
    csv_path, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    csv_path.write_text("src,tgt\nThe cat,The cat sat\nKim,Kim has a\n")
    assert cli.main(["attribute-dataset", "--model", model_dir, "--input-file", str(csv_path),
                     "--input-field", "src", "--generated-field", "tgt", "--output", str(out),
                     "--no-progress"]) == 0
    assert sorted(_indices(out)) == [0, 1]


def test_every_command_has_help(capsys):
    for cmd in ([], ["attribute"], ["attribute-dataset"]):
        with pytest.raises(SystemExit) as e:
            cli.main(cmd + ["--help"])
        assert e.value.code == 0
    assert "attribute-dataset" in capsys.readouterr().out


def test_readme_main_command_runs_offline_and_converges(tmp_path, monkeypatch, capsys):
    """The README's one-line first command, verbatim: bundled model, heatmap, HTML report, and
    integrated gradients converged (no completeness warning)."""
    import shlex
    import warnings

    readme = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")).read()
    line = next(x for x in readme.splitlines() if x.startswith("jaxattr attribute --input"))
    argv = shlex.split(line)[1:]
    assert "--model" not in argv     # the bundled default model
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert cli.main(argv + ["--no-color"]) == 0
    text = capsys.readouterr().out
    assert "deltas" in text and "blue" in text
    assert "<html" in (tmp_path / "report.html").read_text().lower()
