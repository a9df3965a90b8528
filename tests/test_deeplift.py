"""DeepLIFT: the Captum-compatible mode (formula, equality with Inseq 0.7.1's records) here;
the rescale rule (hand-computed cases, summation-to-delta on the native family, layer
DeepLIFT) in ``test_deeplift_rescale.py``.

``benchmarks/inseq_side/inseq_deeplift.npz`` is made by ``run_inseq_deeplift.py`` in the side
environment (Inseq 0.7.1, Captum 0.9) on the tiny checkpoints of ``test_inseq_reference.py``.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.methods import deeplift

HERE = os.path.dirname(os.path.abspath(__file__))
SIDE = os.path.join(HERE, "..", "benchmarks", "inseq_side")
NPZ = os.path.join(SIDE, "inseq_deeplift.npz")
TOL = 1e-5  # as test_inseq_reference.py


def test_formula_on_a_function_with_known_gradient():
    w = jnp.asarray([1.0, -2.0, 3.0])
    x = jnp.asarray([0.5, 1.5, -1.0])
    b = jnp.asarray([0.1, 0.2, 0.3])

    def f(z):  # two outputs: linear and quadratic; gradients w and 2z
        return jnp.stack([w @ z, (z ** 2).sum()])

    np.testing.assert_allclose(deeplift(f, x, b, mode="captum"),
                               np.stack([w * (x - b), 2 * x * (x - b)]), rtol=1e-6)
    np.testing.assert_allclose(deeplift(f, x, b, multiply_by_inputs=False, mode="captum"),
                               np.stack([w, 2 * x]), rtol=1e-6)
    np.testing.assert_allclose(deeplift(f, x, mode="captum"), np.stack([w * x, 2 * x * x]),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="mode='shapley' is not a DeepLIFT mode"):
        deeplift(f, x, b, mode="shapley")


@pytest.fixture(scope="module")
def reference():
    z = np.load(NPZ, allow_pickle=False)
    meta = json.loads(str(z["__meta__"]))
    return z, {c["call_id"]: c for c in meta["calls"]}


@pytest.fixture(scope="module")
def models():
    return {name: jaxattr.load_model(os.path.join(SIDE, "tiny_ckpt", name))
            for name in ("gpt2", "marian")}


CALLS = {
    "gpt2/deeplift": dict(method="deeplift", mode="captum"),
    "marian_fixedscale/deeplift": dict(method="deeplift", mode="captum", attribute_target=True),
}


def _rel(a, b):
    return np.nanmax(np.abs(a - b)) / np.nanmax(np.abs(b))


@pytest.mark.parametrize("call_id", sorted(CALLS))
def test_equals_inseq(call_id, reference, models):
    z, calls = reference
    call = calls[call_id]
    assert "error" not in call, call.get("error")
    model = models["gpt2" if call_id.startswith("gpt2") else "marian"]
    out = model.attribute(call["input_texts"], call["generated_texts"],
                          step_scores=("probability",), **CALLS[call_id])
    for i, (seq, ref) in enumerate(zip(out.sequence_attributions, call["sequences"])):
        assert seq.target == [t for t, _ in ref["target"]]
        key = f"{call_id}/{i}"
        tgt = z[f"{key}/target_attributions"]
        assert seq.target_attributions.shape == tgt.shape
        np.testing.assert_array_equal(np.isnan(seq.target_attributions), np.isnan(tgt))
        assert _rel(seq.target_attributions, tgt) <= TOL
        if f"{key}/source_attributions" in z.files:
            src = z[f"{key}/source_attributions"]
            assert seq.source_attributions.shape == src.shape
            assert _rel(seq.source_attributions, src) <= TOL


def test_batch_invariance(reference, models):
    _, calls = reference
    call = calls["gpt2/deeplift"]
    batched = models["gpt2"].attribute(call["input_texts"], call["generated_texts"],
                                       method="deeplift", mode="captum")
    for i in (0, 2):
        alone = models["gpt2"].attribute(call["input_texts"][i], call["generated_texts"][i],
                                         method="deeplift", mode="captum")[0]
        a, b = batched[i].target_attributions, alone.target_attributions
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert _rel(a, b) <= 1e-5


def test_rescale_on_a_transformers_model_names_the_fix(models):
    with pytest.raises(ValueError, match="mode='captum'.*or a native model"):
        models["gpt2"].attribute("The cat", "The cat sat", method="deeplift")
