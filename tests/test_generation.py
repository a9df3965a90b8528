"""Greedy generation with one compiled step per bucket gives Flax ``generate``'s tokens."""
import numpy as np
import pytest

import jaxattr
from jaxattr import generation
from jaxattr.generation import greedy_spec, new_tokens

from conftest import PROMPTS, SOURCES


def _encode(model, texts):
    tok = model.tokenizer
    rows = [list(tok(t)["input_ids"]) for t in texts]
    if not model.is_encoder_decoder and tok.eos_token_id is not None:
        rows = [r[:-1] if r and r[-1] == tok.eos_token_id else r for r in rows]
    return rows


def _reference(model, prompts, args):
    """Flax ``generate`` itself (the path ``new_tokens`` takes when greedy_spec declines)."""
    args = dict(args, pad_token_id=model.pad_token_id)
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), model.pad_token_id, np.int32)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        cols = slice(0, len(p)) if model.is_encoder_decoder else slice(width - len(p), width)
        ids[r, cols], mask[r, cols] = p, 1
    seqs = np.asarray(model.hf_model.generate(ids, attention_mask=mask, params=model.params,
                                              **args).sequences)
    return seqs[:, 1:] if model.is_encoder_decoder else seqs[:, width:]


def _ours(model, prompts, args):
    args = dict(args, pad_token_id=model.pad_token_id)
    spec = greedy_spec(model.hf_model.generation_config, args)
    assert spec is not None
    return generation.greedy_new_tokens(
        model.adapter, spec, prompts, max_positions=model.max_positions,
        decoder_start_token_id=model.decoder_start_token_id if model.is_encoder_decoder
        else None)


def _same(ours, ref):
    n = ours.shape[1]
    np.testing.assert_array_equal(ours, ref[:, :n])
    assert (ref[:, n:] == ref[0, -1]).all() or n == ref.shape[1]   # HF only padded on


@pytest.mark.parametrize("name", ["toy-recall", "toy-mt"])
def test_bundled_models_match_flax_generate(name):
    model = jaxattr.load_model(name)
    if model.is_encoder_decoder:
        texts = [e["source"] for e in jaxattr.zoo.tasks.mt_examples(3, seed=11)]
    else:
        texts = [e["prompt"] for e in jaxattr.zoo.tasks.recall_examples(3, seed=11)]
    texts.append(texts[0].split(".")[0])          # a shorter prompt in the same batch
    prompts = _encode(model, texts)
    args = dict(max_new_tokens=6, do_sample=False)
    _same(_ours(model, prompts, args), _reference(model, prompts, args))


@pytest.mark.parametrize("fixture", ["gpt2", "marian"])
def test_tiny_models_match_flax_generate_with_processors(fixture, request):
    model = request.getfixturevalue(fixture)
    prompts = _encode(model, SOURCES if model.is_encoder_decoder else PROMPTS)
    eos = model.tokenizer.eos_token_id
    args = dict(max_new_tokens=4, forced_eos_token_id=eos, min_length=3, suppress_tokens=[5])
    _same(_ours(model, prompts, args), _reference(model, prompts, args))


def test_one_compilation_per_bucket(gpt2):
    spec = greedy_spec(gpt2.hf_model.generation_config,
                       dict(max_new_tokens=6, pad_token_id=gpt2.pad_token_id))
    prompts = _encode(gpt2, PROMPTS)
    generation._last_logits_jit.clear_cache()
    generation.greedy_new_tokens(gpt2.adapter, spec, prompts)
    generation.greedy_new_tokens(gpt2.adapter, spec, [p[:-1] for p in prompts])  # same bucket
    assert generation._last_logits_jit._cache_size() == 1


def test_other_generation_args_go_to_generate(gpt2):
    cfg = gpt2.hf_model.generation_config
    assert greedy_spec(cfg, dict(max_new_tokens=3, num_beams=2)) is None
    assert greedy_spec(cfg, dict(max_new_tokens=3, do_sample=True)) is None
    assert greedy_spec(cfg, dict(max_new_tokens=3, no_repeat_ngram_size=2)) is None
    prompts = _encode(gpt2, PROMPTS[:2])
    args = dict(max_new_tokens=2, num_beams=2)
    got = new_tokens(gpt2.hf_model, gpt2.adapter, prompts, args, is_encoder_decoder=False,
                     pad_token_id=gpt2.pad_token_id)
    np.testing.assert_array_equal(got, _reference(gpt2, prompts, args))
