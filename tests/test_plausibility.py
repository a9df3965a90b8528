"""Plausibility metrics on hand-computed cases, against scikit-learn's average precision."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from jaxattr.evaluate import plausibility, step_plausibility
from jaxattr.results import AttributionOutput, SequenceAttribution


def test_step_metrics_hand_computed():
    s = np.array([0.1, 0.5, 0.3, 0.2])
    one = step_plausibility(s, np.array([0, 0, 1, 0], bool))
    # ranking 1, 2, 3, 0: the cue is second; precision at the cue 1/2; top-1 {1} misses it
    assert one == {"top1": 0.0, "mean_rank": 2.0, "auprc": 0.5, "token_f1": 0.0}
    two = step_plausibility(s, np.array([1, 0, 1, 0], bool))
    # hits at ranks 2 and 4: AP = (1/2 + 2/4) / 2; top-2 {1, 2} holds one of two cues
    assert two == {"top1": 0.0, "mean_rank": 2.0, "auprc": 0.5, "token_f1": 0.5}
    top = step_plausibility(s, np.array([0, 1, 0, 0], bool))
    assert top == {"top1": 1.0, "mean_rank": 1.0, "auprc": 1.0, "token_f1": 1.0}


def test_auprc_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.normal(size=12)
        cues = rng.random(12) < 0.3
        cues[rng.integers(12)] = True
        ours = step_plausibility(s, cues)["auprc"]
        assert ours == pytest.approx(average_precision_score(cues, s), abs=1e-12)


def _out():
    # decoder-only view: 4 prompt tokens ("<s>" first), 2 generated; NaN above the prefix
    col = np.array([[9.0, 9.0], [0.1, 0.2], [0.7, 0.1], [0.2, 0.6], [np.nan, 0.3],
                    [np.nan, np.nan]], np.float32)
    seq = SequenceAttribution(source=None, target=["<s>", "a", "b", "c", "d", "e"],
                              source_attributions=None, target_attributions=col,
                              step_scores={}, attr_pos_start=4, attr_pos_end=6,
                              target_ids=[0, 1, 2, 3, 4, 5])
    return AttributionOutput([seq, seq], {"method": "hand"})


def test_plausibility_over_an_output():
    res = plausibility(_out(), [[2], {1: [4]}], exclude_tokens=["<s>"])
    np.testing.assert_array_equal(res.values["top1"], [[1.0, 0.0], [np.nan, 0.0]])
    # step 1 scores a .2, b .1, c .6, d .3: b (sequence 0's cue) is fourth, d second
    np.testing.assert_array_equal(res.values["mean_rank"], [[1.0, 4.0], [np.nan, 2.0]])
    np.testing.assert_array_equal(res.step_mask, [[True, True], [False, True]])
    per = res.per_sequence()
    np.testing.assert_allclose(per["mean_rank"], [2.5, 2.0])
    assert "mean_rank ↓" in res.to_table()


def test_plausibility_errors():
    with pytest.raises(ValueError, match="one per sequence"):
        plausibility(_out(), [[2]])
    with pytest.raises(ValueError, match="not ranked"):
        plausibility(_out(), [[0], None], exclude_tokens=["<s>"])
    with pytest.raises(ValueError, match="not ranked"):
        plausibility(_out(), [{0: [4]}, None])
