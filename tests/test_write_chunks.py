"""The resumable writing loop shared by attribute-dataset and attribute-context-dataset."""
import io
import json

import pytest

from jaxattr.dataset import completed_rows, write_chunks


def test_write_chunks_appends_errors_then_chunks_and_counts(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"index": 0, "result": {}}\n', encoding="utf-8")   # an earlier run's row
    calls = []

    def run(chunk):
        calls.append([r["index"] for r in chunk])
        return [{"index": r["index"], "result": {"x": r["index"]}} if r["index"] != 4
                else {"index": 4, "error": "bad row"} for r in chunk]

    log = io.StringIO()
    counts = write_chunks(str(out), [{"index": 1, "error": "empty"}],
                          [[{"index": 2}, {"index": 3}], [{"index": 4}, {"index": 5}]], run,
                          first=[{"index": 2, "result": {}}, {"index": 3, "result": {}}],
                          total=5, desc="t", show_progress=False, log=log)
    assert calls == [[4, 5]]                 # the precomputed first chunk is not run again
    assert counts == {"done": 3, "errors": 2}
    lines = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    assert [l["index"] for l in lines] == [0, 1, 2, 3, 4, 5]
    assert lines[1] == {"index": 1, "error": "empty"}
    assert "row 1: skipped: empty" in log.getvalue()
    assert completed_rows(str(out)) == {0, 1, 2, 3, 4, 5}


def test_write_chunks_keeps_finished_chunks_when_a_later_one_fails(tmp_path):
    out = tmp_path / "out.jsonl"

    def run(chunk):
        if chunk[0]["index"] == 2:
            raise RuntimeError("killed")
        return [{"index": r["index"], "result": {}} for r in chunk]

    with pytest.raises(RuntimeError, match="killed"):
        write_chunks(str(out), [], [[{"index": 0}, {"index": 1}], [{"index": 2}]], run,
                     total=3, desc="t", show_progress=False, log=io.StringIO())
    assert completed_rows(str(out)) == {0, 1}
