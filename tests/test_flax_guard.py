"""transformers' Flax Llama / Mistral / Gemma classes are refused where they compute something
other than PyTorch (issue 15, item 1): each case raises an error naming the config field."""
import copy
import functools

import pytest

import jaxattr
from jaxattr.adapters.flax_guard import FlaxConfigError, check_flax_config
from jaxattr.loading import IncompleteCheckpointError, load_hf_model
from jaxattr.testing import make_model

from _pt_export import export_pt_safetensors

BAD = [("llama", "rope_theta", 500000.0),
       ("mistral", "rope_theta", 1e6),
       ("gemma", "rope_theta", 20000.0),
       ("llama", "rope_scaling", {"rope_type": "llama3", "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 16}),
       ("llama", "head_dim", 16),
       ("mistral", "head_dim", 4),
       ("llama", "tie_word_embeddings", True),
       ("llama", "mlp_bias", True),
       ("mistral", "attention_bias", True),
       ("mistral", "sliding_window", None)]


@functools.lru_cache(maxsize=None)
def _model(arch):
    return make_model(arch)


@pytest.mark.parametrize("arch,field,value", BAD, ids=[f"{a}-{f}" for a, f, _ in BAD])
def test_wrong_flax_configs_are_refused(arch, field, value):
    config = copy.deepcopy(_model(arch)[0].config)
    setattr(config, field, value)
    with pytest.raises(FlaxConfigError, match=field):
        check_flax_config(config)


def test_load_model_refuses_a_wrong_instance():
    model, tok = make_model("llama")
    model.config.tie_word_embeddings = True
    with pytest.raises(FlaxConfigError, match="tie_word_embeddings"):
        jaxattr.load_model(model, tokenizer=tok)


def test_refused_before_loading_a_directory(tmp_path):
    model, tok = make_model("llama")
    model.config.rope_theta = 500000.0
    model.save_pretrained(tmp_path)
    with pytest.raises(FlaxConfigError, match="rope_theta"):
        load_hf_model(str(tmp_path))


def test_default_configs_still_load():
    for arch in ("llama", "mistral", "gemma"):
        model, tok = _model(arch)
        check_flax_config(model.config)


def test_mistral_input_longer_than_window_is_refused():
    model, tok = make_model("mistral")
    model.config.sliding_window = 5
    am = jaxattr.load_model(model, tokenizer=tok)
    n = len(tok("The cat sat on")["input_ids"])
    assert n == 5
    am.attribute("The cat", "The cat sat on", show_progress=False)    # within the window
    with pytest.raises(ValueError, match="sliding_window=5"):
        am.attribute("The cat", "The cat sat on the mat today", show_progress=False)


def test_missing_weight_is_an_error_not_a_random_init(tmp_path):
    from safetensors.numpy import load_file, save_file
    model, tok = make_model("gpt2", seed=1)
    export_pt_safetensors(model, tok, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    dropped = sorted(k for k in state if ".0." in k and k.endswith("weight"))[0]
    del state[dropped]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(IncompleteCheckpointError, match="newly initialized"):
        jaxattr.load_model(str(tmp_path))
