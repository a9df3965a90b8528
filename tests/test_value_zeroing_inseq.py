"""Value zeroing against Inseq 0.7.1 on the same weights: the tiny OPT checkpoint and the record
made by ``benchmarks/inseq_side/run_inseq_value_zeroing.py`` (OPT is the decoder-only family
where Inseq's value zeroing runs under transformers 4.57; see README, "Value zeroing")."""
import os

import numpy as np
import pytest

import jaxattr

SIDE = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "inseq_side")
# Both tools take 1 − cos of nearly equal float32 states (cancellation: ~1e-7 absolute on raw
# distances of ~1e-3), so normalised scores agree to ~1e-5, not to float32 rounding.
ATOL = 2.5e-5


@pytest.fixture(scope="module")
def opt():
    return jaxattr.load_model(os.path.join(SIDE, "tiny_ckpt", "opt"))


@pytest.fixture(scope="module")
def record():
    return np.load(os.path.join(SIDE, "inseq_value_zeroing.npz"))


@pytest.mark.parametrize("name, kw", [("default", {}),
                                      ("units", {"decoder_zeroed_units_indices":
                                                 {0: [1], 2: (0, 2)}})])
def test_equals_inseq_on_the_same_weights(opt, record, name, kw):
    assert str(record["meta/units"]) == "{0: [1], 2: (0, 2)}"
    seq = opt.attribute(str(record["meta/prompt"]), str(record["meta/text"]),
                        method="value_zeroing", show_progress=False, **kw)[0]
    assert list(seq.target_ids) == list(record["meta/target_ids"])
    got, want = seq.target_attributions, record[f"vz/{name}"]    # [L, T, layers]
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), atol=ATOL)
    if name == "units":
        assert (np.nan_to_num(want[..., 1]) == 0).all()           # layer 1 not zeroed


def test_euclidean_runs_where_inseq_raises(opt, record):
    assert "expanded size" in str(record["euclidean_error"])
    seq = opt.attribute(str(record["meta/prompt"]), str(record["meta/text"]),
                        method="value_zeroing", similarity_metric="euclidean",
                        show_progress=False)[0]
    a = seq.target_attributions
    np.testing.assert_allclose(np.nansum(a, 0), 1.0, rtol=1e-5)
