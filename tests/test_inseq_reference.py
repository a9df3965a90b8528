"""Cross-check against Inseq 0.7.1: the same tiny PyTorch checkpoints, the same texts.

``benchmarks/inseq_side/`` holds the checkpoints (made with torch by
``make_tiny_checkpoints.py``) and Inseq's raw outputs (``run_inseq.py`` in a side environment
with Inseq 0.7.1 + torch; never a dependency of jaxattr). Loading the checkpoints here also
exercises ``from_pt=True`` on real PyTorch ``model.safetensors`` files.

Marian references are the ``marian_fixedscale`` calls: with transformers 4.57 the PyTorch Marian
decoder multiplies ``inputs_embeds`` by ``embed_scale`` a second time when Inseq passes scaled
embeddings, so Inseq's plain ``marian/*`` numbers describe a different model from step 2 on
(see ``benchmarks/inseq_side/CONVENTIONS.md``).
"""
import json
import os

import numpy as np
import pytest

import jaxattr

HERE = os.path.dirname(os.path.abspath(__file__))
SIDE = os.path.join(HERE, "..", "benchmarks", "inseq_side")
NPZ = os.path.join(SIDE, "inseq_reference.npz")


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
    "gpt2/saliency": dict(method="saliency"),
    "gpt2/input_x_gradient": dict(method="input_x_gradient"),
    "gpt2/integrated_gradients": dict(method="integrated_gradients", n_steps=64),
    "gpt2/saliency_logprob": dict(method="saliency", attributed_fn="logprob"),
    "marian_fixedscale/saliency": dict(method="saliency", attribute_target=True),
    "marian_fixedscale/input_x_gradient": dict(method="input_x_gradient",
                                               attribute_target=True),
    "marian_fixedscale/integrated_gradients": dict(method="integrated_gradients", n_steps=64,
                                                   attribute_target=True),
}


#: Largest relative difference allowed: the README reports ~1e-6 (float32 rounding), so a
#: tolerance of 1e-5 catches a 10x regression where 1e-3 let a 1000x one pass.
TOL = 1e-5


def _rel(a, b):
    return np.nanmax(np.abs(a - b)) / np.nanmax(np.abs(b))


@pytest.mark.parametrize("call_id", sorted(CALLS))
def test_equals_inseq(call_id, reference, models):
    z, calls = reference
    call = calls[call_id]
    model = models["gpt2" if call_id.startswith("gpt2") else "marian"]
    out = model.attribute(call["input_texts"], call["generated_texts"],
                          step_scores=("probability",), **CALLS[call_id])
    for i, (seq, ref) in enumerate(zip(out.sequence_attributions, call["sequences"])):
        assert seq.target == [t for t, _ in ref["target"]]
        assert (seq.attr_pos_start, seq.attr_pos_end) == (ref["attr_pos_start"],
                                                          ref["attr_pos_end"])
        key = f"{call_id}/{i}"
        tgt = z[f"{key}/target_attributions"]
        assert seq.target_attributions.shape == tgt.shape
        np.testing.assert_array_equal(np.isnan(seq.target_attributions), np.isnan(tgt))
        assert _rel(seq.target_attributions, tgt) <= TOL
        if f"{key}/source_attributions" in z.files:
            src = z[f"{key}/source_attributions"]
            assert seq.source == [t for t, _ in ref["source"]]
            assert seq.source_attributions.shape == src.shape
            assert _rel(seq.source_attributions, src) <= TOL
        np.testing.assert_allclose(seq.step_scores["probability"],
                                   z[f"{key}/step_scores/probability"], rtol=TOL, atol=1e-7)


def test_contrast_prob_diff_equals_inseq(reference, models):
    z, calls = reference
    call = calls["gpt2/saliency_contrast_prob_diff"]
    out = models["gpt2"].attribute(call["input_texts"], call["generated_texts"],
                                   attributed_fn="contrast_prob_diff",
                                   contrast_targets=call["kwargs"]["contrast_targets"],
                                   step_scores=("probability",))[0]
    ref = z["gpt2/saliency_contrast_prob_diff/0/target_attributions"]
    np.testing.assert_array_equal(np.isnan(out.target_attributions), np.isnan(ref))
    assert _rel(out.target_attributions, ref) <= TOL
    np.testing.assert_allclose(out.step_scores["probability"],
                               z["gpt2/saliency_contrast_prob_diff/0/step_scores/probability"],
                               rtol=TOL)
