"""The shared save / load of result files (jaxattr.npz_store) and the files written before it."""
from pathlib import Path

import numpy as np
import pytest

import jaxattr
from jaxattr import io as jio
from jaxattr.evaluate import load_faithfulness
from jaxattr.interventions import load_result
from jaxattr.interventions.results import MediationResult, PatchingResult
from jaxattr.npz_store import ResultFileError, atomic_write, check_header, load_npz, save_npz
from jaxattr.probing import result as probe_result

FIXTURES = Path(__file__).parent / "data" / "result_files"
FMT = dict(format="test.format", version=2, what="test")


def _arrays():
    return {
        "f16": np.array([1.5, -2.0], np.float16),
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.array([np.nan, np.inf, -0.0, 1e-300]),
        "i8": np.array([-128, 127], np.int8),
        "u32": np.array([[4_000_000_000]], np.uint32),
        "i64": np.array(7, np.int64),                      # 0-d
        "bool": np.array([True, False, True]),
        "str": np.array(["a", "ünï", ""]),
        "empty": np.zeros((0, 3), np.float32),
        "empty_int": np.array([], np.int32),
        "group/member": np.ones((1, 0, 2)),                  # "/" in a name, empty middle axis
    }


def test_round_trip_keeps_every_dtype_shape_and_value_and_nested_json(tmp_path):
    header = {"format": "test.format", "format_version": 2,
              "nested": {"a": [1, 2.5, None, "x", {"b": [True, False]}], "ü": {}}, "empty": []}
    path = save_npz(tmp_path / "r.npz", _arrays(), header)
    assert path == tmp_path / "r.npz"
    back_header, back = load_npz(path, **FMT)
    assert back_header == header
    assert set(back) == set(_arrays())
    for k, a in _arrays().items():
        assert back[k].dtype == a.dtype, k
        assert back[k].shape == a.shape, k
        np.testing.assert_array_equal(back[k], a)
    assert np.signbit(back["f64"][2])                      # -0.0 survives bit for bit


def test_header_key_is_configurable_and_reserved(tmp_path):
    save_npz(tmp_path / "h.npz", {"x": np.ones(2)}, {"format": "test.format"},
             header_key="header")
    header, arrays = load_npz(tmp_path / "h.npz", header_key="header", **FMT)
    assert header == {"format": "test.format"} and list(arrays) == ["x"]
    with pytest.raises(ResultFileError, match="h.npz.*no '__header__' header"):
        load_npz(tmp_path / "h.npz", **FMT)
    with pytest.raises(ValueError, match="reserved"):
        save_npz(tmp_path / "r.npz", {"__header__": np.ones(1)}, {})


def test_object_arrays_are_refused_on_save_and_pickles_on_load(tmp_path):
    with pytest.raises(ValueError, match="'o'.*pickle"):
        save_npz(tmp_path / "o.npz", {"o": np.array([{"a": 1}], dtype=object)}, {})
    assert not list(tmp_path.iterdir())
    with open(tmp_path / "p.npz", "wb") as fh:             # written by hand, with a pickle
        np.savez(fh, __header__=np.array('{"format": "test.format"}'),
                 o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ResultFileError, match="p.npz"):
        load_npz(tmp_path / "p.npz", **FMT)


@pytest.mark.parametrize("cut", [0, 10, 100, -30])
def test_a_truncated_file_raises_result_file_error_naming_it(tmp_path, cut):
    data = save_npz(tmp_path / "ok.npz", _arrays(), {"format": "test.format"}).read_bytes()
    bad = tmp_path / "cut_file.npz"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(ResultFileError, match="cut_file.npz"):
        load_npz(bad, **FMT)


def test_garbage_and_bad_headers_raise_result_file_error_naming_the_file(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ResultFileError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz", **FMT)
    with open(tmp_path / "nojson.npz", "wb") as fh:
        np.savez(fh, __header__=np.array("{not json"))
    with pytest.raises(ResultFileError, match="nojson.npz.*not JSON"):
        load_npz(tmp_path / "nojson.npz", **FMT)
    with open(tmp_path / "list.npz", "wb") as fh:
        np.savez(fh, __header__=np.array("[1, 2]"))
    with pytest.raises(ResultFileError, match="list.npz.*not a JSON object"):
        load_npz(tmp_path / "list.npz", **FMT)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz", **FMT)


def test_wrong_format_name_and_newer_version_are_clear_errors(tmp_path):
    save_npz(tmp_path / "other.npz", {}, {"format": "jaxattr.probing", "format_version": 1})
    with pytest.raises(ResultFileError,
                       match=r"other.npz: holds 'jaxattr.probing', not 'test.format'"):
        load_npz(tmp_path / "other.npz", **FMT)
    save_npz(tmp_path / "new.npz", {}, {"format": "test.format", "format_version": 3})
    with pytest.raises(ResultFileError, match=r"new.npz: format_version 3 is newer.*\(2\); "
                                              r"upgrade jaxattr"):
        load_npz(tmp_path / "new.npz", **FMT)
    # no version counts as version 0: readable
    assert check_header({"format": "f"}, path="x", format="f", version=1, what="t") == \
        {"format": "f"}


def test_atomic_write_leaves_no_tmp_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")

    def fail(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]
    atomic_write(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new"
    atomic_write(target, b"bytes", fsync=False)
    assert target.read_bytes() == b"bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]


def test_a_failing_result_save_leaves_no_tmp(tmp_path):
    res = PatchingResult(scores=np.zeros((1, 1, 1), np.float32), clean=np.zeros(1),
                         corrupted=np.zeros(1), sites=("s",), positions=(0,),
                         clean_tokens=(("a",),), corrupted_tokens=(("b",),),
                         info={"bad": object()})               # not JSON-serialisable
    with pytest.raises(TypeError):
        res.save(tmp_path / "p.npz")
    assert list(tmp_path.iterdir()) == []


def test_one_result_file_error_class_everywhere():
    assert jaxattr.ResultFileError is jio.ResultFileError is ResultFileError
    assert issubclass(ResultFileError, ValueError)


# ------------------------------------------------------------- files written before the refactor
# tests/data/result_files/*_v1.* were written by make_v1_fixtures.py with the save code of main at
# e440ed4, before jaxattr.npz_store existed; the expected values below are the ones that script
# passed in, typed out by hand.

def test_pre_refactor_patching_file_loads():
    r = load_result(FIXTURES / "patching_v1.npz")
    assert isinstance(r, PatchingResult)
    assert r.scores.dtype == np.float32
    np.testing.assert_array_equal(r.scores, np.arange(6).reshape(1, 2, 3))
    np.testing.assert_array_equal(r.clean, [1.5])
    np.testing.assert_array_equal(r.corrupted, [0.25])
    assert r.sites == ("a.0", "a.1") and r.positions == (0, 1, 2)
    assert r.clean_tokens == (("x", "y", "z"),) and r.corrupted_tokens == (("x", "w", "z"),)
    assert r.info == {"method": "exact", "nested": {"k": [1, 2.5, None, "s"]}}


def test_pre_refactor_mediation_file_loads():
    r = load_result(FIXTURES / "mediation_v1.npz")
    assert isinstance(r, MediationResult)
    np.testing.assert_array_equal(r.total_effect, [0.5, -0.25])
    np.testing.assert_array_equal(r.direct_effect, np.zeros((2, 1, 3)))
    np.testing.assert_array_equal(r.indirect_effect, np.ones((2, 1, 3)))
    assert r.mediator == "heads" and r.info == {"model": "tiny"}
    assert r.layers == ("decoder.blocks.0.head_out",) and r.response is None


def test_pre_refactor_faithfulness_file_loads():
    r = load_faithfulness(FIXTURES / "faithfulness_v1.npz")
    np.testing.assert_array_equal(r.values["comprehensiveness"], [[0.5, np.nan]])
    np.testing.assert_array_equal(r.bin_values["aopc"], np.arange(6.0).reshape(1, 2, 3))
    np.testing.assert_array_equal(r.curves["deletion"], np.ones((1, 2, 5)))
    np.testing.assert_array_equal(r.curve_x, np.linspace(0, 1, 10).reshape(1, 2, 5))
    np.testing.assert_array_equal(r.step_mask, [[True, False]])
    assert r.info == {"method": "saliency", "bins": [0.1, 0.5]}


def test_pre_refactor_probe_file_loads():
    r = probe_result.load(FIXTURES / "probe_v1.json")
    np.testing.assert_array_equal(r.accuracy, [0.5, 0.75])
    np.testing.assert_array_equal(r.ci_low, [0.25, np.nan])
    assert r.control_accuracy is None and r.uniform_codelength is None
    assert r.layers == ("l0", "l1") and r.classes == ("a", "b")
    assert r.spec == (("lr", 0.1), ("sizes", (1, 2)))
    assert (r.n_train, r.n_val, r.n_test, r.seeds, r.chance) == (4, 2, 2, 1, 0.5)


def test_new_saves_write_the_same_layout_as_the_old_code(tmp_path):
    # re-saving a loaded old file gives the same members and the same header
    for name, load in (("patching_v1.npz", load_result), ("mediation_v1.npz", load_result),
                       ("faithfulness_v1.npz", load_faithfulness)):
        old = np.load(FIXTURES / name, allow_pickle=False)
        load(FIXTURES / name).save(tmp_path / name)
        new = np.load(tmp_path / name, allow_pickle=False)
        assert sorted(new.files) == sorted(old.files), name
        for k in old.files:
            np.testing.assert_array_equal(new[k], old[k], err_msg=f"{name}:{k}")
            assert new[k].dtype == old[k].dtype, f"{name}:{k}"


def test_result_loaders_name_the_file_on_a_wrong_kind(tmp_path):
    # a faithfulness file given to the interventions loader, and the other way round
    with pytest.raises(ResultFileError, match="faithfulness_v1.npz"):
        load_result(FIXTURES / "faithfulness_v1.npz")
    with pytest.raises(ResultFileError, match="patching_v1.npz"):
        load_faithfulness(FIXTURES / "patching_v1.npz")
    (tmp_path / "p.json").write_text('{"format": "jaxattr.attributions"}')
    with pytest.raises(ResultFileError, match=r"p.json: holds 'jaxattr.attributions'"):
        probe_result.load(tmp_path / "p.json")
