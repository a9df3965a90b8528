"""Sites through the transformers-Flax adapter: capture equals the model's own hidden states,
patch and delta behave as stated, layer attribution at many sites in one program.

Independent truths: the model's ``output_hidden_states`` / ``output_attentions``; the residual
sum of pre-norm blocks; the head applied to ``final_norm`` equals the logits; a hand-computed
gradient (``jax.grad``) at a zero delta; single-site runs of the layer methods."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.internals import ActivationCache, SiteError
from jaxattr.testing import ARCHITECTURES, make_model

from conftest import FULL, PROMPTS, SOURCES, TARGETS

POST_NORM = ("bart", "marian")  # residual = LN(x + sublayer): not a plain sum


@functools.lru_cache(maxsize=None)
def _model(arch):
    model, tok = make_model(arch)
    return jaxattr.load_model(model, tokenizer=tok)


def _inputs(am, n_tgt=6, n_src=7, seed=0):
    rng = np.random.default_rng(seed)
    vocab = am.config.vocab_size
    tgt = jnp.asarray(rng.integers(3, vocab - 1, (2, n_tgt)), jnp.int32)
    kw = dict(target_ids=tgt, target_mask=jnp.ones_like(tgt))
    if am.is_encoder_decoder:
        src = jnp.asarray(rng.integers(3, vocab - 1, (2, n_src)), jnp.int32)
        kw.update(source_ids=src, source_mask=jnp.ones_like(src))
    return kw


def _hf(am, kw, **extra):
    if am.is_encoder_decoder:
        return am.hf_model(kw["source_ids"], attention_mask=kw["source_mask"],
                           decoder_input_ids=kw["target_ids"],
                           decoder_attention_mask=kw["target_mask"], params=am.params, **extra)
    return am.hf_model(kw["target_ids"], attention_mask=kw["target_mask"], params=am.params,
                       **extra)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_captured_sites_are_the_models_own_values(arch):
    am = _model(arch)
    ad, kw = am.adapter, _inputs(am)
    names = am.sites()
    out = ad.forward(capture=names, **kw)
    cap = out["captured"]
    hf = _hf(am, kw, output_hidden_states=True, output_attentions=True)
    _close(out["logits"], hf.logits)
    stacks = ({"encoder": (hf.encoder_hidden_states, hf.encoder_attentions),
               "decoder": (hf.decoder_hidden_states, hf.decoder_attentions)}
              if am.is_encoder_decoder else {None: (hf.hidden_states, hf.attentions)})
    for stack, (hidden, attentions) in stacks.items():
        p = "" if stack is None else f"{stack}."
        n_layers = len(attentions)
        for layer in range(n_layers):
            b = f"{p}blocks.{layer}."
            _close(cap[b + "resid_pre"], hidden[layer])
            _close(cap[b + "attn_pattern"], attentions[layer])
            if layer:
                _close(cap[b + "resid_pre"], cap[f"{p}blocks.{layer - 1}.resid_post"])
            if arch not in POST_NORM:
                parts = cap[b + "resid_pre"] + cap[b + "attn_out"] + cap[b + "mlp_out"]
                if stack == "decoder":
                    parts = parts + cap[b + "cross_attn_out"]
                _close(cap[b + "resid_post"], parts, 1e-4)
            heads = cap[b + "head_out"]
            assert heads.shape[2] == attentions[layer].shape[1]
            # the value site: each head's output is its pattern times the values
            v = cap[b + "value"].reshape(heads.shape[:2] + (-1, heads.shape[3]))
            v = jnp.repeat(v, heads.shape[2] // v.shape[2], axis=2)
            _close(jnp.einsum("bhqk,bkhd->bqhd", attentions[layer], v), heads, 1e-4)
        _close(cap[f"{p}embed"], ad.embed(kw["source_ids" if stack == "encoder" else
                                              "target_ids"],
                                          side="encoder" if stack == "encoder" else "decoder"))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_final_norm_through_the_head_is_the_logits(arch):
    am = _model(arch)
    ad, kw = am.adapter, _inputs(am)
    name = "decoder.final_norm" if am.is_encoder_decoder else "final_norm"
    L = kw["target_ids"].shape[1]
    pos = jnp.broadcast_to(jnp.arange(L), (2, L))
    out = ad.forward(capture=(name,), positions=pos, return_head=True, **kw)
    _close(out["head"](out["captured"][name], out["head_params"]), _hf(am, kw).logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patching_own_values_changes_nothing_and_resid_pre_0_transplants_a_run(arch):
    am = _model(arch)
    ad, kw = am.adapter, _inputs(am)
    names = [n for n in am.sites() if not n.endswith("attn_pattern")]
    clean = ad.forward(capture=names, **kw)
    same = ad.forward(patch={n: (lambda _, v=clean["captured"][n]: v) for n in names}, **kw)
    _close(same["logits"], clean["logits"])
    # another run of the same lengths: its block-0 input at every position gives its logits
    other = _inputs(am, seed=1)
    firsts = [n for n in am.sites() if n.endswith("blocks.0.resid_pre")]
    theirs = ad.forward(capture=firsts, **other)
    moved = ad.forward(patch={n: (lambda _, v=theirs["captured"][n]: v) for n in firsts}, **kw)
    _close(moved["logits"], theirs["logits"])
    assert float(jnp.abs(theirs["logits"] - clean["logits"]).max()) > 1e-3


def test_head_out_feeds_the_output_projection(gpt2):
    ad, kw = gpt2.adapter, _inputs(gpt2)
    out = ad.forward(patch={"blocks.*.head_out": jnp.zeros_like}, capture=("blocks.*.attn_out",),
                     **kw)
    for name, value in out["captured"].items():  # zero heads: only the projection bias left
        _close(value, jnp.broadcast_to(value[:1, :1], value.shape), 1e-6)


def test_gradient_at_zero_delta_is_the_layer_gradient(gpt2):
    site = "blocks.1.mlp_out"
    seq = gpt2.attribute(PROMPTS[1], FULL[1], method="layer_gradient_x_activation",
                         layer=site, attributed_fn="logprob", show_progress=False)[0]
    ids = jnp.asarray([seq.target_ids])
    kw = dict(target_ids=ids, target_mask=jnp.ones_like(ids))
    act = gpt2.adapter.forward(capture=(site,), **kw)["captured"][site]

    def logprob(d, p):
        logits = gpt2.adapter.forward(delta={site: d}, **kw)["logits"]
        return jax.nn.log_softmax(logits[0, p - 1])[seq.target_ids[p]]

    for j, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        g = jax.grad(logprob)(jnp.zeros_like(act), p)
        _close(seq.target_attributions[:p, j], (g * act)[0, :p], 1e-5)


@pytest.mark.parametrize("method,kw", [("layer_gradient_x_activation", {}),
                                       ("layer_integrated_gradients", {"n_steps": 4})])
def test_all_layers_equal_single_layer_runs(gpt2, method, kw):
    args = (PROMPTS[:2], FULL[:2])
    common = dict(method=method, step_scores=("probability",), show_progress=False, **kw)
    every = gpt2.attribute(*args, layer="blocks.*.mlp_out", **common)
    assert every.info["layer"] == "blocks.0.mlp_out, blocks.1.mlp_out"
    for layer in range(2):
        one = gpt2.attribute(*args, layer=f"blocks.{layer}.mlp_out", **common)
        for i in range(2):
            a = every[i].target_attributions[:, :, layer]
            b = one[i].target_attributions
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            assert np.nanmax(np.abs(a - b)) <= 1e-5 * np.nanmax(np.abs(b))


def test_all_layers_on_an_encoder_decoder(marian):
    common = dict(method="layer_gradient_x_activation", show_progress=False)
    every = marian.attribute(SOURCES[0], TARGETS[0], layer="encoder.blocks.*.resid_post",
                             **common)[0]
    assert every.source_attributions.shape[2] == 2 and every.target_attributions is None
    for layer in range(2):
        one = marian.attribute(SOURCES[0], TARGETS[0],
                               layer=f"encoder.blocks.{layer}.resid_post", **common)[0]
        _close(every.source_attributions[:, :, layer], one.source_attributions)


def test_run_with_cache_is_padded_batch_invariant_and_patchable(gpt2):
    logits, cache = gpt2.run_with_cache(PROMPTS, sites=("blocks.*.resid_post", "embed"))
    assert isinstance(cache, ActivationCache)
    assert set(cache.keys()) == {"embed", "blocks.0.resid_post", "blocks.1.resid_post"}
    B, L = cache.tokens.shape
    assert cache["blocks.1.resid_post"].shape == (B, L, 32) and logits.shape[:2] == (B, L)
    lengths = np.asarray(cache.mask).sum(1)
    assert (np.asarray(cache.mask) == (np.arange(L) < lengths[:, None])).all()  # right-padded
    for i, text in enumerate(PROMPTS):
        n = int(lengths[i])
        alone_logits, alone = gpt2.run_with_cache(text, sites="blocks.1.resid_post")
        _close(alone["blocks.1.resid_post"][0], cache["blocks.1.resid_post"][i, :n], 1e-5)
        _close(alone_logits[0], logits[i, :n], 1e-5)
    chunked_logits, chunked = gpt2.run_with_cache(PROMPTS, sites="blocks.*.resid_post",
                                                  batch_size=2)
    _close(chunked["blocks.0.resid_post"], cache["blocks.0.resid_post"], 1e-5)
    # an array patch replaces the value, a delta shifts it; both are seen downstream
    zero = jnp.zeros_like(cache["blocks.0.resid_post"])
    patched_logits, patched = gpt2.run_with_patches(PROMPTS, patch={"blocks.0.resid_post": zero},
                                                    sites="blocks.*.resid_post")
    assert float(jnp.abs(patched["blocks.0.resid_post"]).max()) == 0.0
    assert float(jnp.abs(patched_logits - logits).max()) > 1e-3


def test_run_with_cache_encoder_decoder(marian):
    logits, cache = marian.run_with_cache(SOURCES[:2], TARGETS[:2],
                                          sites=("encoder.blocks.*.resid_post",
                                                 "decoder.blocks.0.cross_attn_out"))
    assert cache["encoder.blocks.1.resid_post"].shape[:2] == cache.source_tokens.shape
    assert cache["decoder.blocks.0.cross_attn_out"].shape[:2] == cache.tokens.shape
    assert cache.mask_of("encoder.blocks.0.resid_post") is cache.source_mask


def test_bad_site_names_list_the_valid_ones(gpt2):
    with pytest.raises(SiteError, match=r"blocks\.\{0\.\.1\}\.mlp_out"):
        gpt2.run_with_cache(PROMPTS[0], sites="blocks.7.mlp_out")
    with pytest.raises(SiteError, match=r"no site matches 'blocks\.\*\.mlp'"):
        gpt2.attribute(PROMPTS[0], FULL[0], method="layer_gradient_x_activation",
                       layer="blocks.*.mlp")
    with pytest.raises(SiteError, match="captured but not patched"):
        gpt2.adapter.forward(patch={"blocks.0.attn_pattern": lambda v: v},
                             **_inputs(gpt2))
    _, cache = gpt2.run_with_cache(PROMPTS[0], sites="embed")
    with pytest.raises(SiteError, match="was not captured"):
        cache["blocks.0.mlp_out"]
