"""attribute-dataset keeps data safe: run-level errors write nothing, another run's output is
never resumed, every bad row (undecodable bytes included) is its own error line."""
import json

import pytest

import jaxattr
from jaxattr import cli
from jaxattr.dataset import RunMismatchError, attribute_dataset, read_rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [{"p": "The cat", "g": "The cat sat on the mat"}, {"p": "Kim has", "g": "Kim has a red"}]


def _run(model, src, out, **kw):
    kw.setdefault("input_field", "p")
    kw.setdefault("generated_field", "g")
    return attribute_dataset(model, src, str(out), show_progress=False, **kw)


@pytest.mark.parametrize("bad", [dict(method="saliancy"), dict(attributed_fn="prob"),
                                 dict(method="integrated_gradients", n_steps=0)])
def test_option_error_is_the_runs_error_and_writes_nothing(gpt2, tmp_path, bad):
    src, out = _jsonl(tmp_path / "in.jsonl", ROWS + [{"nope": 1}]), tmp_path / "out.jsonl"
    with pytest.raises((ValueError, TypeError)):
        _run(gpt2, src, out, **bad)
    assert not out.exists() or out.read_text() == ""
    # the corrected run then does every row (none marked done by the failed one)
    counts = _run(gpt2, src, out)
    assert counts["done"] == 2 and counts["errors"] == 1 and counts["skipped"] == 0


def test_cli_option_error_exits_non_zero(gpt2, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(jaxattr, "load_model", lambda *a, **k: gpt2)
    src, out = _jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    rc = cli.main(["attribute-dataset", "--input-file", src, "--input-field", "p",
                   "--output", str(out), "--method", "saliancy", "--no-progress"])
    assert rc != 0 and "saliancy" in capsys.readouterr().err
    assert not out.exists() or out.read_text() == ""


def test_resuming_another_runs_output_is_refused(gpt2, tmp_path):
    src, out = _jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    _run(gpt2, src, out, max_batches=1, batch_size=1)
    before = out.read_text()
    with pytest.raises(RunMismatchError, match="options.*delete"):
        _run(gpt2, src, out, method="input_x_gradient")
    other = _jsonl(tmp_path / "other.jsonl", ROWS[::-1])
    with pytest.raises(RunMismatchError, match="input_sha256"):
        _run(gpt2, other, out)
    assert out.read_text() == before
    ident = json.loads((tmp_path / "out.jsonl.run.json").read_text())
    assert ident["options"] == {} and len(ident["input_sha256"]) == 64
    assert _run(gpt2, src, out)["skipped"] == 1  # the same run resumes
    # an output without its identity file is not resumed either
    (tmp_path / "out.jsonl.run.json").unlink()
    with pytest.raises(RunMismatchError, match="no .*run.json"):
        _run(gpt2, src, out)


@pytest.mark.parametrize("bs", [0, -1, 1.5])
def test_batch_size_must_be_a_positive_integer(gpt2, tmp_path, bs):
    src, out = _jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="batch_size"):
        _run(gpt2, src, out, batch_size=bs)
    assert not out.exists()


def test_a_non_utf8_row_is_that_rows_error(tmp_path):
    for ext, head, enc in ((".jsonl", b"", lambda t: json.dumps({"p": t}).encode()),
                           (".csv", b"p\n", lambda t: t.encode()),
                           (".txt", b"", lambda t: t.encode())):
        path = tmp_path / f"in{ext}"
        path.write_bytes(head + enc("The cat") + b"\n" + enc("caf") + b"\xe9 bad\n"
                         + enc("Kim has") + b"\n")
        rows = list(read_rows(str(path), input_field="p"))
        assert [r.get("input") for r in rows] == ["The cat", None, "Kim has"], ext
        assert "not valid UTF-8" in rows[1]["error"] and "0xe9" in rows[1]["error"]
        assert rows[1]["index"] == 1


def test_input_field_missing_from_the_file_is_a_run_error(tmp_path):
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("src,tgt\nThe cat,The cat sat\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['text'\].*\['src', 'tgt'\]"):
        list(read_rows(str(csv_path), input_field="text"))
    with pytest.raises(ValueError, match="no row has the field 'text'"):
        list(read_rows(_jsonl(tmp_path / "in.jsonl", ROWS), input_field="text"))


def test_cli_input_field_missing_exits_non_zero_and_writes_nothing(gpt2, tmp_path, capsys,
                                                                    monkeypatch):
    """Item 12 end to end: the run's error (exit code 2), not one error line per row."""
    monkeypatch.setattr(jaxattr, "load_model", lambda *a, **k: gpt2)
    csv_path, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    csv_path.write_text("src,tgt\nThe cat,The cat sat\nKim,Kim has a\n")
    rc = cli.main(["attribute-dataset", "--input-file", str(csv_path), "--input-field", "text",
                   "--output", str(out), "--no-progress"])
    assert rc != 0 and "no column(s) ['text']" in capsys.readouterr().err
    assert not out.exists()
