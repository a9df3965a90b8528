"""The README's claim "padding never changes a result, for every attribution method": every name
``model.attribute(method=...)`` accepts has a test that attributes a sequence alone and inside a
padded batch (another row, another padded length) and finds the same numbers. The table below
names each test; a method added to ``jaxattr.list_methods()`` without one fails here.
"""
import pathlib
import re

import numpy as np
import pytest

import jaxattr

from conftest import FULL, PROMPTS

HERE = "test_every_method_invariance.py::test_batch_invariance"
COVERED = {
    "saliency": "test_pipeline.py::test_padded_batch_equals_one_by_one_decoder_only",
    "input_x_gradient": "test_pipeline.py::test_padded_batch_equals_one_by_one_decoder_only",
    "integrated_gradients": "test_model_methods.py::test_batch_invariance_and_jit",
    "layer_integrated_gradients": "test_model_methods.py::test_batch_invariance_and_jit",
    "attention": "test_model_methods.py::test_batch_invariance_and_jit",
    "occlusion": "test_model_methods.py::test_batch_invariance_and_jit",
    "gradient_shap": "test_model_methods.py::test_batch_invariance_and_jit",
    "sequential_integrated_gradients": "test_model_methods.py::test_batch_invariance_and_jit",
    "attention_rollout": "test_attention_rollout.py::test_batch_invariance",
    "attention_flow": "test_attention_flow.py::test_batch_invariance",
    "deeplift": "test_deeplift.py::test_batch_invariance",
    "lime": "test_lime.py::test_pipeline_batch_invariance",
    "smoothgrad": "test_noise_invariance.py::test_noise_differs_between_examples_and_keys",
    "smoothgrad_sq": "test_noise_invariance.py::test_noisy_methods_are_batch_invariant_decoder_only",
    "value_zeroing": "test_value_zeroing.py::"
                     "test_through_attribute_columns_sum_to_one_and_batch_invariance",
    "layer_deeplift": HERE,
    "alti": "test_alti.py::test_batch_invariance_through_attribute",
    "reagent": "test_reagent.py::test_pipeline_batch_invariance_and_listing",
    "discretized_integrated_gradients": "test_dig.py::test_batch_invariance",
    "vargrad": HERE,
    "layer_saliency": HERE,
    "layer_gradient_x_activation": HERE,
}

RUNS = {"vargrad": dict(n_samples=2, stdevs=0.3),
        "layer_saliency": dict(layer="blocks.0.mlp_out"),
        "layer_gradient_x_activation": dict(layer="blocks.*.mlp_out"),
        # transformers models take Captum's mode (the rescale rule needs a native model)
        "layer_deeplift": dict(layer="blocks.1.mlp_out", mode="captum")}


def test_every_method_has_a_batch_invariance_test():
    assert set(COVERED) == set(jaxattr.list_methods())
    tests = pathlib.Path(__file__).parent
    for method, where in COVERED.items():
        path, name = where.split("::")
        src = (tests / path).read_text()
        assert re.search(rf"^def {name}\(", src, re.M), where
        body = src.split(f"def {name}(", 1)[1]
        start = src.index(f"def {name}(")
        # the method is named in the test or its parametrisation just above it
        window = src[max(0, start - 600):start] + body.split("\ndef ", 1)[0]
        if where != HERE and method not in ("smoothgrad", "smoothgrad_sq"):
            assert f'"{method}"' in window, (method, where)
    assert set(RUNS) == {m for m, w in COVERED.items() if w == HERE}


@pytest.mark.parametrize("method", sorted(RUNS))
def test_batch_invariance(gpt2, method):
    kw = dict(RUNS[method], method=method, show_progress=False)
    one = gpt2.attribute(PROMPTS[1], FULL[1], **kw)
    # row 2 of 3, padded to the longest of the batch (another length bucket)
    many = gpt2.attribute([PROMPTS[0], PROMPTS[2], PROMPTS[1]], [FULL[0], FULL[2], FULL[1]],
                          **kw)
    assert many.batches[0].target_mask.shape[1] > one.batches[0].target_mask.shape[1]
    alone, batched = one[0], many[2]
    a, b = alone.target_attributions, batched.target_attributions
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    scale = np.nanmax(np.abs(a))
    assert scale > 0
    assert np.nanmax(np.abs(a - b)) <= 1e-5 * scale
