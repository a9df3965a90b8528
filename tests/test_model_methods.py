"""Integrated gradients, layer methods and attention through the model pipeline."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FULL, PROMPTS, SOURCES, TARGETS


def _logprobs(model, target_ids, *, tgt_emb=None, source_ids=None, src_emb=None):
    """Plain forward (jitted, no attribution code) -> log-probabilities [L, V]."""
    tgt = jnp.asarray([target_ids])
    src = None if source_ids is None else jnp.asarray([source_ids])

    @jax.jit
    def run(ad, tgt_emb, src_emb):
        kw = {}
        if src is not None:
            kw = dict(source_ids=src, source_mask=jnp.ones_like(src), source_embeds=src_emb)
        logits = ad.logits(target_ids=tgt, target_mask=jnp.ones_like(tgt),
                           target_embeds=tgt_emb, **kw)
        return jax.nn.log_softmax(logits[0], -1)
    return np.asarray(run(model.adapter, tgt_emb, src_emb))


def _unk_baseline_ids(model, ids):
    tok = model.tokenizer
    unk = tok.unk_token_id if tok.unk_token_id is not None else tok.pad_token_id
    return [i if i in tok.all_special_ids else unk for i in ids]


def test_ig_completeness_decoder_only(gpt2):
    seq = gpt2.attribute(PROMPTS[0], FULL[0], method="integrated_gradients", n_steps=64,
                         attributed_fn="logprob", step_scores=("logprob",))[0]
    ids = seq.target_ids
    base = gpt2.adapter.embed(jnp.asarray([_unk_baseline_ids(gpt2, ids)]))
    lp_x, lp_b = _logprobs(gpt2, ids), _logprobs(gpt2, ids, tgt_emb=base)
    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        change = lp_x[p - 1, ids[p]] - lp_b[p - 1, ids[p]]
        total = np.nansum(seq.target_attributions[:, j])
        assert abs(total - change) <= 1e-3 * abs(change)
        assert abs(seq.step_scores["deltas"][j]) <= 1e-3 * abs(change)


def test_ig_completeness_encoder_decoder(marian):
    seq = marian.attribute(SOURCES[0], TARGETS[0], method="integrated_gradients", n_steps=64,
                           attributed_fn="logprob", attribute_target=True)[0]
    src, tgt = seq.source_ids, seq.target_ids
    ad = marian.adapter
    sb = ad.embed(jnp.asarray([_unk_baseline_ids(marian, src)]), side="encoder")
    tb = ad.embed(jnp.asarray([_unk_baseline_ids(marian, tgt)]))
    lp_x = _logprobs(marian, tgt, source_ids=src)
    lp_b = _logprobs(marian, tgt, tgt_emb=tb, source_ids=src, src_emb=sb)
    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        change = lp_x[p - 1, tgt[p]] - lp_b[p - 1, tgt[p]]
        total = seq.source_attributions[:, j].sum() + np.nansum(seq.target_attributions[:, j])
        assert abs(total - change) <= 1e-3 * abs(change)


def _site_logprob(model, ids, site, value=None):
    """Hand-written site capture/replacement (its own interceptor, not the adapter's)."""
    captured = {}

    def icpt(next_fun, args, kwargs, ctx):
        out = next_fun(*args, **kwargs)
        if ctx.method_name == "__call__" and "/".join(ctx.module.path) == site:
            captured["a"] = out
            if value is not None:
                return value
        return out

    x = jnp.asarray([ids])
    with nn.intercept_methods(icpt):
        logits = model.hf_model(x, params=model.params).logits[0]
    return jax.nn.log_softmax(logits, -1), captured["a"]


def test_layer_gradient_x_activation_equals_hand_written(gpt2):
    site = "transformer/h/1/mlp"
    seq = gpt2.attribute(PROMPTS[1], FULL[1], method="layer_gradient_x_activation", layer=site,
                         attributed_fn="logprob")[0]
    ids = seq.target_ids
    _, act = _site_logprob(gpt2, ids, site)
    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        g = jax.grad(lambda a: _site_logprob(gpt2, ids, site, a)[0][p - 1, ids[p]])(act)
        expect = np.asarray((g * act)[0])
        np.testing.assert_allclose(seq.target_attributions[:p, j], expect[:p], rtol=1e-4,
                                   atol=1e-7)


def test_layer_ig_completeness(gpt2):
    site = "transformer/h/0/mlp"
    seq = gpt2.attribute(PROMPTS[1], FULL[1], method="layer_integrated_gradients", layer=site,
                         n_steps=64, attributed_fn="logprob")[0]
    ids = seq.target_ids
    lp_x, _ = _site_logprob(gpt2, ids, site)
    # the layer baseline is the site's activation for the UNK-baseline input
    base_ids = _unk_baseline_ids(gpt2, ids)
    _, act_b = _site_logprob(gpt2, base_ids, site)
    lp_b, _ = _site_logprob(gpt2, ids, site, act_b)
    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        change = float(lp_x[p - 1, ids[p]] - lp_b[p - 1, ids[p]])
        assert abs(np.nansum(seq.target_attributions[:, j]) - change) <= 1e-3 * abs(change)


def test_attention_is_the_models_attention(gpt2, marian):
    seq = gpt2.attribute(PROMPTS[1], FULL[1], method="attention")[0]
    att = gpt2.hf_model(jnp.asarray([seq.target_ids]), params=gpt2.params,
                        output_attentions=True).attentions
    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        for layer in range(len(att)):
            np.testing.assert_allclose(seq.target_attributions[:p, j, layer],
                                       np.asarray(att[layer][0, :, p - 1, :p]).T, rtol=1e-5,
                                       atol=1e-7)
        np.testing.assert_allclose(np.nansum(seq.target_attributions[:, j], 0), 1.0, rtol=1e-5)
    enc = marian.attribute(SOURCES[0], TARGETS[0], method="attention")[0]
    np.testing.assert_allclose(enc.source_attributions.sum(0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("method,kw", [
    ("integrated_gradients", {"n_steps": 8}),
    ("layer_integrated_gradients", {"n_steps": 8, "layer": "transformer/h/1"}),
    ("attention", {}),
    ("occlusion", {}),
    ("gradient_shap", {"n_samples": 3}),
    ("sequential_integrated_gradients", {"n_steps": 3}),
])
def test_batch_invariance_and_jit(gpt2, method, kw):
    batched = gpt2.attribute(PROMPTS, FULL, method=method, step_scores=("probability",), **kw)
    for i in (0, 2):
        # eager (jit=False) only where it is cheap; jit = eager for the gradient methods is
        # covered in test_pipeline.py
        alone = gpt2.attribute(PROMPTS[i], FULL[i], method=method,
                               jit=not (method == "attention" and i == 0),
                               step_scores=("probability",), **kw)[0]
        a, b = batched[i].target_attributions, alone.target_attributions
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) <= 1e-5 * np.nanmax(np.abs(b))


def test_internal_batch_size_does_not_change_pipeline_results(marian):
    a = marian.attribute(SOURCES[0], TARGETS[0], method="integrated_gradients", n_steps=6)[0]
    b = marian.attribute(SOURCES[0], TARGETS[0], method="integrated_gradients", n_steps=6,
                         internal_batch_size=4)[0]
    np.testing.assert_allclose(a.source_attributions, b.source_attributions, rtol=1e-5,
                               atol=1e-8)


def test_unknown_layer_lists_paths(gpt2):
    with pytest.raises(ValueError, match=r"No module at layer path 'transformer/h/7'.*transformer/h/0/mlp"):
        gpt2.attribute(PROMPTS[0], FULL[0], method="layer_integrated_gradients",
                       layer="transformer/h/7", n_steps=2)


def test_integrated_gradients_warns_when_it_has_not_converged(gpt2):
    import warnings
    args = (PROMPTS[0], FULL[0])
    with pytest.warns(RuntimeWarning, match="did not converge"):
        gpt2.attribute(*args, method="integrated_gradients", n_steps=2,
                       quadrature="riemann_right", show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = gpt2.attribute(*args, method="integrated_gradients", n_steps=64,
                             show_progress=False)
    assert np.abs(out[0].step_scores["deltas"]).max() < 1e-4
