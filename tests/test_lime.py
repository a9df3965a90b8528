"""LIME for generation: a known linear answer, padding and batch invariance, the pipeline."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FULL, PROMPTS
from jaxattr.methods import lime

W = jnp.asarray([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25], [2.0, 1.0]])  # [L, T]
V = jnp.asarray([0.3, -0.7, 1.1])  # [H]


def linear_scores(x):  # x [B, L, H] -> [B, T]; linear in which tokens are kept
    return jnp.einsum("blh,h,lt->bt", x, V, W)


def test_linear_model_gets_its_exact_coefficients():
    x = jax.random.normal(jax.random.key(1), (2, 4, 3))
    base = jax.random.normal(jax.random.key(2), (2, 4, 3))
    attr = lime(linear_scores, x, base, n_samples=40, alpha=1e-6, key=3)  # [T, B, L, H]
    # keeping token l instead of its baseline changes output t by ((x − b)_l · v) W[l, t]
    want = np.einsum("blh,h,lt->tbl", x - base, V, W)
    np.testing.assert_allclose(np.asarray(attr).sum(-1), want, rtol=1e-3, atol=1e-4)


def test_padding_and_batch_invariance():
    x = jax.random.normal(jax.random.key(4), (2, 4, 3))
    keys = jax.random.split(jax.random.key(5), 2)
    batched = lime(linear_scores, x, n_samples=16, key=keys)
    for b in range(2):  # alone, and right-padded with two extra (pad) positions
        alone = lime(linear_scores, x[b:b + 1], n_samples=16, key=keys[b:b + 1])
        np.testing.assert_allclose(alone[:, 0], batched[:, b], rtol=1e-4, atol=1e-6)
        xp = jnp.concatenate([x[b:b + 1], jnp.zeros((1, 2, 3))], 1)
        mask = jnp.asarray([[1, 1, 1, 1, 0, 0]])
        padded = lime(lambda z: linear_scores(z[:, :4]), xp, n_samples=16, key=keys[b:b + 1],
                      position_mask=mask)
        np.testing.assert_allclose(padded[:, 0, :4], batched[:, b], rtol=1e-4, atol=1e-6)
        assert (np.asarray(padded[:, 0, 4:]) == 0).all()


def test_bad_options_are_errors():
    x = jnp.ones((1, 4, 3))
    with pytest.raises(ValueError, match="alpha"):
        lime(linear_scores, x, alpha=0.0)
    with pytest.raises(ValueError, match="keep_probability"):
        lime(linear_scores, x, keep_probability=1.0)


def test_pipeline_batch_invariance(gpt2):
    kw = dict(method="lime", n_samples=12)
    batched = gpt2.attribute(PROMPTS, FULL, **kw)
    for i in (0, 2):
        alone = gpt2.attribute(PROMPTS[i], FULL[i], **kw)[0]
        a, b = batched[i].target_attributions, alone.target_attributions
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) <= 1e-4 * np.nanmax(np.abs(b))


def test_prefix_groups_do_not_change_the_fit(gpt2):
    # The ridge fit spans every position: attributing groups of steps on shorter prefixes
    # would drop regressors and change it, so LIME always runs the one-pass program.
    a = gpt2.attribute(PROMPTS[0], FULL[0], method="lime", n_samples=8)[0]
    b = gpt2.attribute(PROMPTS[0], FULL[0], method="lime", n_samples=8, prefix_groups=3)[0]
    np.testing.assert_array_equal(a.target_attributions, b.target_attributions)
