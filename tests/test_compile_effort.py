"""The compile-effort policy (jaxattr.compile_effort): which models compile with XLA's backend
optimisation off, that the fast programs give the full programs' numbers, and that the CLI's
choice does not leak into the Python session."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxattr
from jaxattr import cli, compile_effort, pipeline
from jaxattr.compile_effort import compile_effort as effort_scope
from jaxattr.compile_effort import fast_compile_applies, get_compile_effort, set_compile_effort

SMALL = {"w": np.zeros((4, 4), np.float32)}


def test_default_in_python_is_full_and_the_policy_decides_by_size(monkeypatch):
    assert get_compile_effort() == "full"
    assert not fast_compile_applies(SMALL)
    with effort_scope("auto"):
        assert fast_compile_applies(SMALL)  # 16 parameters on the CPU
        monkeypatch.setattr(compile_effort, "SMALL_MODEL_PARAMS", 16)
        assert not fast_compile_applies(SMALL)  # 16 is not below 16: a "large" model
    with effort_scope("fast"):
        assert fast_compile_applies(SMALL)  # whatever the size
    assert get_compile_effort() == "full"  # the scope restored it


def test_unknown_effort_is_a_clear_error():
    with pytest.raises(ValueError, match=r"effort must be one of \('auto', 'full', 'fast'\)"):
        set_compile_effort("fastest")
    res = subprocess.run([sys.executable, "-c", "import jaxattr"], capture_output=True,
                         text=True, env=dict(os.environ, JAXATTR_COMPILE_EFFORT="quick"))
    assert res.returncode != 0 and "JAXATTR_COMPILE_EFFORT must be one of" in res.stderr


def test_fast_programs_give_the_full_programs_numbers(gpt2):
    prompt = "the cat sat"
    kw = dict(method="integrated_gradients", n_steps=8, show_progress=False)
    full = gpt2.attribute(prompt, prompt + " on the mat", **kw)
    n_fast = pipeline._attribute_jits.fast._cache_size()
    with effort_scope("fast"):
        fast = gpt2.attribute(prompt, prompt + " on the mat", **kw)
    # the fast wrapper compiled (and ran) a program of its own
    assert pipeline._attribute_jits.fast._cache_size() == n_fast + 1
    a = full.sequence_attributions[0].target_attributions
    b = fast.sequence_attributions[0].target_attributions
    np.testing.assert_allclose(np.nan_to_num(b), np.nan_to_num(a), rtol=1e-5, atol=1e-7)


def test_the_clis_choice_is_restored_after_the_command(tmp_path, monkeypatch, capsys):
    seen = []
    real = pipeline._attribute_jits.pick

    def spy(params):
        seen.append(get_compile_effort())
        return real(params)

    monkeypatch.setattr(pipeline._attribute_jits, "pick", spy)
    monkeypatch.setenv("JAXATTR_CACHE_DIR", str(tmp_path / "xla"))
    rc = cli.main(["attribute", "--input", "Kim's red ball. Sam's", "--generated",
                   "Kim's red ball. Sam's red", "--method", "saliency"])
    assert rc == 0 and seen == ["auto"]  # the CLI's default for one interactive call
    assert get_compile_effort() == "full"  # and the Python session keeps its own policy
    seen.clear()
    rc = cli.main(["attribute", "--input", "Kim's red ball. Sam's", "--generated",
                   "Kim's red ball. Sam's red", "--method", "saliency",
                   "--compile-effort", "full"])
    assert rc == 0 and seen == ["full"]
    capsys.readouterr()
