"""Attention rollout (Abnar & Zuidema, 2020): the maths and the model pipeline."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FULL, PROMPTS, SOURCES, TARGETS
from jaxattr.methods import attention_rollout


def _causal_softmax(key, shape):
    logits = jax.random.normal(key, shape)
    L = shape[-1]
    logits = jnp.where(jnp.tril(jnp.ones((L, L), bool)), logits, -jnp.inf)
    return jax.nn.softmax(logits, -1)


def test_rows_sum_to_one_for_every_layer_count():
    pats = _causal_softmax(jax.random.key(0), (4, 3, 2, 6, 6))  # [layers, B, heads, L, L]
    for n in range(1, 5):
        r = np.asarray(attention_rollout(pats[:n]))
        assert r.shape == (3, 6, 6)
        np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-6)
        assert (r >= 0).all() and np.allclose(np.triu(r, 1), 0.0)  # causal stays causal


def test_hand_computed_two_layers():
    # Layer 1: two heads whose mean is [[1, 0], [.5, .5]]; layer 2: one head.
    a1 = jnp.asarray([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    a2 = jnp.asarray([[[1.0, 0.0], [0.2, 0.8]]])
    # Â1 = [[1, 0], [.25, .75]], Â2 = [[1, 0], [.1, .9]], R = Â2 Â1.
    want = np.array([[1.0, 0.0], [0.1 + 0.9 * 0.25, 0.9 * 0.75]])
    np.testing.assert_allclose(attention_rollout([a1, a2]), want, rtol=1e-6)
    # residual=0: the plain product of head-averaged patterns
    np.testing.assert_allclose(attention_rollout([a1, a2], residual=0.0),
                               np.array([[1.0, 0.0], [0.6, 0.4]]), rtol=1e-6)


def test_bad_residual_and_shape_are_errors():
    with pytest.raises(ValueError, match="residual"):
        attention_rollout(jnp.ones((1, 1, 2, 2)), residual=1.5)
    with pytest.raises(ValueError, match="heads, L, L"):
        attention_rollout([jnp.ones((2, 3))])


def _numpy_rollout(attentions):
    """Independent rollout in numpy from the model's own attention weights (one example)."""
    r = None
    for a in attentions:
        a = np.asarray(a[0], np.float64).mean(0)
        a = 0.5 * a + 0.5 * np.eye(a.shape[-1])
        a = a / a.sum(-1, keepdims=True)
        r = a if r is None else a @ r
    return r


def test_model_rollout_is_the_rollout_of_the_models_attention(gpt2):
    out = gpt2.attribute(PROMPTS[1], FULL[1], method="attention_rollout")
    seq = out[0]
    att = gpt2.hf_model(jnp.asarray([seq.target_ids]), params=gpt2.params,
                        output_attentions=True).attentions
    want = _numpy_rollout(att)
    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        got = seq.target_attributions[:, j, 0]
        np.testing.assert_allclose(got[:p], want[p - 1, :p], rtol=1e-5, atol=1e-7)
        assert np.isnan(got[p:]).all()  # not yet generated
        np.testing.assert_allclose(np.nansum(got), 1.0, rtol=1e-5)
    agg = out.aggregate()[0].target_attributions
    np.testing.assert_allclose(np.nansum(agg, 0), 1.0, rtol=1e-5)


def test_batch_invariance(gpt2):
    batched = gpt2.attribute(PROMPTS, FULL, method="attention_rollout")
    for i in range(len(PROMPTS)):
        alone = gpt2.attribute(PROMPTS[i], FULL[i], method="attention_rollout")[0]
        a, b = batched[i].target_attributions, alone.target_attributions
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) <= 1e-5


def test_encoder_decoder_is_a_clear_error(marian):
    with pytest.raises(ValueError, match="decoder-only.*method='attention'"):
        marian.attribute(SOURCES[0], TARGETS[0], method="attention_rollout")


def test_listed():
    import jaxattr
    assert {"attention_rollout", "deeplift", "lime"} <= set(jaxattr.list_methods())
