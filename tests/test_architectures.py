"""Every supported architecture: saved checkpoints (Flax and PyTorch safetensors) load and
attribute, and the embedding replacement is exactly the model's own lookup."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import jaxattr
from jaxattr.models import NativeDecoder
from jaxattr.testing import ARCHITECTURES, DECODER_ONLY, make_model

from _pt_export import export_pt_safetensors


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_checkpoints_load_and_attribute(arch, tmp_path):
    # seed=1 differs from from_pretrained's default init seed (0): a weight that failed to
    # load would be re-initialised differently and caught by the parameter comparison.
    model, tok = make_model(arch, seed=1)
    model.save_pretrained(tmp_path / "flax")
    tok.save_pretrained(tmp_path / "flax")
    export_pt_safetensors(model, tok, tmp_path / "pt")
    assert not (tmp_path / "pt" / "flax_model.msgpack").exists()
    from_flax = jaxattr.load_model(str(tmp_path / "flax"))
    from_pt = jaxattr.load_model(str(tmp_path / "pt"))
    native = isinstance(from_pt.adapter, NativeDecoder)   # Llama, Mistral, Gemma
    assert native == (arch in ("llama", "mistral", "gemma"))
    if native:
        np.testing.assert_array_equal(np.asarray(from_pt.params["embed"]), np.asarray(
            model.params["model"]["embed_tokens"]["embedding"]))
    else:
        a, b = flatten_dict(model.params), flatten_dict(from_pt.params)
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))

    if arch in DECODER_ONLY:
        args = ("The cat sat", "The cat sat on the mat")
    else:
        args = ("The cat sat on the mat", "The dog slept")
    kw = dict(step_scores=("probability",), attribute_target=True)
    r1 = from_flax.attribute(*args, **kw)[0]
    r2 = from_pt.attribute(*args, **kw)[0]
    assert r1.target_attributions.shape[1] == r1.attr_pos_end - r1.attr_pos_start > 0
    valid = ~np.isnan(r1.target_attributions)
    assert valid.any() and np.isfinite(r1.target_attributions[valid]).all()
    assert np.abs(r1.target_attributions[valid]).max() > 0
    # native models: transformers' Flax class (right on these default configs, θ = 1e4)
    # and jaxattr's own forward agree
    np.testing.assert_allclose(r1.target_attributions, r2.target_attributions,
                               rtol=1e-4 if native else 1e-5, atol=1e-6 if native else 1e-8)
    if arch not in DECODER_ONLY:
        assert r1.source_attributions.shape[:2] == (len(r1.source), r1.target_attributions.shape[1])
        assert np.isfinite(r1.source_attributions).all()
    p = r1.step_scores["probability"]
    assert ((p > 0) & (p < 1)).all()
    # the step scores (logits gathered before the LM head) equal a plain HF forward's
    tgt = jnp.asarray([r1.target_ids])
    if arch in DECODER_ONLY:
        logits = model(tgt).logits[0]
    else:
        src = jnp.asarray([r1.source_ids])
        logits = model(src, decoder_input_ids=tgt).logits[0]
    probs = jax.nn.softmax(logits, -1)
    expect = [float(probs[q - 1, r1.target_ids[q]])
              for q in range(r1.attr_pos_start, r1.attr_pos_end)]
    np.testing.assert_allclose(p, expect, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_embedding_replacement_is_the_models_own_lookup(arch):
    model, tok = make_model(arch)
    am = jaxattr.load_model(model, tokenizer=tok)
    ad = am.adapter
    ids = jnp.asarray([tok("The cat sat on the mat")["input_ids"]], jnp.int32)
    mask = jnp.ones_like(ids)
    kw = {}
    if ad.is_encoder_decoder:
        dec = jnp.asarray([[am.decoder_start_token_id, 5, 6, 7]], jnp.int32)
        kw = dict(source_ids=ids, source_mask=mask)
        ref = model(ids, attention_mask=mask, decoder_input_ids=dec).logits
        tgt = dec
        repl = dict(source_embeds=ad.embed(ids, side="encoder"), target_embeds=ad.embed(dec))
    else:
        ref = model(ids, attention_mask=mask).logits
        tgt = ids
        repl = dict(target_embeds=ad.embed(ids))
    plain = ad.logits(target_ids=tgt, target_mask=jnp.ones_like(tgt), **kw)
    replaced = ad.logits(target_ids=tgt, target_mask=jnp.ones_like(tgt), **kw, **repl)
    np.testing.assert_allclose(plain, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(replaced, ref, rtol=1e-5, atol=1e-5)
    # the replacement is really used: perturbing each side changes the logits (random noise:
    # a constant shift would be removed by the first layer norm)
    for side, emb in repl.items():
        noise = jax.random.normal(jax.random.PRNGKey(0), emb.shape, emb.dtype)
        bumped = dict(repl, **{side: emb + 0.5 * noise})
        moved = ad.logits(target_ids=tgt, target_mask=jnp.ones_like(tgt), **kw, **bumped)
        assert float(jnp.abs(moved - ref).max()) > 1e-4, side


@pytest.mark.parametrize("arch", ["gpt2", "marian", "t5"])
def test_pytorch_weights_load_without_random_init(arch, tmp_path):
    """The fast from_pt path (no random initialisation) gives exactly the checkpoint's params,
    and falls back (returns None) when a parameter is missing from the checkpoint."""
    from safetensors.numpy import load_file, save_file
    from transformers import AutoConfig

    from jaxattr.loading import _auto_classes, load_pt_without_init

    model, tok = make_model(arch, seed=1)
    export_pt_safetensors(model, tok, tmp_path / "pt")
    config = AutoConfig.from_pretrained(tmp_path / "pt")
    auto = _auto_classes()[1 if config.is_encoder_decoder else 0]
    fast = load_pt_without_init(auto, str(tmp_path / "pt"), config)
    assert fast is not None
    a, b = flatten_dict(model.params), flatten_dict(fast.params)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))

    state = load_file(str(tmp_path / "pt" / "model.safetensors"))
    dropped = sorted(k for k in state if ".0." in k and k.endswith("weight"))[0]
    del state[dropped]
    save_file(state, str(tmp_path / "pt" / "model.safetensors"), metadata={"format": "pt"})
    assert load_pt_without_init(auto, str(tmp_path / "pt"), config) is None
