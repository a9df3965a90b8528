"""Bad input gives an error that names the argument and the fix (issue 12, item 13)."""
import gzip
import json

import numpy as np
import pytest

import jaxattr
from jaxattr import InputError, ResultFileError

from conftest import FULL, PROMPTS


def test_generation_past_the_models_positions(gpt2):
    n_pos = gpt2.max_positions
    prompt = "cat"
    while len(gpt2.tokenizer(prompt + " cat")["input_ids"]) <= n_pos - 3:
        prompt += " cat"
    n = len(gpt2.tokenizer(prompt)["input_ids"])
    assert n <= n_pos < n + 10  # fits alone, not with 10 new tokens
    with pytest.raises(InputError, match="max_new_tokens=10 exceeds.*Lower max_new_tokens"):
        gpt2.attribute(prompt, generation_args={"max_new_tokens": 10}, show_progress=False)


def test_baselines_of_the_wrong_shape_or_kind(gpt2):
    with pytest.raises(ValueError, match=r"baseline of shape \(5,\) does not broadcast.*"
                                         r"\[hidden="):
        gpt2.attribute(PROMPTS[1], FULL[1], method="integrated_gradients", n_steps=2,
                       baseline=np.zeros(5), show_progress=False)
    with pytest.raises(InputError, match="numeric array"):
        gpt2.attribute(PROMPTS[1], FULL[1], method="integrated_gradients", n_steps=2,
                       baseline={"a": object()}, show_progress=False)


@pytest.mark.parametrize("bs", [-1, 1.5, 0])
def test_batch_size(gpt2, bs):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        gpt2.attribute(PROMPTS[1], FULL[1], batch_size=bs, show_progress=False)


def test_texts_of_the_wrong_type(gpt2):
    with pytest.raises(InputError, match="input_texts` must be a text or a list of texts, got "
                                         "int"):
        gpt2.attribute(5, FULL[1])
    with pytest.raises(InputError, match=r"generated_texts` .* got dict \(a dict: pass "):
        gpt2.attribute([PROMPTS[1]], {"a": FULL[1]})


def test_step_scores_given_as_one_name(gpt2):
    seq = gpt2.attribute(PROMPTS[1], FULL[1], step_scores="probability", show_progress=False)[0]
    assert list(seq.step_scores) == ["probability"]
    assert ((0 < seq.step_scores["probability"]) & (seq.step_scores["probability"] < 1)).all()


def test_merge_spans_and_to_text_arguments():
    from _results_helpers import toy_output
    out = toy_output()
    with pytest.raises(ValueError, match=r"target_spans must be a list of \(start, end\) pairs"):
        out.merge_spans(target_spans=[1, 4])
    with pytest.raises(ValueError, match="digits must be an integer >= 0, got -1"):
        out.to_text(digits=-1, color=False)


def test_load_errors_name_the_file(tmp_path):
    from _results_helpers import toy_output
    with pytest.raises(TypeError, match="file path"):
        jaxattr.load(None)
    good = tmp_path / "good.json"
    toy_output().save(good)
    # gzip header intact, deflate stream corrupt: zlib.error inside gzip
    data = bytearray(gzip.compress(good.read_bytes()))
    data[12:40] = b"\xff" * 28
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ResultFileError, match="bad.json.gz"):
        jaxattr.load(bad)
    doc = json.loads(good.read_text())
    doc["info"]["extra"] = {"__array__": True, "dtype": "int64", "shape": [2]}  # no data
    doc["sequence_attributions"][0]["step_scores"]["probability"]["dtype"] = ["float32"]
    for broken in ({**doc, "sequence_attributions": []}, doc):
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ResultFileError, match="broken.json"):
            jaxattr.load(path)
