"""The split-head backward: step-separable scores with a cheap VJP, and the pipeline using it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import pipeline
from jaxattr.methods import get_method, per_output_grads, step_separable
from jaxattr.targets import TARGETS, get_target, separable

from conftest import FULL, PROMPTS, SOURCES, TARGETS as TGT


def _head_score(h, consts):
    """A small LM head + log-probability target: scores[b, t] reads h[b, t] only."""
    w, bias, ids = consts
    logits = h @ w + bias                                   # [B, T, V]
    return jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], -1)[..., 0]


def _setup(seed=0, B=2, T=3, H=5, V=7):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    h = jax.random.normal(k[0], (B, T, H))
    w = jax.random.normal(k[1], (H, V))
    bias = jax.random.normal(k[2], (V,))
    ids = jax.random.randint(k[3], (B, T), 0, V)
    return h, (w, bias, ids)


def test_values_and_per_output_grads_equal_the_plain_function():
    h, consts = _setup()
    plain = lambda z: _head_score(z, consts)
    wrapped = lambda z: step_separable(_head_score, z, consts)
    np.testing.assert_allclose(wrapped(h), plain(h), rtol=1e-6)
    _, g_plain, _ = per_output_grads(plain, h)
    _, g_wrap, _ = per_output_grads(wrapped, h)
    np.testing.assert_allclose(g_wrap, g_plain, rtol=1e-5, atol=1e-7)
    # an arbitrary (not one-hot) cotangent, and under jit
    ct = jax.random.normal(jax.random.PRNGKey(9), (2, 3))
    vp = jax.vjp(plain, h)[1](ct)[0]
    vw = jax.jit(lambda z, c: jax.vjp(wrapped, z)[1](c)[0])(h, ct)
    np.testing.assert_allclose(vw, vp, rtol=1e-5, atol=1e-7)


def test_gradient_of_an_attribution_through_the_wrapper():
    """Second order: d/d(head weights) of a function of the per-output input gradients."""
    h, (w, bias, ids) = _setup(1)

    def attribution_norm(w, bias, fn):
        _, g, _ = per_output_grads(lambda z: fn(z, (w, bias, ids)), h)
        return jnp.sum((g * h) ** 2)

    wrapped = lambda z, c: step_separable(_head_score, z, c)
    gp = jax.grad(attribution_norm, argnums=(0, 1))(w, bias, _head_score)
    gw = jax.grad(attribution_norm, argnums=(0, 1))(w, bias, wrapped)
    for a, b in zip(gw, gp):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_matches_finite_differences():
    h, consts = _setup(2, B=1, T=2, H=3, V=4)
    f = lambda z: step_separable(_head_score, z, consts)[0, 1]
    g = jax.grad(f)(h)
    eps = 1e-3
    for idx in [(0, 1, 0), (0, 1, 2), (0, 0, 1)]:
        e = jnp.zeros_like(h).at[idx].set(eps)
        fd = (f(h + e) - f(h - e)) / (2 * eps)
        np.testing.assert_allclose(g[idx], fd, rtol=2e-2, atol=1e-4)


def test_builtin_targets_are_separable_and_custom_ones_opt_in():
    assert all(getattr(fn, "separable", False) for fn in TARGETS.values())
    custom = lambda logits, batch: logits.max(-1)
    assert not getattr(custom, "separable", False)
    assert separable(custom) is custom and custom.separable


def _attrs(out):
    return [(seq.source_attributions, seq.target_attributions) for seq in out]


def _assert_same(a, b, rtol=1e-5):
    for (sa, ta), (sb, tb) in zip(_attrs(a), _attrs(b)):
        for x, y in ((sa, sb), (ta, tb)):
            if x is None:
                assert y is None
                continue
            scale = np.nanmax(np.abs(x))
            np.testing.assert_allclose(np.nan_to_num(y), np.nan_to_num(x), rtol=0,
                                       atol=rtol * scale)
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y))


@pytest.mark.parametrize("method,kw", [("saliency", {}),
                                       ("integrated_gradients", {"n_steps": 8})])
def test_pipeline_split_head_equals_full_backward_decoder_only(gpt2, method, kw):
    a = gpt2.attribute(PROMPTS, FULL, method=method, show_progress=False, **kw)
    b = gpt2.attribute(PROMPTS, FULL, method=method, show_progress=False, split_head=False,
                       **kw)
    _assert_same(a, b)


@pytest.mark.parametrize("target", ["logprob", "contrast_prob_diff"])
def test_pipeline_split_head_equals_full_backward_encoder_decoder(marian, target):
    """Marian adds final_logits_bias after its head: made non-zero so the offset matters."""
    params = dict(marian.adapter.params)
    bias = jax.random.normal(jax.random.PRNGKey(3), params["final_logits_bias"].shape)
    model = marian.with_params(dict(params, final_logits_bias=bias))
    kw = dict(attributed_fn=target, attribute_target=True, show_progress=False)
    if target == "contrast_prob_diff":
        kw["contrast_targets"] = ["Sam has a red cup", "The dog sat", "A tiny model"]
    a = model.attribute(SOURCES, TGT, **kw)
    b = model.attribute(SOURCES, TGT, split_head=False, **kw)
    _assert_same(a, b)


def test_split_head_cuts_flops_and_memory(gpt2):
    """The head's backward runs once: fewer FLOPs in the compiled program, no more memory."""
    from jaxattr.pipeline import compiled_attribute
    costs = {}
    for split in (True, False):
        prep = gpt2.prepare(PROMPTS, FULL, method="saliency", split_head=split)
        batch = prep.batch(0)
        compiled = compiled_attribute(gpt2.adapter, batch, prep.baseline,
                                      **prep.spec.pipeline_kwargs())
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        costs[split] = (cost["flops"], compiled.memory_analysis().temp_size_in_bytes)
    B, T = batch.step_mask.shape
    H, V = gpt2.hf_model.config.n_embd, gpt2.hf_model.config.vocab_size
    # at least (T - 1) of the T backward matmuls through the [H, V] head are gone
    assert costs[False][0] - costs[True][0] >= 0.9 * (T - 1) * 2 * B * T * H * V
    assert costs[True][1] <= costs[False][1]


def test_custom_target_marked_separable_gives_the_same_attributions(gpt2):
    def top_logit_gap(logits, batch):   # a custom, per-step score
        top2 = jax.lax.top_k(logits, 2)[0]
        return top2[..., 0] - top2[..., 1]

    plain = gpt2.attribute(PROMPTS, FULL, attributed_fn=top_logit_gap, show_progress=False)
    marked = gpt2.attribute(PROMPTS, FULL, attributed_fn=separable(
        lambda logits, batch: top_logit_gap(logits, batch)), show_progress=False)
    _assert_same(marked, plain)


def test_gradient_of_a_pipeline_attribution_wrt_parameters(marian):
    """Second order through the split head, including final_logits_bias (added after the head)."""
    model = marian
    mb = model.prepare(SOURCES[:1], TGT[:1], method="input_x_gradient").batch(0)

    def loss(params, split):
        res = pipeline.attribute_batch(
            model.adapter.replace(params=params), mb, method=get_method("input_x_gradient"),
            target_fn=get_target("probability"), attribute_source=True,
            attribute_target=False, split_head=split, jit=False)
        return jnp.sum(res.source_attributions ** 2)

    g_on = jax.jit(jax.grad(loss), static_argnums=1)(model.adapter.params, True)
    g_off = jax.jit(jax.grad(loss), static_argnums=1)(model.adapter.params, False)
    assert float(jnp.abs(g_off["final_logits_bias"]).max()) > 0
    for x, y in zip(jax.tree_util.tree_leaves(g_on), jax.tree_util.tree_leaves(g_off)):
        scale = float(jnp.abs(y).max())
        if scale > 1e-9:   # some biases have exactly-zero true gradients (softmax invariance)
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-4 * scale)
