"""Value zeroing and the ``blocks.{l}.value`` site it stands on.

Independent truths: the value site reproduces each head's output from the attention pattern
(``head_out = A · V``, also through GPT-2's and Bloom's fused projections); a causal token
never changes earlier positions; the vmapped program equals a loop that corrupts one layer at
a time (no input restoration needed there); padding and batching change nothing.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from _tiny_models import tiny_model
from jaxattr.value_zeroing import value_zeroing_scores

TEXT = "The cat sat on the mat"


_model = tiny_model


def _ids(model, text=TEXT):
    ids = jnp.asarray([model.tokenizer(text)["input_ids"]], jnp.int32)
    return ids, jnp.ones_like(ids)


@functools.partial(jax.jit, static_argnames=("capture",))
def _capture(fns, ids, mask, capture):
    return fns.forward(target_ids=ids, target_mask=mask, capture=capture)["captured"]


@pytest.mark.parametrize("arch", ["gpt2", "bloom", "llama", "native:qwen3"])
def test_value_site_gives_head_outputs_through_the_pattern(arch):
    model = _model(arch)
    ids, mask = _ids(model)
    c = _capture(model.adapter, ids, mask,
                 ("blocks.1.value", "blocks.1.head_out", "blocks.1.attn_pattern"))
    v, heads, pattern = c["blocks.1.value"], c["blocks.1.head_out"], c["blocks.1.attn_pattern"]
    n_heads, d_head = heads.shape[2:]
    v = v.reshape(v.shape[:2] + (-1, d_head))
    v = jnp.repeat(v, n_heads // v.shape[2], axis=2)  # grouped-query heads share a value head
    np.testing.assert_allclose(jnp.einsum("bhqk,bkhd->bqhd", pattern, v), heads,
                               atol=1e-5 * float(jnp.abs(heads).max()))


_scores = jax.jit(value_zeroing_scores, static_argnames=("token_batch_size",))


@pytest.mark.parametrize("arch", ["gpt2", "native:llama"])
def test_zero_after_the_token_and_loop_equals_vmapped(arch):
    model = _model(arch)
    fns = model.adapter
    ids, mask = _ids(model)
    got = np.asarray(_scores(fns, target_ids=ids, target_mask=mask))[0]  # [Ltok, Lpos, n]
    L, n_layers = got.shape[1], got.shape[2]
    later = np.tril(np.ones((L, L), bool), -1)  # token j after position i
    assert np.abs(got[later]).max() <= 1e-6
    assert got[~later].max() > 1e-3
    # loop: corrupt one layer at a time (its input is clean then) and compare its output
    capture = tuple(f"blocks.{l}.resid_post" for l in range(n_layers - 1)) + ("final_norm",)
    run = jax.jit(lambda keep, layer: fns.forward(
        target_ids=ids, target_mask=mask, capture=capture,
        patch={f"blocks.{layer}.value": lambda v: v * keep[None, :, None]})["captured"],
        static_argnums=1)
    clean = _capture(fns, ids, mask, capture)
    for layer in range(n_layers):
        for j in (0, L // 2, L - 1):
            out = run(jnp.arange(L) != j, layer)
            a = np.asarray(clean[capture[layer]][0], np.float64)
            b = np.asarray(out[capture[layer]][0], np.float64)
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            np.testing.assert_allclose(got[j, :, layer], 1 - cos, atol=2e-6)
    chunked = np.asarray(_scores(fns, target_ids=ids, target_mask=mask, token_batch_size=3))[0]
    np.testing.assert_allclose(chunked, got, atol=1e-6)


def test_through_attribute_columns_sum_to_one_and_batch_invariance():
    model = _model("native:llama")
    assert "value_zeroing" in jaxattr.list_methods()
    prompts, texts = ["The cat", "Kim has"], [TEXT, "Kim has a red ball and a cup"]
    out = model.attribute(prompts, texts, method="value_zeroing", show_progress=False)
    for i in range(2):
        a = out[i].target_attributions  # [L, T, layers]
        n_layers = a.shape[-1]
        assert n_layers == model.adapter.spec.n_layers
        np.testing.assert_allclose(np.nansum(a, axis=0), np.ones(a.shape[1:]), rtol=1e-5)
        alone = model.attribute(prompts[i], texts[i], method="value_zeroing",
                                show_progress=False)[0].target_attributions
        np.testing.assert_array_equal(np.isnan(a), np.isnan(alone))
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(alone), atol=1e-5)


def test_encoder_decoder_is_refused_with_the_alternative():
    model = _model("marian")
    with pytest.raises(ValueError, match="decoder-only.*method='attention'"):
        model.attribute("a b", "c d", method="value_zeroing")
