"""LIME for generation: a known linear answer, padding and batch invariance, the pipeline,
and its ridge surrogate against Inseq 0.7.1's recorded fits (``inseq_lime.npz``)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FULL, PROMPTS
from jaxattr.methods import lime
from jaxattr.methods.lime import weighted_ridge

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


# --------------------------------------------------------------------------- vs Inseq 0.7.1
LIME_NPZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks",
                        "inseq_side", "inseq_lime.npz")


def test_weighted_ridge_equals_inseq_surrogate_fits():
    """Inseq's (Captum's) surrogate: scikit-learn Ridge(alpha=1) with a free intercept and
    sample weights, on the 10 per-step fits recorded from Inseq's LIME (50 samples of
    224-512 features: its features are the perturbed embeddings). In float64 the
    coefficients equal Inseq's to float32 storage precision; in float32 the 50-sample
    systems lose about 3-4 digits (their condition numbers), hence the looser bound."""
    z = np.load(LIME_NPZ, allow_pickle=False)
    n_fits = json.loads(str(z["__meta__"]))["n_fits"]
    assert n_fits == 10
    for c in range(n_fits):
        X, y, w, coef = (z[f"fits/{c}/{k}"] for k in ("X", "y", "w", "coef"))
        with jax.enable_x64(True):
            b64, _ = weighted_ridge(jnp.asarray(X), jnp.asarray(y)[:, None], jnp.asarray(w),
                                    1.0)
        assert np.abs(np.asarray(b64)[:, 0] - coef).max() <= 1e-6 * np.abs(coef).max()
        b32, _ = weighted_ridge(jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)[:, None],
                                jnp.asarray(w, jnp.float32), 1.0)
        assert np.abs(np.asarray(b32)[:, 0] - coef).max() <= 2e-3 * np.abs(coef).max()


def test_weighted_ridge_primal_equals_dual_and_weights_act_as_repeats():
    """Fewer features than samples uses the N x N system, more uses the S x S one: both
    solve the same problem. An integer weight equals repeating the sample."""
    k = jax.random.split(jax.random.key(7), 3)
    X = jax.random.normal(k[0], (6, 3))
    y = jax.random.normal(k[1], (6, 2))
    w = jnp.asarray([1.0, 2.0, 1.0, 3.0, 1.0, 1.0])
    coef, icpt = weighted_ridge(X, y, w, 0.5)
    rep = np.repeat(np.arange(6), np.asarray(w, int))
    c2, i2 = weighted_ridge(X[rep], y[rep], jnp.ones(len(rep)), 0.5)
    np.testing.assert_allclose(coef, c2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(icpt, i2, rtol=1e-4, atol=1e-6)
    Xw = jnp.concatenate([X, jnp.zeros((6, 5))], 1)  # 8 features > 6 samples: dual form
    cw, iw = weighted_ridge(Xw, y, w, 0.5)
    np.testing.assert_allclose(cw[:3], coef, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cw[3:], 0.0, atol=1e-6)
    np.testing.assert_allclose(iw, icpt, rtol=1e-4, atol=1e-6)


def test_count_similarity_weights_samples_by_kept_elements():
    """similarity='count' equals a uniform fit with each sample repeated (kept positions x
    hidden size) times: checked through the linear model, whose exact answer both find."""
    x = jax.random.normal(jax.random.key(1), (1, 4, 3))
    base = jax.random.normal(jax.random.key(2), (1, 4, 3))
    attr = lime(linear_scores, x, base, n_samples=40, alpha=1e-6, key=3, similarity="count")
    want = np.einsum("blh,h,lt->tbl", x - base, V, W)
    np.testing.assert_allclose(np.asarray(attr).sum(-1), want, rtol=1e-3, atol=1e-4)
    uniform = lime(linear_scores, x, base, n_samples=40, alpha=5.0, key=3)
    counted = lime(linear_scores, x, base, n_samples=40, alpha=5.0, key=3, similarity="count")
    assert not np.allclose(uniform, counted)  # the weights do change a penalised fit
    with pytest.raises(ValueError, match="similarity"):
        lime(linear_scores, x, similarity="cosine")
