"""Attention rollout (Abnar & Zuidema, 2020): the maths and the model pipeline."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FULL, PROMPTS, SOURCES, TARGETS
from jaxattr.methods import attention_rollout, encoder_decoder_rollout


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


def test_encoder_decoder_rows_sum_to_one_and_masked_source_gets_nothing():
    k = jax.random.split(jax.random.key(1), 3)
    S, T = 5, 4
    src_mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)  # example 1: 2 pads
    enc = jax.nn.softmax(jnp.where(src_mask[None, :, None, None, :],
                                   jax.random.normal(k[0], (3, 2, 2, S, S)), -jnp.inf), -1)
    dec = _causal_softmax(k[1], (2, 2, 2, T, T))
    cross = jax.nn.softmax(jnp.where(src_mask[None, :, None, None, :],
                                     jax.random.normal(k[2], (2, 2, 2, T, S)), -jnp.inf), -1)
    src, tgt = encoder_decoder_rollout(enc, dec, cross)
    src, tgt = np.asarray(src), np.asarray(tgt)
    assert src.shape == (2, T, S) and tgt.shape == (2, T, T)
    np.testing.assert_allclose(src.sum(-1) + tgt.sum(-1), 1.0, rtol=1e-6)
    assert (src >= 0).all() and (tgt >= 0).all() and np.allclose(np.triu(tgt[0], 1), 0.0)
    np.testing.assert_array_equal(src[1, :, 3:], 0.0)


def test_encoder_decoder_hand_computed_one_layer():
    enc = jnp.asarray([[[1.0, 0.0], [0.5, 0.5]]])     # R_enc = [[1, 0], [.25, .75]]
    dec = jnp.asarray([[[1.0, 0.0], [0.5, 0.5]]])     # Â_self = [[1, 0], [.25, .75]]
    cross = jnp.asarray([[[0.0, 1.0], [1.0, 0.0]]])   # [T=2, S=2]
    src, tgt = encoder_decoder_rollout([enc], [dec], [cross])
    # R_src = .5 · C R_enc = .5 · [[.25, .75], [1, 0]]; R_tgt = .5 · Â_self
    np.testing.assert_allclose(src, [[0.125, 0.375], [0.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(tgt, [[0.5, 0.0], [0.125, 0.375]], rtol=1e-6)
    with pytest.raises(ValueError, match="one pattern per decoder layer"):
        encoder_decoder_rollout([enc], [dec, dec], [cross])
    with pytest.raises(ValueError, match=r"cross \[..., heads, T, S\]"):
        encoder_decoder_rollout([enc], [dec], [cross[..., :1]])


def _numpy_enc_dec_rollout(enc, dec, cross):
    """Independent NumPy ALTI+-style rollout (one example) from the model's own attention."""
    def mix(a):
        a = np.asarray(a[0], np.float64).mean(0)
        a = 0.5 * a + 0.5 * np.eye(a.shape[-1])
        return a / a.sum(-1, keepdims=True)
    r_enc = np.eye(enc[0].shape[-1])
    for a in enc:
        r_enc = mix(a) @ r_enc
    T, S = cross[0].shape[-2:]
    r = np.concatenate([np.zeros((T, S)), np.eye(T)], 1)      # [T, S + T]
    for a, c in zip(dec, cross):
        r = mix(a) @ r
        c = np.asarray(c[0], np.float64).mean(0)
        r = 0.5 * r + 0.5 * np.concatenate([c @ r_enc, np.zeros((T, T))], 1)
    return r[:, :S], r[:, S:]


def test_encoder_decoder_model_rollout(marian):
    seq = marian.attribute(SOURCES[0], TARGETS[0], method="attention_rollout",
                           attribute_target=True)[0]
    out = marian.hf_model(jnp.asarray([seq.source_ids]), decoder_input_ids=jnp.asarray(
        [seq.target_ids]), params=marian.params, output_attentions=True)
    want_src, want_tgt = _numpy_enc_dec_rollout(out.encoder_attentions,
                                                out.decoder_attentions, out.cross_attentions)
    S = len(seq.source_ids)
    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        np.testing.assert_allclose(seq.source_attributions[:, j, 0], want_src[p - 1],
                                   rtol=1e-5, atol=1e-7)
        got = seq.target_attributions[:, j, 0]
        np.testing.assert_allclose(got[:p], want_tgt[p - 1, :p], rtol=1e-5, atol=1e-7)
        assert np.isnan(got[p:]).all()
        total = seq.source_attributions[:, j, 0].sum() + np.nansum(got)
        np.testing.assert_allclose(total, 1.0, rtol=1e-5)  # source + target shares
    assert seq.source_attributions.shape[0] == S


def test_encoder_decoder_batch_invariance(marian):
    batched = marian.attribute(SOURCES, TARGETS, method="attention_rollout",
                               attribute_target=True)
    for i in range(len(SOURCES)):
        alone = marian.attribute(SOURCES[i], TARGETS[i], method="attention_rollout",
                                 attribute_target=True)[0]
        for side in ("source_attributions", "target_attributions"):
            a, b = getattr(batched[i], side), getattr(alone, side)
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            assert np.nanmax(np.abs(a - b)) <= 1e-5


def test_listed():
    import jaxattr
    assert {"attention_rollout", "deeplift", "lime"} <= set(jaxattr.list_methods())
