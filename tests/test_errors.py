"""Bad input gets an error that says what to do."""
import json

import pytest
import transformers as T

import jaxattr
from jaxattr.adapters import UnknownEmbeddingPathError
from jaxattr.testing import make_model


def test_unknown_method(gpt2):
    with pytest.raises(ValueError, match=r"Unknown attribution method 'salience'.*Available"):
        gpt2.attribute("The cat", "The cat sat", method="salience")


def test_unknown_attributed_fn(gpt2):
    with pytest.raises(ValueError, match=r"Unknown attributed function.*'probabilty'"):
        gpt2.attribute("The cat", "The cat sat", attributed_fn="probabilty")


def test_unknown_keyword_is_an_error(gpt2):
    with pytest.raises(TypeError, match=r"unknown keyword argument 'n_step'.*n_steps"):
        gpt2.attribute("The cat", "The cat sat", method="integrated_gradients", n_step=4)


def test_generated_text_must_start_with_prompt(gpt2):
    with pytest.raises(jaxattr.InputError, match=r"does not start with its prompt.*prompt \+ continuation"):
        gpt2.attribute("The cat", "A cat sat")


def test_generated_text_must_add_tokens(gpt2):
    with pytest.raises(jaxattr.InputError, match="adds no token"):
        gpt2.attribute("The cat", "The cat")


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_input(gpt2, marian, bad):
    with pytest.raises(jaxattr.InputError, match="is empty"):
        gpt2.attribute(bad, "The cat")
    with pytest.raises(jaxattr.InputError, match="is empty"):
        marian.attribute(bad, "The cat")
    with pytest.raises(jaxattr.InputError, match="empty list"):
        gpt2.attribute([], [])


def test_input_longer_than_positions(gpt2, marian):
    long = "The cat sat on the mat " * 30
    with pytest.raises(jaxattr.InputError, match=r"only 64 positions.*Shorten"):
        gpt2.attribute("The cat", "The cat" + long)
    with pytest.raises(jaxattr.InputError, match=r"only 64 positions.*Shorten"):
        marian.attribute(long, "The dog")
    with pytest.raises(jaxattr.InputError, match=r"only 64 positions"):
        gpt2.attribute(long, generation_args={"max_new_tokens": 2})


def test_mismatched_list_lengths(gpt2):
    with pytest.raises(jaxattr.InputError, match="one generated text per input"):
        gpt2.attribute(["The cat", "The dog"], ["The cat sat"])


def test_unknown_embedding_path_lists_the_embed_modules():
    model, tok = make_model("gpt2")
    Custom = type("MyCustomGPT2", (T.FlaxGPT2LMHeadModel,), {})
    custom = Custom(model.config, seed=0)
    with pytest.raises(UnknownEmbeddingPathError,
                       match=r"MyCustomGPT2.*'transformer/wte'.*embedding_paths="):
        jaxattr.load_model(custom, tokenizer=tok)
    # the fix the message names works
    fixed = jaxattr.load_model(custom, tokenizer=tok,
                               embedding_paths={"decoder": "transformer/wte"})
    assert fixed.attribute("The cat", "The cat sat")[0].target_attributions.shape[1] > 0
    with pytest.raises(UnknownEmbeddingPathError, match="No embedding table at params path"):
        jaxattr.load_model(custom, tokenizer=tok, embedding_paths={"decoder": "transformer/xx"})


def test_architecture_without_flax_class(tmp_path):
    cfg = T.FalconConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                         vocab_size=50)
    cfg.save_pretrained(tmp_path)
    with pytest.raises(jaxattr.UnsupportedModelError,
                       match=r"'falcon'.*no Flax class.*gpt2.*marian"):
        jaxattr.load_model(str(tmp_path))


def test_unknown_baseline(gpt2):
    with pytest.raises(ValueError, match="Unknown baseline 'mask'"):
        gpt2.attribute("The cat", "The cat sat", method="integrated_gradients",
                       baseline="mask", n_steps=2)


def test_attr_pos_out_of_range(gpt2):
    with pytest.raises(jaxattr.InputError, match="nothing to attribute"):
        gpt2.attribute("The cat", "The cat sat", attr_pos_start=40)
