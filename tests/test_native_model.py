"""The native decoder family as a backend: sites (capture / patch / delta), the scanned and the
unrolled layer paths, attribution options, dtype, generation, and a clear error for every
unsupported config or checkpoint mismatch."""
import copy
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.internals import site_names
from jaxattr.models import (CheckpointError, UnsupportedConfigError, params_from_tensors,
                            read_tensors, spec_from_config)

CKPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "native_side", "ckpt")
PROMPTS = ["The cat sat on the mat and", "Kim has"]
TEXTS = ["The cat sat on the mat and the dog slept", "Kim has a red ball and a cup"]


@functools.lru_cache(maxsize=None)
def _model(family, dtype=None):
    return jaxattr.load_model(os.path.join(CKPT, family), dtype=dtype)


def _batch(model):
    enc = [model.tokenizer(t)["input_ids"] for t in TEXTS]
    n = max(map(len, enc))
    ids = np.full((len(enc), n), model.pad_token_id, np.int32)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, :len(e)], mask[i, :len(e)] = e, 1
    return jnp.asarray(ids), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnames=("capture",))
def _run(fns, ids, mask, capture=(), delta=None):
    return fns.forward(target_ids=ids, target_mask=mask, capture=capture, delta=delta)


def test_sites_and_captures_fit_together():
    model = _model("llama")
    fns, spec = model.adapter, model.adapter.spec
    assert fns.sites() == site_names(3, kinds=("resid_pre", "value", "attn_pattern", "head_out",
                                                "attn_out", "mlp_out", "resid_post"))
    ids, mask = _batch(model)
    out = _run(fns, ids, mask, capture=("*",))
    cap = out["captured"]
    assert set(cap) == set(fns.sites())
    lp = jax.tree_util.tree_map(np.asarray, fns.params["layers"])
    for l in range(spec.n_layers):
        c = {k: np.asarray(cap[f"blocks.{l}.{k}"]) for k in
             ("resid_pre", "attn_out", "mlp_out", "resid_post", "head_out", "attn_pattern")}
        np.testing.assert_allclose(c["resid_pre"] + c["attn_out"] + c["mlp_out"],
                                   c["resid_post"], atol=1e-5)
        if l + 1 < spec.n_layers:
            np.testing.assert_array_equal(c["resid_post"], cap[f"blocks.{l + 1}.resid_pre"])
        heads = c["head_out"].reshape(c["head_out"].shape[:2] + (-1,))
        np.testing.assert_allclose(heads @ lp["o"][l] + lp["o_bias"][l], c["attn_out"],
                                   atol=1e-5)
        pat = c["attn_pattern"]                           # [B, heads, L, L]
        assert pat.shape == (2, spec.n_heads, ids.shape[1], ids.shape[1])
        np.testing.assert_allclose(pat.sum(-1), 1.0, atol=1e-5)
        assert np.all(np.triu(pat, 1) == 0)               # causal
        assert np.all(pat[1][..., np.asarray(mask[1]) == 0] == 0)   # padding keys
    np.testing.assert_array_equal(cap["embed"], fns.embed(ids))
    # the head is the tied embedding matrix applied to the final-norm output
    np.testing.assert_allclose(np.asarray(cap["final_norm"]) @ np.asarray(fns.params["embed"]).T,
                               out["logits"], atol=1e-4)


def test_sliding_window_and_softcap_in_patterns():
    model = _model("gemma2")
    fns = model.adapter
    ids, mask = _batch(model)
    cap = _run(fns, ids, mask, capture=("blocks.*.attn_pattern",))["captured"]
    q, k = np.indices(ids.shape[1:] * 2)
    for l, window in enumerate(fns.spec.layer_window):
        pat = np.asarray(cap[f"blocks.{l}.attn_pattern"])[0]
        far = (q - k) >= 4
        if window is not None:
            assert window == 4 and np.all(pat[:, far] == 0)
        else:
            assert np.all(pat[:, far] > 0)


def test_patches_and_deltas():
    model = _model("llama")
    fns = model.adapter
    ids, mask = _batch(model)
    base = np.asarray(_run(fns, ids, mask)["logits"])

    def fwd(**kw):
        return np.asarray(fns.forward(target_ids=ids, target_mask=mask, **kw)["logits"])

    # identity patch: layer 1 runs outside the scan, same numbers
    np.testing.assert_allclose(fwd(patch={"blocks.1.resid_post": lambda v: v}), base, atol=1e-5)
    # zeroing the last residual stream: final norm of 0 is 0, so every logit is 0
    assert np.all(fwd(patch={"blocks.2.resid_post": jnp.zeros_like}) == 0)
    # a delta inside the scan equals the same addition as a patch outside it
    d = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (2, ids.shape[1], 32))
    np.testing.assert_allclose(fwd(delta={"blocks.1.mlp_out": d}),
                               fwd(patch={"blocks.1.mlp_out": lambda v: v + d}), atol=1e-5)

    # gradients at deltas: embed == gradient w.r.t. the embeddings; resid_post(0) == resid_pre(1)
    emb = fns.embed(ids)
    zeros = jnp.zeros_like(emb)

    def score(delta):
        return fns.forward(target_ids=ids, target_mask=mask, target_embeds=emb,
                           delta=delta)["logits"][:, :, 5].sum()

    g = jax.grad(score)({"embed": zeros, "blocks.0.resid_post": zeros, "blocks.1.resid_pre": zeros})
    g_emb = jax.grad(lambda e: fns.forward(target_ids=ids, target_mask=mask,
                                           target_embeds=e)["logits"][:, :, 5].sum())(emb)
    np.testing.assert_allclose(g["embed"], g_emb, atol=1e-6)
    np.testing.assert_allclose(g["blocks.0.resid_post"], g["blocks.1.resid_pre"], atol=1e-6)
    # finite difference along the delta's gradient
    eps = 1e-3
    direction = g["blocks.0.resid_post"] / jnp.linalg.norm(g["blocks.0.resid_post"])
    fd = (score({"blocks.0.resid_post": eps * direction})
          - score({"blocks.0.resid_post": -eps * direction})) / (2 * eps)
    np.testing.assert_allclose(fd, jnp.vdot(g["blocks.0.resid_post"], direction), rtol=2e-2)


def test_bad_site_requests_are_refused():
    model = _model("llama")
    fns = model.adapter
    ids, mask = _batch(model)
    with pytest.raises(ValueError, match="blocks.7.mlp_out"):
        fns.forward(target_ids=ids, target_mask=mask, capture=("blocks.7.mlp_out",))
    with pytest.raises(ValueError, match="captured but not patched"):
        fns.forward(target_ids=ids, target_mask=mask, patch={"blocks.0.attn_pattern": abs})
    with pytest.raises(ValueError, match="shape"):
        fns.forward(target_ids=ids, target_mask=mask, patch={"embed": lambda v: v[:, :2]})
    with pytest.raises(ValueError, match="dropout"):
        fns.forward(target_ids=ids, target_mask=mask, dropout_rng=jax.random.PRNGKey(0))


def test_attribution_options_agree():
    """Split head, prefix groups and batching change the program, not the numbers."""
    model = _model("smollm3")
    kw = dict(method="saliency", attributed_fn="probability", show_progress=False)
    ref = model.attribute(PROMPTS, TEXTS, split_head=False, prefix_groups=1, **kw)
    fast = model.attribute(PROMPTS, TEXTS, **kw)            # split head + prefix groups
    single = model.attribute(PROMPTS, TEXTS, batch_size=1, **kw)
    for a, b, c in zip(ref, fast, single):
        np.testing.assert_allclose(a.target_attributions, b.target_attributions, atol=1e-6)
        np.testing.assert_allclose(a.target_attributions, c.target_attributions, atol=1e-6)


def test_layer_and_attention_methods():
    model = _model("olmo2")
    out = model.attribute(PROMPTS[1], TEXTS[1], method="layer_integrated_gradients",
                          layer="blocks.1.resid_post", n_steps=64, attributed_fn="logprob",
                          show_progress=False, prefix_groups=1)[0]
    delta, change = jaxattr.model.completeness(out)
    assert np.all(np.abs(delta) <= 1e-2 * np.maximum(np.abs(change), 1e-3))
    att = model.attribute(PROMPTS[1], TEXTS[1], method="attention", show_progress=False)[0]
    assert att.target_attributions.shape[-2:] == (3, 4)       # [.., layers, heads]


def test_bfloat16_stays_bfloat16():
    f32, bf16 = _model("gemma"), _model("gemma", jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(bf16.params))
    ids, mask = _batch(f32)
    a = np.asarray(_run(f32.adapter, ids, mask)["logits"], np.float32)
    b = np.asarray(_run(bf16.adapter, ids, mask)["logits"], np.float32)
    real = np.asarray(mask) > 0
    err = np.abs(a - b)[real].max()
    assert 0 < err < 0.15


def test_greedy_generation():
    model = _model("qwen2")
    out = model.generate(PROMPTS, max_new_tokens=4)
    assert all(o.startswith(p) for o, p in zip(out, PROMPTS))
    ids = model._generate_ids([PROMPTS[0]], max_new_tokens=4)[0][1]
    logits = np.asarray(_run(model.adapter, jnp.asarray([ids]), jnp.ones((1, len(ids)),
                                                                          jnp.int32))["logits"][0])
    n = len(model.tokenizer(PROMPTS[0])["input_ids"])
    assert list(ids[n:]) == [int(np.argmax(logits[q - 1])) for q in range(n, len(ids))]
    with pytest.raises(ValueError, match="greedily"):
        model.generate(PROMPTS, do_sample=True)


# ------------------------------------------------------------------ unsupported configs
def _config(family="llama"):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(os.path.join(CKPT, family))


BAD_CONFIGS = [
    ("llama", "rope_scaling", {"rope_type": "su", "factor": 2.0}),
    ("llama", "rope_scaling", {"rope_type": "llama3", "factor": 8.0}),
    ("llama", "hidden_act", "swiglu_custom"),
    ("llama", "partial_rotary_factor", 0.5),
    ("llama", "num_key_value_heads", 3),
    ("llama", "quantization_config", {"quant_method": "gptq"}),
    ("gemma3_text", "use_bidirectional_attention", True),
    ("gemma3_text", "layer_types", ["chunked_attention", "full_attention", "full_attention"]),
    ("phi3", "rope_scaling", {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
    ("llama", "model_type", "dbrx"),
]


@pytest.mark.parametrize("family,field,value", BAD_CONFIGS,
                         ids=[f"{f}-{k}-{i}" for i, (f, k, _) in enumerate(BAD_CONFIGS)])
def test_unsupported_config_is_refused(family, field, value):
    config = copy.deepcopy(_config(family))
    setattr(config, field, value)
    with pytest.raises(UnsupportedConfigError, match=field):
        spec_from_config(config)


@functools.lru_cache(maxsize=None)
def _tensors(family):
    return read_tensors(os.path.join(CKPT, family))


def test_sharded_checkpoint_reads_every_shard():
    tensors = _tensors("mistral")
    assert os.path.isfile(os.path.join(CKPT, "mistral", "model.safetensors.index.json"))
    assert "lm_head.weight" in tensors and "model.layers.2.mlp.down_proj.weight" in tensors


@pytest.mark.parametrize("case", ["leftover", "missing", "shape", "tied"])
def test_checkpoint_mismatch_is_refused(case):
    family = "llama" if case == "tied" else "mistral"
    spec = spec_from_config(_config(family))
    tensors = dict(_tensors(family))
    if case == "leftover":
        tensors["model.layers.1.self_attn.q_proj.bias"] = jnp.zeros(64)
        match = "does not use.*q_proj.bias"
    elif case == "missing":
        del tensors["model.layers.2.self_attn.o_proj.weight"]
        match = "lacks.*layers.2.self_attn.o_proj.weight"
    elif case == "shape":
        tensors["model.norm.weight"] = jnp.zeros(31)
        match = "model.norm.weight has shape"
    else:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1
        match = "differs from the embedding"
    with pytest.raises(CheckpointError, match=match):
        params_from_tensors(spec, tensors)
