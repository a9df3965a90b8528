"""Value zeroing's options (Inseq 0.7.1's ``similarity_metric`` and
``decoder_zeroed_units_indices``), each against a hand computation: states captured with the
corruption patched in by hand (one layer at a time, so no restoration is needed), distances in
NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from _tiny_models import tiny_model
from jaxattr.value_zeroing import (normalize_scores, resolve_units, value_zeroing_scores,
                                   zeroed_units_key)

TEXT = "The cat sat on the mat"


_model = tiny_model


_scores = jax.jit(value_zeroing_scores, static_argnames=(
    "token_batch_size", "similarity_metric", "zeroed_units_indices"))


def _by_hand(model, zero_cols_of_layer, metric):
    """Scores ``[L_token, L_position, layers]`` in float64 NumPy: for each layer and token,
    zero the given value columns of that token in that layer only, capture that layer's
    output, and compare with the clean one."""
    fns = model.adapter
    ids = jnp.asarray([model.tokenizer(TEXT)["input_ids"]], jnp.int32)
    mask = jnp.ones_like(ids)
    n = sum(1 for s in fns.sites() if s.endswith(".resid_post"))
    capture = tuple(f"blocks.{l}.resid_post" for l in range(n - 1)) + ("final_norm",)
    run = jax.jit(lambda keep, layer: fns.forward(
        target_ids=ids, target_mask=mask, capture=capture,
        patch={f"blocks.{layer}.value": lambda v: v * keep[None]})["captured"],
        static_argnums=1)
    clean = fns.forward(target_ids=ids, target_mask=mask, capture=capture)["captured"]
    L = ids.shape[1]
    out = np.zeros((L, L, n))
    for layer in range(n):
        cols = zero_cols_of_layer(layer)
        if cols is None:
            continue  # layer not zeroed: its score stays 0
        for j in range(L):
            keep = np.ones((L, cols.shape[0]), np.float32)
            keep[j, cols] = 0.0
            got = run(jnp.asarray(keep), layer)
            a = np.asarray(clean[capture[layer]][0], np.float64)
            b = np.asarray(got[capture[layer]][0], np.float64)
            if metric == "cosine":
                out[j, :, layer] = 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1)
                                                          * np.linalg.norm(b, axis=-1))
            else:
                out[j, :, layer] = np.linalg.norm(a - b, axis=-1)
    return out, ids, mask


def _layout(model):
    c = jax.eval_shape(lambda: model.adapter.forward(
        target_ids=jnp.zeros((1, 4), jnp.int32), target_mask=jnp.ones((1, 4), jnp.int32),
        capture=("blocks.0.value", "blocks.0.head_out"))["captured"])
    d_head = c["blocks.0.head_out"].shape[-1]
    return c["blocks.0.value"].shape[-1], d_head


@pytest.mark.parametrize("arch", ["gpt2", "native:qwen3"])
def test_euclidean_distance_equals_numpy_on_captured_states(arch):
    model = _model(arch)
    width, _ = _layout(model)
    want, ids, mask = _by_hand(model, lambda l: np.ones(width, bool), "euclidean")
    got = np.asarray(_scores(model.adapter, target_ids=ids, target_mask=mask,
                             similarity_metric="euclidean"))[0]
    np.testing.assert_allclose(got, want, atol=1e-5 * want.max())
    assert want.max() > 1e-2


@pytest.mark.parametrize("arch", ["gpt2", "native:qwen3"])
def test_zeroing_some_heads_equals_zeroing_their_value_columns_by_hand(arch):
    # qwen3: grouped-query attention, so the units are its key-value heads (Inseq's
    # value_states); gpt2: the value third of the fused c_attn.
    model = _model(arch)
    width, d_head = _layout(model)
    n_units = width // d_head
    assert n_units >= 2
    n_layers = sum(1 for s in model.adapter.sites() if s.endswith(".resid_post"))
    # layer 0 not zeroed; layer 1: a span (its end excluded); a third layer: the last head
    spec, heads_of = {1: (0, n_units - 1)}, {1: list(range(n_units - 1))}
    if n_layers > 2:
        spec[2], heads_of[2] = -1, [n_units - 1]

    def cols(layer):
        heads = heads_of.get(layer)
        if heads is None:
            return None
        c = np.zeros(width, bool)
        for h in heads:
            c[h * d_head:(h + 1) * d_head] = True
        return c
    want, ids, mask = _by_hand(model, cols, "cosine")
    got = np.asarray(_scores(model.adapter, target_ids=ids, target_mask=mask,
                             zeroed_units_indices=zeroed_units_key(spec)))[0]
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert want[..., 1:].max() > 1e-4
    assert np.abs(got[..., 0]).max() <= 1e-6    # layers not in the dict are not zeroed
    # every head by list == the default (all heads)
    every = np.asarray(_scores(model.adapter, target_ids=ids, target_mask=mask,
                               zeroed_units_indices=zeroed_units_key(list(range(n_units)))))
    default = np.asarray(_scores(model.adapter, target_ids=ids, target_mask=mask))
    np.testing.assert_allclose(every, default, atol=1e-6)


def test_resolve_units_follows_inseqs_validate_indices():
    assert resolve_units(None, 2, 4) == ((0, 1, 2, 3),) * 2
    assert resolve_units(-1, 2, 4) == ((3,), (3,))
    assert resolve_units((1, 3), 2, 4) == ((1, 2), (1, 2))          # span, end excluded
    assert resolve_units([3, 0], 2, 4) == ((0, 3), (0, 3))
    assert resolve_units({1: 2}, 3, 4) == ((), (2,), ())            # missing layers: none
    assert resolve_units({-1: [0, 1]}, 3, 4) == ((), (), (0, 1))
    key = zeroed_units_key({0: [1], 2: (0, 2)})
    assert zeroed_units_key(key) == key and hash(key) is not None  # idempotent, hashable
    for bad, err in [((2, 1), ValueError), ([0, 0], ValueError), (4, ValueError),
                     ({5: 0}, ValueError), ((0, 1, 2), TypeError), ("heads", TypeError),
                     ([], TypeError), ({}, ValueError), (True, TypeError)]:
        with pytest.raises(err, match="zeroed_units_indices"):
            resolve_units(bad, 3, 4)


def test_options_through_attribute_and_their_errors():
    model = _model("gpt2")
    prompts, texts = ["The cat", "Kim has"], [TEXT, "Kim has a red ball and a cup"]
    out = model.attribute(prompts, texts, method="value_zeroing", show_progress=False,
                          similarity_metric="euclidean", decoder_zeroed_units_indices={1: 0})
    assert out.info["method_kwargs"]["similarity_metric"] == "euclidean"
    for i in range(2):
        a = out[i].target_attributions                      # [L, T, layers]
        np.testing.assert_allclose(np.nansum(a[..., 1], 0), 1.0, rtol=1e-5)
        assert (np.nan_to_num(a[..., 0]) == 0).all()      # layer 0 not zeroed
        alone = model.attribute(prompts[i], texts[i], method="value_zeroing",
                                show_progress=False, similarity_metric="euclidean",
                                zeroed_units_indices={1: 0})[0].target_attributions
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(alone), atol=1e-5)
    # the pipeline's columns are the raw euclidean scores normalised (Inseq's post-processing)
    seq = out[0]
    ids = jnp.asarray([seq.target_ids], jnp.int32)
    raw = _scores(model.adapter, target_ids=ids, target_mask=jnp.ones_like(ids),
                  similarity_metric="euclidean",
                  zeroed_units_indices=zeroed_units_key({1: 0}))[0]   # [L, L, layers]
    for t, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        col = raw[:, p - 1, 1]
        valid = jnp.arange(col.shape[0]) <= p - 1
        want = normalize_scores(col[:, None, None], valid[:, None, None])[:, 0, 0]
        np.testing.assert_allclose(seq.target_attributions[:p, t, 1], want[:p], rtol=1e-5)
    with pytest.raises(ValueError, match="similarity_metric"):
        model.attribute("The cat", TEXT, method="value_zeroing", similarity_metric="manhattan")
    with pytest.raises(TypeError, match="not both"):
        model.attribute("The cat", TEXT, method="value_zeroing", zeroed_units_indices=0,
                        decoder_zeroed_units_indices=0)
    with pytest.raises(ValueError, match="zeroed_units_indices"):
        model.attribute("The cat", TEXT, method="value_zeroing", zeroed_units_indices=[99])
