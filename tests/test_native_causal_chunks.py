"""Exact causal truncation (``prefix_groups="exact"``, :mod:`jaxattr.models.causal_chunks`):
the same attributions as the one-pass program (an independent computation: one VJP of the
whole forward per step), batched with right padding, on native families whose attention has
windows, soft-caps and embedding scales; its plan; clear errors where it does not apply."""
import functools
import os

import numpy as np
import pytest

import jaxattr
from jaxattr.models.causal_chunks import plan_causal_chunks

CKPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "native_side", "ckpt")
PROMPTS = ["The cat sat on the mat and", "Kim has"]
TEXTS = ["The cat sat on the mat and the dog slept", "Kim has a red ball and a cup on it"]


@functools.lru_cache(maxsize=None)
def _model(family):
    return jaxattr.load_model(os.path.join(CKPT, family))


def _same(a, b, tol=1e-5):
    for x, y in zip(a, b):
        x, y = (np.nan_to_num(np.asarray(s.target_attributions)) for s in (x, y))
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, atol=tol * np.abs(x).max())


@pytest.mark.filterwarnings("ignore:Integrated gradients did not converge")
@pytest.mark.parametrize("family,method,kw", [
    ("llama", "saliency", {}),
    ("llama", "integrated_gradients", {"n_steps": 8}),
    ("gemma2", "input_x_gradient", {}),           # soft-caps, windows, post-norms
    ("gemma3_text", "saliency", {}),              # embedding scale in the lookup
    ("mistral", "saliency", {}),                  # window shorter than the input
    ("mixtral", "input_x_gradient", {}),          # token-wise MoE MLPs in position blocks
])
def test_exact_equals_one_pass(family, method, kw):
    model = _model(family)
    args = dict(method=method, attributed_fn="logprob", show_progress=False, **kw)
    one = model.attribute(PROMPTS, TEXTS, prefix_groups=1, **args)
    exact = model.attribute(PROMPTS, TEXTS, prefix_groups="exact", **args)
    _same(one, exact)
    if method == "integrated_gradients":       # completeness comes along unchanged
        np.testing.assert_allclose(
            np.asarray(exact[0].step_scores["deltas"]), np.asarray(one[0].step_scores["deltas"]),
            atol=1e-5)
    alone = model.attribute(PROMPTS[1], TEXTS[1], prefix_groups="exact", **args)
    _same(alone, exact[1:])


def test_plan_hand_computed():
    # two rows, 16 + 6 tokens; row 1 has 4 real steps, its padded steps hold position 16
    pos = np.array([[16, 17, 18, 19, 20, 21], [16, 17, 18, 19, 16, 16]])
    assert plan_causal_chunks(pos, 22, max_chunks=3) == ((0, 2, 17), (2, 4, 19), (4, 6, 21))
    assert plan_causal_chunks(pos, 22, max_chunks=1) == ((0, 6, 21),)
    assert plan_causal_chunks(pos, 22, max_chunks=10) == tuple(
        (t, t + 1, p) for t, p in enumerate([16, 17, 18, 19, 20, 21]))


def test_exact_refused_where_it_does_not_apply():
    native = _model("llama")
    with pytest.raises(ValueError, match="serves saliency"):
        native.attribute(PROMPTS[0], TEXTS[0], method="gradient_shap", prefix_groups="exact",
                         show_progress=False)
    with pytest.raises(ValueError, match="no layer"):
        native.attribute(PROMPTS[0], TEXTS[0], method="layer_integrated_gradients",
                         layer="blocks.0.resid_post", prefix_groups="exact",
                         show_progress=False)
    flax = jaxattr.load_model("toy-recall")
    with pytest.raises(ValueError, match="native llama-like family"):
        flax.attribute("a b", "a b c d", prefix_groups="exact", show_progress=False)
    with pytest.raises(ValueError, match="'exact'"):
        native.attribute(PROMPTS[0], TEXTS[0], prefix_groups="fast", show_progress=False)
