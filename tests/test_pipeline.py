"""The one-pass pipeline against independent computations on tiny real architectures."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr import pipeline

from conftest import FULL, PROMPTS, SOURCES, TARGETS


def _prefix_logprob_grad(model, target_ids, p, source_ids=None):
    """Gradient of log p(target[p] | target[:p] (, source)) w.r.t. the embeddings, computed on
    the prefix alone with jax.grad (no one-pass trick, no vmapped cotangents)."""
    ad = model.adapter
    prefix = jnp.asarray([target_ids[:p]], jnp.int32)
    tgt_e = ad.embed(prefix)
    kw = {}
    if source_ids is not None:
        src = jnp.asarray([source_ids], jnp.int32)
        kw = dict(source_ids=src, source_mask=jnp.ones_like(src))

    def f(src_e, tgt_e):
        logits = ad.logits(target_ids=prefix, target_mask=jnp.ones_like(prefix),
                           target_embeds=tgt_e,
                           source_embeds=src_e, **kw)
        return jax.nn.log_softmax(logits[0, -1])[target_ids[p]]

    if source_ids is None:
        return None, jax.jit(jax.grad(lambda t: f(None, t)))(tgt_e)[0]
    src_e = ad.embed(kw["source_ids"], side="encoder")
    gs, gt = jax.jit(jax.grad(f, argnums=(0, 1)))(src_e, tgt_e)
    return gs[0], gt[0]


def test_one_pass_equals_per_step_decoder_only(gpt2):
    out = gpt2.attribute(PROMPTS[1], FULL[1], attributed_fn="logprob", abs=False)
    seq = out[0]
    assert seq.target_attributions.shape[1] == seq.attr_pos_end - seq.attr_pos_start
    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        _, g = _prefix_logprob_grad(gpt2, seq.target_ids, p)
        np.testing.assert_allclose(seq.target_attributions[:p, j], g, rtol=1e-4, atol=1e-6)
        assert np.isnan(seq.target_attributions[p:, j]).all()


def test_one_pass_equals_per_step_encoder_decoder(marian):
    out = marian.attribute(SOURCES[1], TARGETS[1], attributed_fn="logprob", abs=False,
                           attribute_target=True)
    seq = out[0]
    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        gs, gt = _prefix_logprob_grad(marian, seq.target_ids, p, seq.source_ids)
        np.testing.assert_allclose(seq.source_attributions[:, j], gs, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(seq.target_attributions[:p, j], gt, rtol=1e-4, atol=1e-6)
        assert np.isnan(seq.target_attributions[p:, j]).all()


def test_step_scores_are_the_attributed_probabilities(gpt2):
    seq = gpt2.attribute(PROMPTS[1], FULL[1], step_scores=("probability", "logprob"))[0]
    ids = jnp.asarray([seq.target_ids])
    logits = gpt2.hf_model(ids, params=gpt2.params).logits[0]
    lp = jax.nn.log_softmax(logits, -1)
    expect = [float(lp[p - 1, seq.target_ids[p]]) for p in
              range(seq.attr_pos_start, seq.attr_pos_end)]
    np.testing.assert_allclose(seq.step_scores["logprob"], expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seq.step_scores["probability"], np.exp(expect), rtol=1e-5)


def test_finite_differences_on_a_model(gpt2):
    seq = gpt2.attribute(PROMPTS[1], FULL[1], attributed_fn="logprob", abs=False)[0]
    ad = gpt2.adapter
    ids = jnp.asarray([seq.target_ids])
    emb = np.asarray(ad.embed(ids), np.float32)
    j, p = 1, seq.attr_pos_start + 1

    def score(e):
        logits = ad.logits(target_ids=ids, target_mask=jnp.ones_like(ids),
                           target_embeds=jnp.asarray(e))
        return float(jax.nn.log_softmax(logits[0, p - 1])[seq.target_ids[p]])

    eps = 1e-2
    for (r, h) in [(0, 0), (p - 1, 3), (1, 17)]:
        e = np.zeros_like(emb)
        e[0, r, h] = eps
        fd = (score(emb + e) - score(emb - e)) / (2 * eps)
        np.testing.assert_allclose(seq.target_attributions[r, j, h], fd, rtol=2e-2, atol=5e-4)


def _assert_same(a, b, rtol=1e-5):
    for x, y in [(a.source_attributions, b.source_attributions),
                 (a.target_attributions, b.target_attributions)]:
        if x is None:
            assert y is None
            continue
        assert x.shape == y.shape
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        scale = np.nanmax(np.abs(y))
        assert np.nanmax(np.abs(x - y)) <= rtol * scale
    for k in a.step_scores:
        np.testing.assert_allclose(a.step_scores[k], b.step_scores[k], rtol=rtol, atol=1e-7)
    assert a.target == b.target and a.source == b.source


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_padded_batch_equals_one_by_one_decoder_only(gpt2, method):
    batched = gpt2.attribute(PROMPTS, FULL, method=method, step_scores=("probability",))
    for i in range(len(PROMPTS)):
        alone = gpt2.attribute(PROMPTS[i], FULL[i], method=method, step_scores=("probability",))
        _assert_same(batched[i], alone[0])


def test_padded_batch_equals_one_by_one_encoder_decoder(marian):
    batched = marian.attribute(SOURCES, TARGETS, attribute_target=True, batch_size=2,
                               step_scores=("probability",))
    for i in range(len(SOURCES)):
        alone = marian.attribute(SOURCES[i], TARGETS[i], attribute_target=True,
                                 step_scores=("probability",))
        _assert_same(batched[i], alone[0])


def test_jit_equals_eager(gpt2, marian):
    for model, a, b, kw in [(gpt2, PROMPTS[1], FULL[1], {}),
                            (marian, SOURCES[1], TARGETS[1], {"attribute_target": True})]:
        j = model.attribute(a, b, method="input_x_gradient", **kw)
        e = model.attribute(a, b, method="input_x_gradient", jit=False, **kw)
        for x, y in zip(j.sequence_attributions, e.sequence_attributions):
            _assert_same(x, y, rtol=1e-5)


def test_no_retrace_within_a_length_bucket(gpt2, monkeypatch):
    counted = chex.assert_max_traces(pipeline._attribute_impl, n=1)
    monkeypatch.setattr(pipeline, "_attribute_impl", counted)
    # A fresh jit cache entry: batch of 5 rows has never been compiled in this session.
    prompts = ["The cat"] * 5
    gpt2.attribute(prompts, ["The cat sat"] * 5)
    gpt2.attribute(prompts, ["The cat sat on"] * 5)  # other lengths, same buckets
    with pytest.raises(AssertionError):  # a longer bucket does compile again
        gpt2.attribute(prompts, ["The cat sat on the mat while the dog slept near the door"] * 5)
    chex.clear_trace_counter()


def test_new_params_do_not_retrace(gpt2, monkeypatch):
    counted = chex.assert_max_traces(pipeline._attribute_impl, n=1)
    monkeypatch.setattr(pipeline, "_attribute_impl", counted)
    prompts = ["Kim has"] * 6
    a = gpt2.attribute(prompts, ["Kim has a"] * 6)
    other = gpt2.with_params(jax.tree_util.tree_map(lambda p: p * 1.5, gpt2.params))
    b = other.attribute(prompts, ["Kim has a"] * 6)
    assert not np.allclose(np.nan_to_num(a[0].target_attributions),
                           np.nan_to_num(b[0].target_attributions))
    chex.clear_trace_counter()


def test_batch_size_and_order_are_kept(gpt2):
    out = gpt2.attribute(PROMPTS, FULL, batch_size=2, show_progress=False)
    for seq, full in zip(out.sequence_attributions, FULL):
        assert gpt2.tokenizer.convert_tokens_to_string(seq.target) == full


def test_pytree_result_is_usable_in_jit(gpt2):
    out = gpt2.attribute(PROMPTS[:2], FULL[:2])
    res = out.batches[0]
    assert isinstance(res, jaxattr.BatchAttribution)
    total = jax.jit(lambda r: jnp.sum(r.target_attributions * r.target_row_mask[..., None]))(res)
    host = sum(np.nansum(s.target_attributions) for s in out.sequence_attributions)
    np.testing.assert_allclose(total, host, rtol=1e-5)


def test_attr_pos_span(gpt2):
    full = gpt2.attribute(PROMPTS[0], FULL[0], step_scores=("probability",))[0]
    start = full.attr_pos_start + 1
    part = gpt2.attribute(PROMPTS[0], FULL[0], attr_pos_start=start, attr_pos_end=start + 2,
                          step_scores=("probability",))[0]
    assert part.target_attributions.shape[1] == 2
    np.testing.assert_allclose(part.target_attributions, full.target_attributions[:, 1:3],
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(part.step_scores["probability"],
                               full.step_scores["probability"][1:3], rtol=1e-5)


def test_free_generation_is_greedy_and_batched(gpt2, marian):
    out = gpt2.attribute(PROMPTS[:2], generation_args={"max_new_tokens": 3})
    for seq, prompt in zip(out.sequence_attributions, PROMPTS[:2]):
        ids = list(seq.target_ids)
        n_prompt = seq.attr_pos_start
        assert seq.attr_pos_end - n_prompt == 3
        # greedy: every generated token is the argmax given its prefix
        logits = gpt2.hf_model(jnp.asarray([ids]), params=gpt2.params).logits[0]
        assert [int(t) for t in jnp.argmax(logits[n_prompt - 1:-1], -1)] == ids[n_prompt:]
    enc = marian.attribute(SOURCES[:2], generation_args={"max_new_tokens": 4})
    for seq in enc.sequence_attributions:
        assert seq.target_ids[0] == marian.decoder_start_token_id
        assert 1 <= seq.attr_pos_end - 1 <= 4


def test_aggregate_default_columns_sum_to_one(gpt2, marian):
    for out in (gpt2.attribute(PROMPTS[:2], FULL[:2]),
                marian.attribute(SOURCES[:2], TARGETS[:2], attribute_target=True)):
        for seq in out.aggregate().sequence_attributions:
            total = np.nansum(seq.target_attributions, axis=0)
            if seq.source_attributions is not None:
                total = total + np.nansum(seq.source_attributions, axis=0)
            np.testing.assert_allclose(total, 1.0, rtol=1e-5)
