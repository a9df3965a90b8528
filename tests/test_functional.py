"""Functional core on plain JAX functions: shapes, finite differences, pytrees, aux."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr


def _mlp(seed=0, H=5, T=3):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w1 = jax.random.normal(k1, (H, 7)) * 0.5
    w2 = jax.random.normal(k2, (7, T)) * 0.5

    def f(x):  # x [B, L, H] -> [B, T]
        return jnp.tanh(jnp.tanh(x @ w1) @ w2).sum(axis=-2)
    return f


def test_saliency_matches_central_finite_differences():
    f = _mlp()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 5))
    g = jaxattr.saliency(f, x, abs=False)  # [T, B, L, H]
    assert g.shape == (3, 2, 4, 5)
    eps = 1e-3
    xn = np.asarray(x, np.float64)
    for (b, l, h) in [(0, 0, 0), (1, 3, 4), (0, 2, 1)]:
        e = np.zeros_like(xn)
        e[b, l, h] = eps
        fd = (np.asarray(f(jnp.asarray(xn + e, jnp.float32)), np.float64)
              - np.asarray(f(jnp.asarray(xn - e, jnp.float32)), np.float64)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(g[:, b, l, h]), fd[b], rtol=2e-2, atol=2e-4)


def test_saliency_abs_and_input_x_gradient_definitions():
    f = _mlp(2)
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 3, 5))
    signed = jaxattr.saliency(f, x, abs=False)
    np.testing.assert_allclose(jaxattr.saliency(f, x), np.abs(signed), rtol=0, atol=0)
    np.testing.assert_allclose(jaxattr.input_x_gradient(f, x), signed * x[None], rtol=1e-6)
    # per-output rows equal jax.grad of each output separately
    for t in range(3):
        gt = jax.grad(lambda z: f(z)[..., t].sum())(x)
        np.testing.assert_allclose(signed[t], gt, rtol=1e-6, atol=1e-7)


def test_pytree_inputs_and_aux():
    def f(x):
        s = jnp.stack([jnp.sum(x["a"] ** 2), jnp.sum(x["a"] * x["b"])])
        return s, {"norm": jnp.linalg.norm(x["b"])}
    x = {"a": jnp.arange(3.0), "b": jnp.ones(3)}
    attr, aux = jaxattr.saliency(f, x, abs=False, has_aux=True)
    np.testing.assert_allclose(attr["a"], [2 * x["a"], x["b"]])
    np.testing.assert_allclose(attr["b"], [np.zeros(3), x["a"]])
    np.testing.assert_allclose(aux["norm"], np.sqrt(3.0), rtol=1e-6)


def test_output_batch_size_chunks_give_same_result():
    f = _mlp(4)
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 5))
    np.testing.assert_allclose(jaxattr.saliency(f, x, output_batch_size=2),
                               jaxattr.saliency(f, x), rtol=1e-5, atol=1e-7)


def test_methods_compose_with_jit_vmap_and_grad():
    f = _mlp(6)
    x = jax.random.normal(jax.random.PRNGKey(7), (4, 1, 3, 5))
    eager = jnp.stack([jaxattr.saliency(f, xi, abs=False) for xi in x])
    vm = jax.jit(jax.vmap(lambda xi: jaxattr.saliency(f, xi, abs=False)))(x)
    np.testing.assert_allclose(vm, eager, rtol=1e-5, atol=1e-7)
    # gradient of an attribution (second order) is finite and matches finite differences
    h = lambda z: jaxattr.input_x_gradient(f, z).sum()
    g = jax.grad(h)(x[0])
    e = np.zeros(x[0].shape, np.float32)
    e[0, 1, 2] = 1e-2
    fd = (h(x[0] + e) - h(x[0] - e)) / 2e-2
    np.testing.assert_allclose(g[0, 1, 2], fd, rtol=3e-2, atol=1e-3)


def test_scalar_scores_give_a_clear_error():
    with pytest.raises(ValueError, match="trailing output axis"):
        jaxattr.saliency(lambda x: x.sum(), jnp.ones(3))


def test_unknown_method_name():
    with pytest.raises(ValueError, match="Unknown attribution method 'salency'"):
        jaxattr.methods.get_method("salency")
