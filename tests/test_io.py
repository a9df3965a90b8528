"""Save/load (readable JSON, exact float32), merging, and exports (dicts, numpy, pandas)."""
import gzip
import json

import numpy as np
import pytest

import jaxattr
from jaxattr import io as jio
from jaxattr.results import AttributionOutput, SequenceAttribution, _jsonish

from _results_helpers import NAN, gpt2_output, toy_decoder, toy_encdec, toy_output


def assert_bits_equal(a, b):
    """Equal arrays, bit for bit (NaN payloads aside), same dtype."""
    if a is None or b is None:
        assert a is None and b is None
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    assert same.all()
    assert (np.signbit(a) == np.signbit(b))[~np.isnan(a)].all()


def assert_outputs_equal(x, y):
    assert len(x) == len(y)
    for a, b in zip(x, y):
        assert a.source == b.source and a.target == b.target
        assert a.source_ids == b.source_ids and a.target_ids == b.target_ids
        assert (a.attr_pos_start, a.attr_pos_end) == (b.attr_pos_start, b.attr_pos_end)
        assert_bits_equal(a.source_attributions, b.source_attributions)
        assert_bits_equal(a.target_attributions, b.target_attributions)
        assert list(a.step_scores) == list(b.step_scores)
        for k in a.step_scores:
            assert_bits_equal(a.step_scores[k], b.step_scores[k])
    assert _jsonish(x.info) == _jsonish(y.info)


def tricky_output():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, size=(5, 3, 4), dtype=np.uint64).astype(np.uint32)
    src = bits.view(np.float32).copy()
    src[~np.isfinite(src)] = 1.0
    src[0, 0, :] = [np.float32(0.1), -0.0, np.float32(1e-45), np.float32(3.4028235e38)]
    src[0, 1, :] = [np.inf, -np.inf, NAN, np.float32(1.17549435e-38)]
    seq = SequenceAttribution(
        source=['a "quoted"\ntoken', "<script>", "▁é", "Ġ&", "\\"], target=["<pad>", "x", "y", "z"],
        source_attributions=src, target_attributions=None,
        step_scores={"probability": rng.random(3).astype(np.float32)},
        attr_pos_start=1, attr_pos_end=4, source_ids=[1, 2, 3, 4, 5], target_ids=[0, 7, 8, 9])
    info = {"model": "toy/model", "method": "integrated_gradients", "attributed_fn": "probability",
            "method_kwargs": {"n_steps": 8, "method": "gausslegendre"}, "step_scores": ("probability",),
            "baseline": np.zeros((2,), np.float32), "jaxattr_version": jaxattr.__version__}
    return AttributionOutput([seq, toy_encdec(), toy_decoder()], info)


def test_round_trip_is_exact(tmp_path):
    out = tricky_output()
    path = out.save(tmp_path / "out.json") or tmp_path / "out.json"
    back = jaxattr.load(path)
    assert_outputs_equal(out, back)
    assert back[0].source_attributions.dtype == np.float32
    assert back.info["jaxattr_version"] == jaxattr.__version__


def test_round_trip_of_a_real_output(tmp_path):
    out = gpt2_output()
    out.save(tmp_path / "gpt2.json")
    back = jaxattr.load(tmp_path / "gpt2.json")
    assert_outputs_equal(out, back)
    assert back.info["method"] == "saliency" and back.info["step_scores"] == ["probability", "logprob"]
    # aggregated results round-trip as well, with the history of what was done to them
    merged = out.merge_words().aggregate()
    merged.save(tmp_path / "merged.json")
    assert_outputs_equal(merged, jaxattr.load(tmp_path / "merged.json"))


def test_file_is_readable_json(tmp_path):
    out = toy_output()
    out.save(tmp_path / "o.json")
    text = (tmp_path / "o.json").read_text(encoding="utf-8")
    doc = json.loads(text)                                  # plain, standard JSON
    assert doc["format"] == "jaxattr.attributions" and doc["format_version"] == 1
    assert doc["info"]["model"] == "toy"
    seq = doc["sequence_attributions"][1]
    assert seq["target"] == ["Hi", "Ġthere", "Ġyou", "!"]   # tokens as text, not escaped
    assert seq["target_attributions"]["data"] == [[0.5, 0.25], [-0.25, 0.125], [None, 0.5],
                                                  [None, None]]
    assert "[0.5, 0.25]" in text                             # one row per line, short numbers
    assert "0.4000000059604645" not in text and "0.4," in text
    assert "NaN" not in text and "py/object" not in text


def test_gzip_and_float16(tmp_path):
    out = tricky_output()
    out.save(tmp_path / "o.json.gz")
    raw = (tmp_path / "o.json.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(raw))["format"] == "jaxattr.attributions"
    assert_outputs_equal(out, jaxattr.load(tmp_path / "o.json.gz"))
    out.save(tmp_path / "plain.json", compress=True)
    assert (tmp_path / "plain.json").read_bytes()[:2] == b"\x1f\x8b"

    small = toy_output()
    small[0].source_attributions = small[0].source_attributions + np.float32(1 / 3)
    small.save(tmp_path / "half.json", dtype="float16")
    small.save(tmp_path / "full.json")
    half = jaxattr.load(tmp_path / "half.json")
    want = small[0].source_attributions.astype(np.float16).astype(np.float32)
    assert_bits_equal(half[0].source_attributions, want)
    assert (tmp_path / "half.json").stat().st_size < (tmp_path / "full.json").stat().st_size
    with pytest.raises(ValueError, match="dtype"):
        small.save(tmp_path / "bad.json", dtype="int8")


def test_overwrite_protection(tmp_path):
    toy_output().save(tmp_path / "o.json")
    with pytest.raises(FileExistsError):
        toy_output().save(tmp_path / "o.json", overwrite=False)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"{not json", "not valid JSON"),
    (b'{"format": "something-else"}', "not a jaxattr results file"),
    (b'{"format": "jaxattr.attributions", "format_version": 99, "sequence_attributions": []}',
     "format_version 99"),
    (b'{"format": "jaxattr.attributions", "format_version": 1}', "sequence_attributions"),
])
def test_malformed_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(jio.ResultFileError, match=message) as err:
        jaxattr.load(path)
    assert str(path) in str(err.value)


def test_truncated_files_give_clear_errors(tmp_path):
    toy_output().save(tmp_path / "o.json")
    text = (tmp_path / "o.json").read_bytes()
    (tmp_path / "cut.json").write_bytes(text[: len(text) // 2])
    with pytest.raises(jio.ResultFileError, match="truncated"):
        jaxattr.load(tmp_path / "cut.json")
    toy_output().save(tmp_path / "o.json.gz")
    gz = (tmp_path / "o.json.gz").read_bytes()
    (tmp_path / "cut.json.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(jio.ResultFileError, match="truncated gzip"):
        jaxattr.load(tmp_path / "cut.json.gz")
    with pytest.raises(FileNotFoundError, match="No results file"):
        jaxattr.load(tmp_path / "missing.json")


def test_inconsistent_contents_are_rejected(tmp_path):
    doc = json.loads(jio.dumps(toy_output()))
    seq = doc["sequence_attributions"][1]
    seq["target_attributions"]["shape"] = [4, 3]
    with pytest.raises(jio.ResultFileError, match=r"sequence_attributions\[1\].target_attributions"):
        jio.loads(json.dumps(doc))
    seq["target_attributions"]["shape"] = [4, 2]
    seq["target_attributions"]["data"][0] = [0.5]                       # ragged
    with pytest.raises(jio.ResultFileError, match="rectangular"):
        jio.loads(json.dumps(doc))
    doc = json.loads(jio.dumps(toy_output()))
    doc["sequence_attributions"][1]["step_scores"]["probability"]["data"] = [0.5]
    doc["sequence_attributions"][1]["step_scores"]["probability"]["shape"] = [1]
    with pytest.raises(jio.ResultFileError, match="1 values for 2 steps"):
        jio.loads(json.dumps(doc))
    doc = json.loads(jio.dumps(toy_output()))
    doc["sequence_attributions"][0]["attr_pos_end"] = 9
    with pytest.raises(jio.ResultFileError, match="do not fit"):
        jio.loads(json.dumps(doc))
    doc = json.loads(jio.dumps(toy_output()))
    del doc["sequence_attributions"][0]["target"]
    with pytest.raises(jio.ResultFileError, match="missing key"):
        jio.loads(json.dumps(doc))


def test_merging_outputs_of_several_calls(tmp_path):
    a, b = toy_output(), toy_output()
    b.info["input_texts"] = ["other"]
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    both = jaxattr.load([tmp_path / "a.json", tmp_path / "b.json"])
    assert len(both) == 4
    assert both[2].target == a[0].target and both.info["model"] == "toy"
    assert "input_texts" not in both.info and len(both.info["merged_infos"]) == 2
    assert len(a + b) == 4
    c = toy_output()
    c.info["method"] = "integrated_gradients"
    with pytest.raises(ValueError, match="info\\['method'\\]"):
        AttributionOutput.merge([a, c])


def test_exports_numpy_and_scores_dicts():
    seq = toy_decoder()
    d = seq.to_dict()
    assert d["target"] == seq.target and d["attr_pos_start"] == 2
    d["target_attributions"][0, 0] = 99.0                               # a copy
    assert seq.target_attributions[0, 0] == 0.5
    scores = seq.get_scores_dict()
    assert list(scores["target_attributions"]) == [(2, "Ġyou"), (3, "!")]
    # normalised by default aggregation? no: 2-D views are exported as they are
    assert scores["target_attributions"][(3, "!")] == {(0, "Hi"): 0.25, (1, "Ġthere"): 0.125,
                                                       (2, "Ġyou"): 0.5}
    assert scores["target_attributions"][(2, "Ġyou")] == {(0, "Hi"): 0.5, (1, "Ġthere"): -0.25}
    assert scores["step_scores"][(3, "!")] == {"probability": 0.5}
    many = toy_output().get_scores_dicts()
    assert len(many) == 2
    src = many[0]["source_attributions"][(1, "▁The")]
    assert set(src) == {(0, "▁Le"), (1, "▁ch"), (2, "at"), (3, "</s>")}
    assert sum(src.values()) + sum(many[0]["target_attributions"][(1, "▁The")].values()) \
        == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hidden axis"):
        toy_encdec().get_scores_dict(aggregate=False)


def test_tidy_dataframe():
    pd = pytest.importorskip("pandas")
    df = toy_output().to_dataframe()
    assert list(df.columns) == ["sequence", "kind", "row", "row_token", "step", "position",
                                "generated_token", "value"]
    dec = df[df.sequence == 1]
    cells = dec[dec.kind == "target"]
    assert len(cells) == 5                                              # NaN cells left out
    row = cells[(cells.row_token == "Ġthere") & (cells.generated_token == "!")]
    assert row.value.item() == 0.125 and row.position.item() == 3
    assert dec[dec.kind == "step_score"].value.tolist() == [0.25, 0.5]
    enc = df[(df.sequence == 0) & (df.kind != "step_score")]
    totals = enc.groupby("step").value.apply(lambda v: v.abs().sum())
    np.testing.assert_allclose(totals.to_numpy(), 1.0, rtol=1e-6)
    assert isinstance(df, pd.DataFrame)
