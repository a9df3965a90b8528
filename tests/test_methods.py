"""Attribution methods on small pure-JAX functions, each checked against an independent computation.

The model is a 2-layer tanh MLP that mixes positions: ``x[B, L, H] -> scores[B, T]``. Expected
values come from ``jax.jacrev``, finite differences, hand-written Python loops or closed forms,
never from the code under test.
"""
import contextlib
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.methods import (METHODS, get_method, needs_of, gradient_shap, input_x_gradient,
                             integrated_gradients, occlusion, quadrature, saliency,
                             sequential_integrated_gradients, smoothgrad, smoothgrad_sq, vargrad)

B, L, H, D, T = 2, 5, 4, 6, 3
LA = 3  # pytree split: x["a"] = x[:, :LA], x["b"] = x[:, LA:]
TOL = dict(rtol=2e-5, atol=2e-6)

_rng = np.random.default_rng(0)
W1 = _rng.normal(size=(H, D)) / np.sqrt(H)
B1 = _rng.normal(size=(D,)) * 0.1
W2 = _rng.normal(size=(L * D, T)) / np.sqrt(L * D) * 2
X = _rng.normal(size=(B, L, H))
BASE = _rng.normal(size=(B, L, H)) * 0.3


def mlp(x):
    """``[..., L, H] -> [..., T]``; the weights take x's float precision at trace time."""
    dt = x.dtype
    h = jnp.tanh(x @ jnp.asarray(W1, dt) + jnp.asarray(B1, dt))
    return jnp.tanh(h.reshape(x.shape[:-2] + (-1,)) @ jnp.asarray(W2, dt))


def mlp_aux(x):
    s = mlp(x)
    return s, {"double": 2 * s}


def mlp_tree(xd):
    return mlp(jnp.concatenate([xd["a"], xd["b"]], axis=-2))


def split(a, axis=-2):
    """A ``[..., L, H]`` array as the pytree ``{"a": ..., "b": ...}``."""
    a = jnp.asarray(a)
    return {"a": jax.lax.slice_in_dim(a, 0, LA, axis=axis % a.ndim),
            "b": jax.lax.slice_in_dim(a, LA, a.shape[axis], axis=axis % a.ndim)}


def x32():
    return jnp.asarray(X, jnp.float32), jnp.asarray(BASE, jnp.float32)


def enable_x64():
    ctx = getattr(__import__("jax.experimental").experimental, "enable_x64", None)
    if ctx is not None:
        return ctx()
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    return contextlib.nullcontext()


@functools.partial(jax.jit, static_argnums=0)
def jacobian_grads(f, x):
    """Independent per-output per-example gradients ``[T, B, L, H]`` from ``jax.jacrev``."""
    jac = jax.jacrev(f)(x)  # [B, T, B, L, H]
    idx = jnp.arange(x.shape[0])
    return jnp.moveaxis(jac[idx, :, idx], 1, 0)


def rkey(seed):
    """A key whose implementation compiles fast on CPU (threefry adds ~1-2 s per program);
    methods take any key. Integer seeds (threefry) are tested where it matters."""
    return jax.random.key(seed, impl="rbg")


def jitted(method, f, /, **static):
    """``method`` jitted over ``(x, baseline, key)``: one XLA compile instead of op-by-op eager
    dispatch (eager is checked against jit in ``test_jit_equals_eager``); keys do not retrace."""
    takes_baseline = needs_of(method).baseline

    @jax.jit
    def run(x, base=None, key=None):
        kw = dict(static)
        if takes_baseline:
            kw["baseline"] = base
        if key is not None:
            kw["key"] = key
        return method(f, x, **kw)
    return run


def attribute(method, f, x, base=None, key=None, /, **static):
    return jitted(method, f, **static)(x, base, key)


def hand_ig(f, x, base, n_steps, rule):
    alphas, weights = quadrature(n_steps, rule)
    total = 0
    for a, w in zip(alphas, weights):
        total = total + w * jacobian_grads(f, base + a * (x - base))
    return total * (x - base)[None]


# ---------------------------------------------------------------------------------------------
# Saliency / input x gradient


def test_saliency_matches_central_finite_differences_float64():
    with enable_x64():
        x = jnp.asarray(X, jnp.float64)
        if x.dtype != jnp.float64:
            pytest.skip("float64 unavailable")
        eps = 1e-6
        eye = np.eye(x.size).reshape((x.size,) + x.shape)
        fd = jax.jit(jax.vmap(lambda e: (mlp(x + eps * e) - mlp(x - eps * e)) / (2 * eps)))(eye)
        fd = np.asarray(fd).reshape(x.shape + (B, T))
        # Element (b, l, h) only moves scores[b]: keep that example's row.
        fd = np.moveaxis(np.stack([fd[b, :, :, b, :] for b in range(B)]), -1, 0)  # [T, B, L, H]
        signed, absolute = jax.jit(lambda z: (saliency(mlp, z, abs=False), saliency(mlp, z)))(x)
        assert signed.dtype == jnp.float64
        np.testing.assert_allclose(signed, fd, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(absolute, np.abs(fd), rtol=1e-7, atol=1e-9)


def test_input_x_gradient_is_x_times_jacobian():
    x, _ = x32()
    expected = jacobian_grads(mlp, x) * x[None]
    np.testing.assert_allclose(attribute(input_x_gradient, mlp, x), expected, **TOL)


# ---------------------------------------------------------------------------------------------
# Integrated gradients


def test_ig_completeness_at_64_gauss_legendre_steps():
    x, base = x32()
    attr = attribute(integrated_gradients, mlp, x, base, n_steps=64)
    change = np.asarray(mlp(x) - mlp(base), np.float64)  # [B, T]
    total = np.asarray(attr, np.float64).sum(axis=(2, 3)).T  # [B, T]
    assert np.max(np.abs(total - change)) / np.max(np.abs(change)) <= 1e-3
    # A wrong path or weighting is far off: the plain input x gradient is not complete.
    ixg = np.asarray(jacobian_grads(mlp, x) * (x - base)[None]).sum(axis=(2, 3)).T
    assert np.max(np.abs(ixg - change)) / np.max(np.abs(change)) > 1e-2


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid", "riemann_left"])
def test_ig_matches_hand_written_quadrature_loop(rule):
    x, base = x32()
    np.testing.assert_allclose(attribute(integrated_gradients, mlp, x, base, n_steps=8,
                                         method=rule),
                               hand_ig(mlp, x, base, 8, rule), **TOL)


def test_ig_default_baseline_is_zeros_and_scalar_baseline_broadcasts():
    x, _ = x32()
    expected = hand_ig(mlp, x, jnp.zeros_like(x), 8, "gausslegendre")
    np.testing.assert_allclose(attribute(integrated_gradients, mlp, x, n_steps=8), expected,
                               **TOL)
    np.testing.assert_allclose(attribute(integrated_gradients, mlp, x, 0.0, n_steps=8),
                               expected, **TOL)


@pytest.mark.parametrize("ibs", [1, 3, 8])
def test_ig_internal_batch_size_does_not_change_results(ibs):
    x, base = x32()
    full = attribute(integrated_gradients, mlp, x, base, n_steps=8)
    np.testing.assert_allclose(
        attribute(integrated_gradients, mlp, x, base, n_steps=8, internal_batch_size=ibs),
        full, **TOL)


def test_ig_convergence_delta_and_aux():
    x, base = x32()
    attr, delta, aux = attribute(integrated_gradients, mlp_aux, x, base, n_steps=64,
                                 return_convergence_delta=True, has_aux=True)
    change = (mlp(x) - mlp(base)).sum(0)  # summed over the batch, [T]
    np.testing.assert_allclose(delta, attr.sum(axis=(1, 2, 3)) - change, rtol=1e-4, atol=1e-6)
    assert delta.shape == (T,)
    assert np.max(np.abs(delta)) < 1e-3 * np.max(np.abs(change))
    np.testing.assert_allclose(aux["double"], 2 * mlp(x), **TOL)
    # With 8 left-Riemann steps the integral is poor and the delta says so.
    _, delta2 = attribute(integrated_gradients, mlp, x, base, n_steps=8, method="riemann_left",
                          return_convergence_delta=True)
    assert np.max(np.abs(delta2)) > 1e-2 * np.max(np.abs(change))


def compiled_temp_bytes(n_steps, ibs):
    """Temp bytes XLA allocates for IG on a model big enough for the steps to dominate."""
    b, l, h, d, t = 2, 16, 64, 256, 4
    k1, k2 = jax.random.split(jax.random.key(0))
    w1 = jax.random.normal(k1, (h, d)) / 8
    w2 = jax.random.normal(k2, (l * d, t)) / 64

    def f(x):
        return jnp.tanh(jnp.tanh(x @ w1).reshape(x.shape[0], -1) @ w2)

    fn = functools.partial(integrated_gradients, f, n_steps=n_steps, internal_batch_size=ibs)
    compiled = jax.jit(fn).lower(jax.ShapeDtypeStruct((b, l, h), jnp.float32)).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend has no memory analysis")
    return analysis.temp_size_in_bytes


def test_ig_chunked_memory_is_bounded_by_chunk_not_steps():
    unchunked_64 = compiled_temp_bytes(64, None)
    chunked_64 = compiled_temp_bytes(64, 4)
    chunked_32 = compiled_temp_bytes(32, 4)
    assert chunked_64 * 4 < unchunked_64
    assert chunked_64 <= 1.1 * chunked_32


# ---------------------------------------------------------------------------------------------
# Sequential integrated gradients


def hand_sig(f, x, base, n_steps, rule):
    """Loop over positions; position i's IG along the path that moves only position i."""
    alphas, weights = quadrature(n_steps, rule)
    out = np.zeros((T,) + x.shape, np.float64)
    for i in range(x.shape[1]):
        g = 0
        for a, w in zip(alphas, weights):
            point = x.at[:, i].set(base[:, i] + a * (x[:, i] - base[:, i]))
            g = g + w * jacobian_grads(f, point)[:, :, i]  # [T, B, H]
        out[:, :, i] = np.asarray(g * (x - base)[None, :, i])
    return out


def test_sig_equals_hand_written_per_position_loop():
    x, base = x32()
    attr = attribute(sequential_integrated_gradients, mlp, x, base, n_steps=4)
    assert attr.shape == (T, B, L, H)
    np.testing.assert_allclose(attr, hand_sig(mlp, x, base, 4, "gausslegendre"), **TOL)
    # Not the same as IG (the MLP couples positions), so the test tells them apart.
    assert not np.allclose(attr, hand_ig(mlp, x, base, 8, "gausslegendre"), atol=1e-3)


def test_sig_position_sums_equal_the_occlusion_score_change():
    x, base = x32()
    attr = attribute(sequential_integrated_gradients, mlp, x, base, n_steps=16)
    for i in range(L):
        change = mlp(x) - mlp(x.at[:, i].set(base[:, i]))  # [B, T]
        np.testing.assert_allclose(attr[:, :, i].sum(-1).T, change, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ibs", [1, 7, 30])
def test_sig_internal_batch_size_does_not_change_results(ibs):
    x, base = x32()
    full = attribute(sequential_integrated_gradients, mlp, x, base, n_steps=4)
    np.testing.assert_allclose(attribute(sequential_integrated_gradients, mlp, x, base,
                                         n_steps=4, internal_batch_size=ibs), full, **TOL)


def test_sig_token_axis_and_vmap():
    x, base = x32()
    expected = hand_sig(mlp, x, base, 4, "gausslegendre")
    # Token axis first ([L, B, H]) with a function that transposes back.
    got = attribute(sequential_integrated_gradients, lambda z: mlp(jnp.swapaxes(z, 0, 1)),
                    jnp.swapaxes(x, 0, 1), jnp.swapaxes(base, 0, 1), n_steps=4, token_axis=0)
    np.testing.assert_allclose(jnp.swapaxes(got, 1, 2), expected, **TOL)
    # One unbatched example at a time under vmap: x[L, H] -> scores[T].
    per_example = jax.jit(jax.vmap(lambda xi, bi: sequential_integrated_gradients(
        mlp, xi, bi, n_steps=4)))(x, base)
    np.testing.assert_allclose(jnp.moveaxis(per_example, 0, 1), expected, **TOL)


# ---------------------------------------------------------------------------------------------
# Occlusion


def brute_force_occlusion(f, x, base):
    out = np.zeros((T,) + x.shape, np.float64)
    s = np.asarray(f(x))
    for i in range(x.shape[1]):
        change = s - np.asarray(f(x.at[:, i].set(base[:, i])))  # [B, T]
        out[:, :, i, :] = change.T[:, :, None] / x.shape[-1]
    return out


def test_occlusion_equals_brute_force_loop():
    x, base = x32()
    attr = attribute(occlusion, mlp, x, base)
    np.testing.assert_allclose(attr, brute_force_occlusion(mlp, x, base), **TOL)
    np.testing.assert_allclose(attribute(occlusion, mlp, x),
                               brute_force_occlusion(mlp, x, 0 * x), **TOL)
    # Summing a position's features gives the score change.
    change = mlp(x) - mlp(x.at[:, 2].set(base[:, 2]))
    np.testing.assert_allclose(attr[:, :, 2].sum(-1).T, change, **TOL)


def test_occlusion_runs_one_forward_per_position():
    x, base = x32()
    calls = []

    def counting(z):
        calls.append(z.shape)
        return mlp(z)

    jax.make_jaxpr(lambda z: occlusion(counting, z, base))(x)
    # Traced twice: the clean forward and one vmapped forward over the L positions.
    assert len(calls) == 2


def test_occlusion_internal_batch_size_vmap_and_shape_errors():
    x, base = x32()
    expected = brute_force_occlusion(mlp, x, base)
    np.testing.assert_allclose(attribute(occlusion, mlp, x, base, internal_batch_size=2),
                               expected, **TOL)
    per_example = jax.jit(jax.vmap(lambda xi, bi: occlusion(mlp, xi, bi)))(x, base)
    np.testing.assert_allclose(jnp.moveaxis(per_example, 0, 1), expected, **TOL)
    with pytest.raises(ValueError, match="leading axes"):
        jax.eval_shape(lambda z: occlusion(lambda v: mlp(v).sum(0), z, base), x)
    with pytest.raises(ValueError, match="token_axis"):
        jax.eval_shape(lambda z: occlusion(mlp, z, base, token_axis=3), x)
    with pytest.raises(ValueError, match="token_axis"):
        jax.eval_shape(lambda z: sequential_integrated_gradients(mlp, z, base, token_axis=-4), x)


# ---------------------------------------------------------------------------------------------
# Gradient SHAP


def test_gradient_shap_without_noise_estimates_integrated_gradients():
    """E_α[(x − x') ∂s(x' + α(x − x'))] is IG; the MC error is within 5 standard errors."""
    x, base = x32()
    n = 2000
    got = np.asarray(attribute(gradient_shap, mlp, x, base, rkey(1), n_samples=n, stdevs=0.0))
    # Mean and standard deviation of the integrand over α ~ U(0, 1), by 64-node quadrature.
    alphas, weights = quadrature(64, "gausslegendre")
    vals = np.stack([np.asarray(jacobian_grads(mlp, base + a * (x - base)) * (x - base)[None])
                     for a in alphas])
    mean = np.tensordot(weights, vals, 1)
    std = np.sqrt(np.maximum(np.tensordot(weights, vals ** 2, 1) - mean ** 2, 0))
    tol = 5 * std / np.sqrt(n) + 1e-6
    assert np.all(np.abs(got - mean) <= tol)
    # Discriminative: gradients taken at x alone (α ≡ 1) would be far outside the tolerance.
    assert np.max(np.abs(vals[-1] - mean) / tol) > 10


def quadratic(c):
    """``s_t(x) = c_t Σ x²`` over the last two axes: ``∂s_t/∂x = 2 c_t x``."""
    c = jnp.asarray(c)
    return lambda z: c * jnp.sum(z ** 2, axis=(-2, -1))[..., None]


def test_gradient_shap_noise_scale_matches_closed_form():
    """s_t = c_t Σ x², x' = 0: E[2 c_t α x̃²] = c_t (x² + σ²) with x̃ = x + N(0, σ²)."""
    c = np.asarray([1.0, -0.5])
    x = jnp.asarray(_rng.normal(size=(1, 4, 6)), jnp.float32)
    sigma, n = 1.0, 4000
    got = np.asarray(attribute(gradient_shap, quadratic(c), x, None, rkey(3), n_samples=n,
                               stdevs=sigma))
    xs, cc = np.asarray(x)[None], c[:, None, None, None]
    expected = cc * (xs ** 2 + sigma ** 2)
    # Var(2cαx̃²) <= E[(2cαx̃²)²] = (4c²/3) E[x̃⁴] = (4c²/3)(x⁴ + 6x²σ² + 3σ⁴).
    sd = np.sqrt(4 * cc ** 2 / 3 * (xs ** 4 + 6 * xs ** 2 * sigma ** 2 + 3 * sigma ** 4))
    tol = 5 * sd / np.sqrt(n)
    assert np.all(np.abs(got - expected) <= tol)
    assert np.max(np.abs(cc * sigma ** 2) / tol) > 3  # a wrong noise scale would be caught


def test_gradient_shap_key_determinism_and_batching():
    x, base = x32()
    kw = dict(n_samples=7, stdevs=0.2)
    run = jitted(gradient_shap, mlp, **kw)
    a = run(x, base, rkey(5))
    np.testing.assert_array_equal(a, run(x, base, rkey(5)))
    assert not np.allclose(a, run(x, base, rkey(6)))
    # An int seed means jax.random.key(seed), and chunking does not change the draws (for
    # vmap-invariant key implementations such as threefry, the default; not for rbg).
    np.testing.assert_allclose(
        attribute(gradient_shap, mlp, x, base, key=5, internal_batch_size=3, **kw),
        attribute(gradient_shap, mlp, x, base, jax.random.key(5), **kw), **TOL)
    with pytest.raises(ValueError, match="n_samples"):
        gradient_shap(mlp, x, base, n_samples=0)


def test_integer_seed_means_default_key():
    from jaxattr.methods._common import as_key
    for seed in (0, 5, np.int64(7)):
        np.testing.assert_array_equal(jax.random.key_data(as_key(seed)),
                                      jax.random.key_data(jax.random.key(int(seed))))
    k = rkey(3)
    assert as_key(k) is k


# ---------------------------------------------------------------------------------------------
# Noise tunnel


@pytest.mark.parametrize("base_method,kwargs", [
    (saliency, {}),
    (input_x_gradient, {}),
    (integrated_gradients, {"n_steps": 8}),
    (occlusion, {}),
])
def test_noise_tunnel_without_noise_equals_base_method(base_method, kwargs):
    x, base = x32()
    expected = attribute(base_method, mlp, x, base, **kwargs)
    wrappers = [smoothgrad, smoothgrad_sq, vargrad]
    sg, sq, vg = jax.jit(lambda z, b: [_call(w(base_method, n_samples=3, stdevs=0.0), mlp, z, b,
                                             **kwargs) for w in wrappers])(x, base)
    np.testing.assert_allclose(sg, expected, **TOL)
    np.testing.assert_allclose(sq, np.square(expected), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(vg, 0.0, atol=1e-6)


def test_noise_tunnel_statistics_match_closed_form():
    """s_t = c_t Σ x²: the signed gradient 2c_t x̃ has mean 2c_t x and variance 4c_t² σ²."""
    c = np.asarray([1.0, -0.5])
    x = jnp.asarray(_rng.normal(size=(1, 4, 6)), jnp.float32)
    sigma, n = 0.3, 3000
    grad = functools.partial(saliency, abs=False)
    sg, vg, sq = jax.jit(lambda z, k: [w(grad, n_samples=n, stdevs=sigma)(quadratic(c), z, key=k)
                                       for w in (smoothgrad, vargrad, smoothgrad_sq)])(x, rkey(0))
    xs, cc = np.asarray(x)[None], c[:, None, None, None]
    assert np.all(np.abs(sg - 2 * cc * xs) <= 5 * 2 * np.abs(cc) * sigma / np.sqrt(n))
    var = 4 * cc ** 2 * sigma ** 2
    assert np.all(np.abs(vg - var) <= 5 * np.sqrt(2 / n) * var + 1e-5)
    # E[(2cx̃)²] = 4c²(x² + σ²); sd of (2cx̃)² is 4c² sqrt(4x²σ² + 2σ⁴).
    sd = 4 * cc ** 2 * np.sqrt(4 * xs ** 2 * sigma ** 2 + 2 * sigma ** 4)
    assert np.all(np.abs(sq - 4 * cc ** 2 * (xs ** 2 + sigma ** 2)) <= 5 * sd / np.sqrt(n))


def test_noise_tunnel_keys_overrides_and_signature():
    x, base = x32()
    sg = smoothgrad(saliency, n_samples=4, stdevs=0.3)
    run = jitted(sg, mlp)
    a = run(x, None, rkey(2))
    np.testing.assert_array_equal(a, run(x, None, rkey(2)))
    assert not np.allclose(a, run(x, None, rkey(3)))
    sal = attribute(saliency, mlp, x)
    assert not np.allclose(a, sal)
    # Settings can be overridden per call.
    np.testing.assert_allclose(attribute(sg, mlp, x, stdevs=0.0), sal, **TOL)
    np.testing.assert_allclose(attribute(sg, mlp, x, None, rkey(2), n_samples=1),
                               attribute(smoothgrad(saliency, n_samples=1, stdevs=0.3), mlp, x,
                                         None, rkey(2)), **TOL)
    # The default int seed 0 means jax.random.key(0), and chunking does not change the draws
    # (for vmap-invariant key implementations such as threefry, the default).
    np.testing.assert_allclose(attribute(sg, mlp, x, nt_samples_batch_size=3),
                               attribute(sg, mlp, x, None, jax.random.key(0)), **TOL)
    # The same wrapping is the same function (no recompiles in a jitted pipeline).
    assert smoothgrad(saliency, n_samples=4, stdevs=0.3) is sg
    assert smoothgrad(saliency, n_samples=5, stdevs=0.3) is not sg
    # The wrapper declares the base method's needs and options plus the noise settings (a
    # pipeline routes by them); no forged signature.
    needs = needs_of(smoothgrad(integrated_gradients))
    assert needs.baseline and needs.key and not needs.completeness
    assert {"n_steps", "internal_batch_size", "n_samples", "stdevs", "key",
            "nt_samples_batch_size"} <= needs.options
    assert not needs_of(sg).baseline and needs_of(sg).key_default == 0
    assert not hasattr(sg, "__signature__")
    with pytest.raises(ValueError, match="already takes"):
        smoothgrad(gradient_shap)
    with pytest.raises(ValueError, match="noise tunnel type"):
        jaxattr.methods.noise_tunnel(saliency, "smoothgrad_cubed")


# ---------------------------------------------------------------------------------------------
# Properties shared by every method

DETERMINISTIC = {
    "saliency": (saliency, {}),
    "input_x_gradient": (input_x_gradient, {}),
    "integrated_gradients": (integrated_gradients, {"n_steps": 8}),
    "sequential_integrated_gradients": (sequential_integrated_gradients, {"n_steps": 4}),
    "occlusion": (occlusion, {}),
    "gradient_shap_no_noise": (gradient_shap, {"n_samples": 3, "stdevs": 0.0, "key": rkey(7)}),
    "smoothgrad_ig_no_noise": (smoothgrad(integrated_gradients, n_samples=2, stdevs=0.0),
                               {"n_steps": 8}),
}
ALL = dict(DETERMINISTIC, **{
    "smoothgrad": (smoothgrad(saliency, n_samples=3, key=rkey(0)), {}),
    "vargrad": (vargrad(input_x_gradient, n_samples=3), {"key": rkey(1)}),
})


def _call(method, f, x, base, **kw):
    if needs_of(method).baseline:
        kw["baseline"] = base
    return method(f, x, **kw)


@pytest.mark.parametrize("name", sorted(ALL))
def test_jit_equals_eager(name):
    method, kw = ALL[name]
    x, base = x32()
    eager = _call(method, mlp, x, base, **kw)
    jitted_out = jax.jit(lambda z, b: _call(method, mlp, z, b, **kw))(x, base)
    assert eager.shape == (T, B, L, H)
    np.testing.assert_allclose(jitted_out, eager, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_pytree_input_equals_split_array_result(name):
    method, kw = DETERMINISTIC[name]
    x, base = x32()
    expected, got = jax.jit(lambda z, b: (split(_call(method, mlp, z, b, **kw), axis=-2),
                                          _call(method, mlp_tree, split(z), split(b), **kw)))(
        x, base)
    assert set(got) == {"a", "b"}
    for k in ("a", "b"):
        assert got[k].shape == expected[k].shape
        np.testing.assert_allclose(got[k], expected[k], **TOL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_has_aux_returns_aux_and_same_attributions(name):
    method, kw = ALL[name]
    x, base = x32()
    (attr, aux), plain = jax.jit(lambda z, b: (_call(method, mlp_aux, z, b, has_aux=True, **kw),
                                               _call(method, mlp, z, b, **kw)))(x, base)
    np.testing.assert_allclose(aux["double"], 2 * mlp(x), **TOL)
    np.testing.assert_allclose(attr, plain, **TOL)


def test_registry():
    for name in ("saliency", "input_x_gradient", "integrated_gradients", "gradient_shap",
                 "sequential_integrated_gradients", "occlusion", "deeplift", "lime"):
        assert get_method(name) is METHODS[name]
        assert getattr(jaxattr, name) is METHODS[name]
    assert get_method(smoothgrad(saliency)) is smoothgrad(saliency)
    with pytest.raises(ValueError, match="Unknown attribution method"):
        get_method("smoothgrad_saliency")
    for name, method in METHODS.items():
        params = inspect.signature(method).parameters
        assert "has_aux" in params and list(params)[:2] == ["score_fn", "x"], name
        for p in params.values():  # static kwargs must be hashable
            if p.default is not inspect.Parameter.empty:
                hash(p.default)
