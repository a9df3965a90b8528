"""DeepLIFT's rescale rule (the default mode): hand-computed cases, summation-to-delta on the
native model family (independent forwards give ``s(x)`` and ``s(baseline)``), the limit
``baseline -> x`` (multipliers -> gradient), layer DeepLIFT, batch invariance."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.methods import deeplift, deeplift_rules as rules, saliency

CKPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "native_side", "ckpt")
PROMPT, TEXT = "The cat sat on", "The cat sat on the mat and"


@functools.lru_cache(maxsize=None)
def _native(family):
    return jaxattr.load_model(os.path.join(CKPT, family))


# ------------------------------------------------------------------ hand-computed cases
def test_relu_mlp_by_hand():
    # f(x) = w2 · relu(W1 x + b1), x = (1, 2), x' = (0, 0):
    # z = (-1, 3), z' = (0, -1); relu: (0, 3) vs (0, 0); rescale multipliers 0/(-1) = 0 and
    # 3/4; attributions Δx_i · Σ_j w2_j m_j W1_ji = (1·0.75·2, 2·0.75·1) = (1.5, 1.5), summing
    # to f(x) − f(x') = 3. The gradient at x (relu' = (0, 1)) would give (2, 2).
    W1, b1, w2 = jnp.asarray([[1.0, -1.0], [2.0, 1.0]]), jnp.asarray([0.0, -1.0]), jnp.ones(2)
    x, ref = jnp.asarray([1.0, 2.0]), jnp.zeros(2)

    def f(v):
        return (w2 @ rules.relu(W1 @ v + b1))[None]

    np.testing.assert_allclose(deeplift(f, x, ref), [[1.5, 1.5]], rtol=1e-6)
    np.testing.assert_allclose(deeplift(f, x, ref, multiply_by_inputs=False), [[1.5, 0.75]],
                               rtol=1e-6)
    np.testing.assert_allclose(deeplift(f, x, ref, mode="captum"), [[2.0, 2.0]], rtol=1e-6)


def test_product_and_tanh_by_hand():
    # a·b at (2, 3) against (0, 1): Δ(ab) = 6; midpoints ā = 1, b̄ = 2, so a gets b̄·Δa = 4 and
    # b gets ā·Δb = 2.
    def f(v):
        return rules.product(jnp.multiply, v[0], v[1])[None]

    attr, delta = deeplift(f, jnp.asarray([2.0, 3.0]), jnp.asarray([0.0, 1.0]),
                           return_convergence_delta=True)
    np.testing.assert_allclose(attr, [[4.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(delta, [0.0], atol=1e-6)
    # tanh from 0 to 1: multiplier tanh(1)/1
    m = deeplift(lambda v: rules.tanh(v), jnp.ones(1), jnp.zeros(1), multiply_by_inputs=False)
    np.testing.assert_allclose(m, [[0.7615941559557649]], rtol=1e-6)


def test_rules_are_plain_operations_outside_a_pair():
    z = jnp.linspace(-3.0, 3.0, 7)
    for rule, plain in ((rules.gelu, lambda t: jax.nn.gelu(t, approximate=False)),
                        (rules.silu, jax.nn.silu), (rules.sigmoid, jax.nn.sigmoid),
                        (rules.softmax, jax.nn.softmax), (rules.log_softmax, jax.nn.log_softmax)):
        np.testing.assert_array_equal(rule(z), plain(z))
        np.testing.assert_allclose(jax.jacobian(rule)(z), jax.jacobian(plain)(z), rtol=1e-6)


def test_softmax_and_log_softmax_sum_to_delta():
    kx, kr, kw = jax.random.split(jax.random.PRNGKey(0), 3)
    x, ref = jax.random.normal(kx, (6,)), jax.random.normal(kr, (6,))
    W = jax.random.normal(kw, (5, 6))

    def f(v):
        h = rules.gelu_tanh(W @ v)
        return jnp.concatenate([rules.softmax(h)[:2], rules.log_softmax(h)[3:]])

    attr, delta = jax.jit(lambda x: deeplift(f, x, ref, return_convergence_delta=True))(x)
    change = f(x) - f(ref)
    assert float(jnp.abs(change).min()) > 1e-3  # a real change to explain
    np.testing.assert_allclose(attr.sum(-1), change, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(delta, 0.0, atol=1e-6)


# ------------------------------------------------------------------ native family
FAMILIES = ("llama", "gemma2", "qwen3", "olmo2")  # SiLU/GELU-tanh, softcaps, QK norms, norms


def _ids(model, text):
    ids = jnp.asarray([model.tokenizer(text)["input_ids"]], jnp.int32)
    return ids, jnp.ones_like(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_summation_to_delta_on_native_logits(family):
    """Functional form on the native forward: last position's logits of 3 tokens."""
    model = _native(family)
    fns = model.adapter
    ids, mask = _ids(model, TEXT)
    x = fns.embed(ids)
    ref = 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype)

    def score(e):
        return fns.forward(target_ids=ids, target_mask=mask, target_embeds=e)["logits"][0, -1, :3]

    attr, delta = jax.jit(lambda e: deeplift(score, e, ref, return_convergence_delta=True))(x)
    change = jax.jit(lambda a, b: score(a) - score(b))(x, ref)  # plain forwards
    np.testing.assert_allclose(attr.reshape(3, -1).sum(-1), change,
                               atol=1e-4 * float(jnp.abs(change).max()))
    assert float(jnp.abs(delta).max()) <= 1e-4 * float(jnp.abs(change).max())


@pytest.mark.parametrize("family", ("gemma2",))
def test_summation_to_delta_through_attribute(family):
    """model.attribute on the probability of each generated token, zero baseline: Σ
    attributions = p(x) − p(0), p(0) from a plain forward of the zero embeddings."""
    model = _native(family)
    out = model.attribute(PROMPT, TEXT, method="deeplift", baseline="zeros",
                          step_scores=("probability",), show_progress=False)[0]
    a = np.nan_to_num(out.target_attributions)
    total = a.reshape(a.shape[0], a.shape[1], -1).sum(axis=(0, 2))
    ids, mask = _ids(model, TEXT)
    logits = model.adapter.forward(target_ids=ids, target_mask=mask,
                                   target_embeds=jnp.zeros_like(model.adapter.embed(ids)))["logits"]
    n_prompt = len(model.tokenizer(PROMPT)["input_ids"])
    steps = np.arange(n_prompt, ids.shape[1])
    p0 = np.asarray(jax.nn.softmax(logits[0, steps - 1], -1))[np.arange(len(steps)),
                                                                np.asarray(ids[0, steps])]
    change = out.step_scores["probability"] - p0
    assert np.abs(change).max() > 1e-3
    np.testing.assert_allclose(total, change, atol=1e-4 * np.abs(change).max())
    np.testing.assert_allclose(out.step_scores["deltas"], 0.0, atol=1e-4 * np.abs(change).max())


def test_multipliers_tend_to_the_gradient_as_the_baseline_nears_the_input():
    model = _native("llama")
    fns = model.adapter
    ids, mask = _ids(model, PROMPT)
    x = fns.embed(ids)

    def score(e):
        return fns.forward(target_ids=ids, target_mask=mask, target_embeds=e)["logits"][0, -1, :2]

    near = x + 1e-3 * jax.random.normal(jax.random.PRNGKey(2), x.shape, x.dtype)
    grad, m, far = jax.jit(lambda x, near: (
        saliency(score, x, abs=False),
        deeplift(score, x, near, multiply_by_inputs=False),
        deeplift(score, x, jnp.zeros_like(x), multiply_by_inputs=False)))(x, near)
    scale = float(jnp.abs(grad).max())
    assert float(jnp.abs(m - grad).max()) <= 1e-2 * scale
    assert float(jnp.abs(far - grad).max()) >= 1e-1 * scale  # the rule matters far away


def test_batch_invariance():
    model = _native("llama")
    texts = [TEXT, "Kim has a red ball and a cup"]
    prompts = [PROMPT, "Kim has"]
    batched = model.attribute(prompts, texts, method="deeplift", show_progress=False)
    for i in range(2):
        alone = model.attribute(prompts[i], texts[i], method="deeplift", show_progress=False)[0]
        a, b = batched[i].target_attributions, alone.target_attributions
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b),
                                   atol=1e-5 * np.nanmax(np.abs(b)))


def test_layer_deeplift_sums_to_the_patched_change():
    """At ``blocks.1.mlp_out``: Σ attributions = s(x) − s(x with the site set to its value
    on the zero-embedding baseline), both from plain forwards."""
    model = _native("qwen3")
    site = "blocks.1.mlp_out"
    assert "layer_deeplift" in jaxattr.list_methods()
    out = model.attribute(PROMPT, TEXT, method="layer_deeplift", layer=site, baseline="zeros",
                          attributed_fn="logit", step_scores=("logit",),
                          show_progress=False)[0]
    fns = model.adapter
    ids, mask = _ids(model, TEXT)
    base_site = fns.forward(target_ids=ids, target_mask=mask,
                            target_embeds=jnp.zeros_like(fns.embed(ids)),
                            capture=(site,))["captured"][site]
    logits = fns.forward(target_ids=ids, target_mask=mask,
                         patch={site: lambda v: base_site})["logits"]
    n_prompt = len(model.tokenizer(PROMPT)["input_ids"])
    steps = np.arange(n_prompt, ids.shape[1])
    patched = np.asarray(logits[0, steps - 1])[np.arange(len(steps)), np.asarray(ids[0, steps])]
    change = out.step_scores["logit"] - patched
    a = np.nan_to_num(out.target_attributions)
    total = a.reshape(a.shape[0], a.shape[1], -1).sum(axis=(0, 2))
    assert np.abs(change).max() > 1e-2
    np.testing.assert_allclose(total, change, atol=1e-4 * np.abs(change).max())
