"""The evaluation report and the ``jaxattr evaluate`` command on the bundled toy-recall model."""
import json

import numpy as np
import pytest

import jaxattr
from jaxattr import evaluate
from jaxattr.cli import main


@pytest.fixture(scope="module")
def recall():
    return jaxattr.load_model("toy-recall")


def test_bootstrap_ci_hand_case():
    mean, lo, hi = evaluate.bootstrap_ci([1.0, 1.0, 1.0, np.nan])
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)
    mean, lo, hi = evaluate.bootstrap_ci(np.arange(100.0), n_boot=500)
    assert mean == 49.5 and lo < 49.5 < hi and hi - lo < 25


def test_random_attribution_keeps_nan_pattern(recall):
    data = evaluate.zoo_dataset("toy-recall", n=3)
    out = recall.attribute(list(data.inputs), list(data.generated), show_progress=False)
    rnd = evaluate.random_attribution(out, seed=1)
    for a, b in zip(out.aggregate(), rnd):
        assert np.array_equal(np.isnan(a.target_attributions), np.isnan(b.target_attributions))
        assert not np.allclose(np.nan_to_num(a.target_attributions),
                               np.nan_to_num(b.target_attributions))
    assert rnd.info["method"] == "random"


def test_report_saliency_beats_random(recall):
    data = evaluate.zoo_dataset("toy-recall", n=24)
    rep = evaluate.evaluate_methods(recall, data, methods=("saliency",), n_boot=500)
    assert rep.methods == ["saliency", "random"]
    assert {"comprehensiveness", "sufficiency", "top1", "mean_rank", "auprc",
            "token_f1"} <= set(rep.metrics)
    assert rep.beats_random("saliency", "comprehensiveness")
    table = rep.to_table(markdown=True)
    assert table.count("\n| ") == 3 and "✓" in table


def test_cli_evaluate_file_dataset(tmp_path, capsys):
    rows = evaluate.zoo_dataset("toy-recall", n=6)
    path = tmp_path / "data.jsonl"
    with open(path, "w") as f:
        for x, g, c in zip(rows.inputs, rows.generated, rows.ground_truth):
            f.write(json.dumps({"prompt": x, "full": g, "cue": c}) + "\n")
    code = main(["evaluate", "--model", "toy-recall", "--input-file", str(path),
                 "--input-field", "prompt", "--generated-field", "full", "--cue-field", "cue",
                 "--methods", "saliency", "--n-boot", "100", "--bins", "1,2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "saliency" in out and "random" in out and "top1" in out


def test_cli_evaluate_errors(capsys):
    assert main(["evaluate", "--model", "toy-recall", "--dataset", "nope"]) == 2
    assert "toy-recall" in capsys.readouterr().err
