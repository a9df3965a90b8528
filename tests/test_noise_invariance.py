"""Noisy methods are batch-invariant: an example's noise is keyed on the example itself.

The same sequence attributed alone, inside a batch at another row, with another batch size or
padded to another length gives the same numbers (the README's padding-invariance claim), for
every method that draws random numbers, through the model and through the functional API.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import (gradient_shap, input_x_gradient, integrated_gradients, saliency,
                     smoothgrad, smoothgrad_sq, vargrad)
from jaxattr.methods._common import draw_noise, example_identity
from jaxattr.methods.needs import needs_of

from conftest import FULL, PROMPTS, SOURCES, TARGETS

NOISY = {  # smoothgrad_sq / vargrad share smoothgrad's draws (checked functionally below)
    "smoothgrad_sq_ixg": (smoothgrad_sq(input_x_gradient, n_samples=2, stdevs=0.5), {}),
    "gradient_shap": ("gradient_shap", {"n_samples": 2, "stdevs": 0.5}),
}


def _attrs(view):
    parts = [view.target_attributions]
    if view.source_attributions is not None:
        parts.append(view.source_attributions)
    return [np.nan_to_num(p, nan=0.0) for p in parts]


def _assert_same(a, b):
    for x, y in zip(_attrs(a), _attrs(b)):
        scale = np.abs(x).max()
        assert scale > 0
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name", sorted(NOISY))
def test_noisy_methods_are_batch_invariant_decoder_only(gpt2, name):
    method, kw = NOISY[name]
    alone = gpt2.attribute(PROMPTS[1], FULL[1], method=method, show_progress=False, **kw)[0]
    # Row 2 of a batch of 3 (padded to the longest), then batch_size=2 (another bucket/row).
    batched = gpt2.attribute([PROMPTS[0], PROMPTS[2], PROMPTS[1]], [FULL[0], FULL[2], FULL[1]],
                             method=method, show_progress=False, **kw)[2]
    _assert_same(alone, batched)


def test_noise_differs_between_examples_and_keys(gpt2):
    """The per-example key is not one shared draw: two examples, or two seeds, differ."""
    method = smoothgrad(saliency, n_samples=2, stdevs=0.5)
    clean = gpt2.attribute(PROMPTS[1], FULL[1], show_progress=False)[0].target_attributions
    a = gpt2.attribute(PROMPTS[1], FULL[1], method=method, show_progress=False)[0]
    b = gpt2.attribute(PROMPTS[1], FULL[1], method=method, key=1, show_progress=False)[0]
    # batch_size=2: another row, another padded length
    chunked = gpt2.attribute([PROMPTS[0], PROMPTS[1], PROMPTS[2]], [FULL[0], FULL[1], FULL[2]],
                             method=method, batch_size=2, show_progress=False)[1]
    _assert_same(a, chunked)
    assert not np.allclose(np.nan_to_num(a.target_attributions), np.nan_to_num(clean))
    assert not np.allclose(np.nan_to_num(a.target_attributions),
                           np.nan_to_num(b.target_attributions))
    ids = jnp.asarray([[5, 6, 7, 0], [5, 6, 8, 0], [0, 5, 6, 7]])
    mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 1]])
    h = np.asarray(example_identity(ids, mask))
    assert h[0] != h[1] and h[0] == h[2]  # content and order count, padding does not


@pytest.mark.slow
def test_smoothgrad_is_batch_invariant_encoder_decoder(marian):
    method = smoothgrad(saliency, n_samples=2, stdevs=0.5)
    alone = marian.attribute(SOURCES[1], TARGETS[1], method=method, attribute_target=True,
                             show_progress=False)[0]
    batched = marian.attribute(SOURCES, TARGETS, method=method, attribute_target=True,
                               show_progress=False)[1]
    _assert_same(alone, batched)


def _score(x):  # x [B, L, H] -> scores [B, T=2]: a nonlinear function of each example
    return jnp.stack([jnp.tanh(x).sum((1, 2)), (x[:, :2] ** 2).sum((1, 2))], -1)


@pytest.mark.parametrize("method", [smoothgrad(saliency, n_samples=3, stdevs=0.4),
                                    vargrad(integrated_gradients, n_samples=2, stdevs=0.4),
                                    smoothgrad_sq(input_x_gradient, n_samples=2, stdevs=0.4),
                                    gradient_shap])
def test_functional_per_example_keys_equal_one_example_at_a_time(method):
    """With a batch of keys ``[B]``, example b's result is the one it gets alone with key b;
    and under ``vmap`` (one key) every example's result equals the call on it alone."""
    x = jax.random.normal(jax.random.key(3), (3, 4, 5))
    keys = jax.random.split(jax.random.key(9), 3)
    extra = ({"stdevs": 0.4} if method is gradient_shap
             else {"n_steps": 4} if "n_steps" in needs_of(method).options else {})
    batched = method(_score, x, key=keys, **extra)  # [T, B, L, H]
    for b in range(3):
        alone = method(_score, x[b:b + 1], key=keys[b:b + 1], **extra)
        np.testing.assert_allclose(batched[:, b], alone[:, 0], rtol=1e-4, atol=1e-5)
        # padding the example's sequence axis does not change its noise on its own positions
        padded = jnp.pad(x[b:b + 1], ((0, 0), (0, 3), (0, 0)))
        sc = lambda z: _score(z[:, :4])  # noqa: E731
        np.testing.assert_allclose(method(sc, padded, key=keys[b:b + 1], **extra)[:, 0, :4],
                                   alone[:, 0], rtol=1e-4, atol=1e-5)
    one = lambda z: method(lambda v: _score(v[None])[0], z, key=5, **extra)  # noqa: E731
    np.testing.assert_allclose(jax.vmap(one)(x), jnp.stack([one(z) for z in x]),
                               rtol=1e-4, atol=1e-5)


def test_per_example_keys_must_match_the_batch():
    with pytest.raises(ValueError, match="per-example keys"):
        draw_noise(jnp.zeros((3, 4)), jax.random.split(jax.random.key(0), 2), 0.1)
