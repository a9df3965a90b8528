"""The native decoder's unrolled layer loop (``layer_loop="unroll"``: per-layer weights, a
Python loop instead of a ``lax.scan`` over stacked weights): equal to PyTorch's records like
the scanned path, every site, patch and delta equal to the scanned path's, exact causal
truncation on it, the conversion a round trip, and clear errors."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.models import LAYER_LOOPS, NativeDecoder, load_native
from jaxattr.models.decoder import hidden_states
from test_native_model import _batch, _run   # right-padded batch; jitted forward

CKPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "native_side", "ckpt")
FAMILIES = sorted(os.listdir(CKPT))
PROMPTS = ["The cat sat on the mat and", "Kim has"]
TEXTS = ["The cat sat on the mat and the dog slept", "Kim has a red ball and a cup on it"]


@functools.lru_cache(maxsize=None)
def _model(family, loop):
    return jaxattr.load_model(os.path.join(CKPT, family), layer_loop=loop)


def _record(family):
    path = os.path.join(CKPT, family)
    return (dict(np.load(os.path.join(path, "record.npz"))),
            json.load(open(os.path.join(path, "texts.json"))))


@pytest.mark.parametrize("family", FAMILIES)
def test_unrolled_logits_equal_pytorch(family):
    model = _model(family, "unroll")
    assert model.adapter.layer_loop == "unroll"
    layers = model.params["layers"]
    assert isinstance(layers, tuple) and len(layers) == model.adapter.spec.n_layers
    rec, _ = _record(family)
    logits = np.asarray(_run(model.adapter, jnp.asarray(rec["ids"]),
                             jnp.asarray(rec["mask"]))["logits"])
    real = rec["mask"] > 0
    np.testing.assert_allclose(logits[real], rec["logits_alone"][real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gemma2", "mixtral"])
def test_unrolled_input_x_gradient_equals_pytorch(family):
    model = _model(family, "unroll")
    rec, texts = _record(family)
    out = model.attribute(texts["prompts"], texts["texts"], method="input_x_gradient",
                          attributed_fn="logprob", show_progress=False, prefix_groups=1)
    for i, seq in enumerate(out.sequence_attributions):
        n = int(rec["length"][i])
        steps = n - int(rec["prompt_len"][i])
        ref = np.transpose(rec["ixg"][i, :steps, :n], (1, 0, 2))      # [L, S, H]
        got = seq.target_attributions
        known = ~np.isnan(got)
        assert np.abs(got[known] - ref[known]).max() <= 1e-4 * np.abs(ref[known]).max()


@pytest.mark.parametrize("family", ["gemma2", "qwen3_moe"])   # windows + post-norms; MoE
def test_every_site_patch_and_delta_equal_the_scan(family):
    scan, unroll = _model(family, "scan").adapter, _model(family, "unroll").adapter
    ids, mask = _batch(_model(family, "scan"))
    a, b = _run(scan, ids, mask, capture=("*",)), _run(unroll, ids, mask, capture=("*",))
    assert set(a["captured"]) == set(b["captured"]) == set(scan.sites())
    for name in a["captured"]:
        np.testing.assert_allclose(b["captured"][name], a["captured"][name], atol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(b["logits"], a["logits"], atol=1e-5)
    d = 0.3 * jax.random.normal(jax.random.PRNGKey(0), a["captured"]["blocks.1.mlp_out"].shape)
    kw = dict(target_ids=ids, target_mask=mask)
    for fns in (scan, unroll):   # a delta equals the same addition as a patch
        np.testing.assert_allclose(
            fns.forward(delta={"blocks.1.mlp_out": d}, **kw)["logits"],
            fns.forward(patch={"blocks.1.mlp_out": lambda v: v + d}, **kw)["logits"],
            atol=1e-5)
    np.testing.assert_allclose(unroll.forward(delta={"blocks.1.mlp_out": d}, **kw)["logits"],
                               scan.forward(delta={"blocks.1.mlp_out": d}, **kw)["logits"],
                               atol=1e-5)
    # gradients at a delta site: the same on both loops
    zeros = jnp.zeros_like(a["captured"]["blocks.0.resid_post"])

    def grad(fns):
        return jax.grad(lambda z: fns.forward(delta={"blocks.0.resid_post": z}, **kw)
                        ["logits"][:, :, 5].sum())(zeros)
    np.testing.assert_allclose(grad(unroll), grad(scan), atol=1e-5)


def test_exact_truncation_on_unrolled_weights():
    scan, unroll = _model("llama", "scan"), _model("llama", "unroll")
    kw = dict(method="saliency", attributed_fn="logprob", show_progress=False)
    one = scan.attribute(PROMPTS, TEXTS, prefix_groups=1, **kw)
    exact = unroll.attribute(PROMPTS, TEXTS, prefix_groups="exact", **kw)
    for x, y in zip(one, exact):
        x, y = (np.nan_to_num(np.asarray(s.target_attributions)) for s in (x, y))
        np.testing.assert_allclose(y, x, atol=1e-5 * np.abs(x).max())


def test_conversion_is_a_round_trip():
    fns = _model("olmo2", "scan").adapter
    assert fns.layer_loop == "scan"
    unrolled = fns.with_layer_loop("unroll")
    assert unrolled.layer_loop == "unroll"
    again = unrolled.with_layer_loop("unroll")       # already split: the same arrays
    assert all(x is y for x, y in zip(jax.tree_util.tree_leaves(again.params),
                                      jax.tree_util.tree_leaves(unrolled.params)))
    back = unrolled.with_layer_loop("scan")
    for x, y in zip(jax.tree_util.tree_leaves(fns.params), jax.tree_util.tree_leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # per-layer arrays are the stack's slices
    stacked = fns.params["layers"]
    for l, layer in enumerate(unrolled.params["layers"]):
        for k, v in layer.items():
            np.testing.assert_array_equal(np.asarray(v), np.asarray(stacked[k][l]))
    # loaded unrolled == converted
    loaded = load_native(os.path.join(CKPT, "olmo2"), layer_loop="unroll").functions
    for x, y in zip(jax.tree_util.tree_leaves(loaded.params),
                    jax.tree_util.tree_leaves(unrolled.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert LAYER_LOOPS == ("scan", "unroll")


def test_bad_layer_loop_requests_are_refused():
    path = os.path.join(CKPT, "llama")
    with pytest.raises(ValueError, match="layer_loop='loop'.*'scan'.*'unroll'"):
        jaxattr.load_model(path, layer_loop="loop")
    with pytest.raises(ValueError, match="layer_loop='fast'"):
        _model("llama", "scan").adapter.with_layer_loop("fast")
    with pytest.raises(ValueError, match="native decoder family only"):
        jaxattr.load_model("toy-recall", layer_loop="unroll")
    with pytest.raises(ValueError, match="only layer_loop"):
        jaxattr.load_model(path, revision="main")
    fns = _model("llama", "unroll").adapter
    ids, mask = _batch(_model("llama", "unroll"))
    emb = fns.embed(ids)
    kw = dict(top_hook=lambda n, v: v, layer_hook=lambda l, k, v: v)
    with pytest.raises(ValueError, match="scan_deltas"):
        hidden_states(fns.spec, fns.params, emb, mask,
                      scan_deltas={"mlp_out": jnp.zeros((3,) + emb.shape)}, **kw)
    short = dict(fns.params, layers=fns.params["layers"][:2])
    with pytest.raises(ValueError, match="holds 2 layers"):
        hidden_states(fns.spec, short, emb, mask, **kw)
    assert isinstance(fns, NativeDecoder)
