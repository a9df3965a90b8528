"""Contrastive attribution through the pipeline (targets from the single forward)."""
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr

from conftest import SOURCES, TARGETS

PROMPT, FULL = "The cat sat on the", "The cat sat on the mat and"
FOIL = "The cat sat on the cat and"  # same token count, differs at 'Ġm' -> 'Ġc'


def foil_logit(logits, batch):
    """Custom target: the logit of the contrast token."""
    return jnp.take_along_axis(logits, batch.contrast_ids[..., None], -1)[..., 0]


@pytest.mark.parametrize("method,kw", [("saliency", {"abs": False}),
                                       ("integrated_gradients", {"n_steps": 16})])
def test_contrast_logits_diff_is_linear(gpt2, method, kw):
    diff = gpt2.attribute(PROMPT, FULL, method=method, attributed_fn="contrast_logits_diff",
                          contrast_targets=FOIL, **kw)[0].target_attributions
    tgt = gpt2.attribute(PROMPT, FULL, method=method, attributed_fn="logit",
                         **kw)[0].target_attributions
    foil = gpt2.attribute(PROMPT, FULL, method=method, attributed_fn=foil_logit,
                          contrast_targets=FOIL, **kw)[0].target_attributions
    scale = np.nanmax(np.abs(tgt))
    assert np.nanmax(np.abs(diff - (tgt - foil))) <= 1e-4 * scale


def test_contrast_prob_with_a_contrast_prefix_is_the_probability_in_that_context(gpt2):
    ctx = "Hello world, "
    toks = gpt2.tokenizer
    n_full = len(toks(FULL)["input_ids"])
    n_ctx_full = len(toks(ctx + FULL)["input_ids"])
    shift = n_ctx_full - n_full
    pairs = [(i, i + shift) for i in range(n_full)]
    out = gpt2.attribute(PROMPT, FULL, attributed_fn="contrast_prob", contrast_targets=ctx + FULL,
                         contrast_targets_alignments=[pairs], contrast_force_inputs=True,
                         step_scores=("contrast_prob",))[0]
    direct = gpt2.attribute(ctx + PROMPT, ctx + FULL, step_scores=("probability",))[0]
    assert direct.target[-3:] == out.target[-3:]
    np.testing.assert_allclose(out.step_scores["contrast_prob"][-3:],
                               direct.step_scores["probability"][-3:], rtol=1e-5)


def test_same_token_steps_get_zero_contrast_prob_diff(gpt2):
    seq = gpt2.attribute(PROMPT, FULL, attributed_fn="contrast_prob_diff", contrast_targets=FOIL,
                         step_scores=("contrast_prob_diff",))[0]
    # steps 1 and 2 ('at', 'Ġand') are the same token on the same prefix: score and
    # attribution are exactly zero; step 0 differs.
    assert seq.step_scores["contrast_prob_diff"][0] != 0
    np.testing.assert_array_equal(seq.step_scores["contrast_prob_diff"][1:], 0.0)
    assert np.nanmax(seq.target_attributions[:, 1:]) == 0.0
    assert np.nanmax(seq.target_attributions[:, 0]) > 0.0


def test_kl_and_pcxmi_are_zero_without_a_change(marian):
    seq = marian.attribute(SOURCES[:2], TARGETS[:2], attributed_fn="kl_divergence",
                           contrast_sources=SOURCES[:2], step_scores=("kl_divergence", "pcxmi"))
    for s in seq.sequence_attributions:
        np.testing.assert_allclose(s.step_scores["kl_divergence"], 0.0, atol=1e-5)
        np.testing.assert_allclose(s.step_scores["pcxmi"], 0.0, atol=1e-5)
        np.testing.assert_allclose(s.source_attributions, 0.0, atol=1e-5)
    other = marian.attribute(SOURCES[0], TARGETS[0], attributed_fn="kl_divergence",
                             contrast_sources=SOURCES[1], step_scores=("kl_divergence",))[0]
    assert (other.step_scores["kl_divergence"] > 1e-3).all()


def test_batched_contrastive_equals_one_by_one(marian):
    foils = ["The cat slept", "The dog slept", "A tiny model"]
    kw = dict(attributed_fn="contrast_prob_diff", attribute_target=True,
              step_scores=("contrast_prob_diff", "probability"),
              contrast_targets_alignments=None)
    tgts = ["The dog sat", "The cat sat", "A small model"]
    enc = [marian.encode(s, t)[0] for s, t in zip(SOURCES, tgts)]
    cenc = [len(marian.tokenizer(text_target=f)["input_ids"]) + 1 for f in foils]
    keep = [i for i in range(3) if len(enc[i].target_ids) == cenc[i]]
    assert len(keep) >= 2
    srcs, ts, fs = ([x[i] for i in keep] for x in (SOURCES, tgts, foils))
    batched = marian.attribute(srcs, ts, contrast_targets=fs, **kw)
    for i in range(len(srcs)):
        alone = marian.attribute(srcs[i], ts[i], contrast_targets=fs[i], **kw)[0]
        b = batched[i]
        for x, y in [(b.source_attributions, alone.source_attributions),
                     (b.target_attributions, alone.target_attributions)]:
            assert np.nanmax(np.abs(x - y)) <= 1e-5 * max(np.nanmax(np.abs(y)), 1e-12)
        for k in b.step_scores:
            np.testing.assert_allclose(b.step_scores[k], alone.step_scores[k], rtol=1e-5,
                                       atol=1e-8)


def test_contrast_errors(gpt2, marian):
    with pytest.raises(jaxattr.InputError, match="is contrastive: pass contrast_targets"):
        gpt2.attribute(PROMPT, FULL, attributed_fn="contrast_prob_diff")
    with pytest.raises(jaxattr.InputError, match="cannot be aligned by position"):
        gpt2.attribute(PROMPT, FULL, attributed_fn="contrast_prob_diff",
                       contrast_targets="The cat sat on the mat and the dog")
    with pytest.raises(jaxattr.InputError, match="contrast_sources is for encoder-decoder"):
        gpt2.attribute(PROMPT, FULL, attributed_fn="pcxmi", contrast_sources="Hello")
    with pytest.raises(jaxattr.InputError, match="out of range"):
        gpt2.attribute(PROMPT, FULL, attributed_fn="contrast_prob_diff",
                       contrast_targets=FOIL, contrast_targets_alignments=[[(0, 99)]])


def test_mc_dropout_target_runs_dropout_forwards(marian):
    a = marian.attribute(SOURCES[0], TARGETS[0], attributed_fn="mc_dropout_prob_avg",
                         step_scores=("mc_dropout_prob_avg",), n_mcd_steps=3)[0]
    b = marian.attribute(SOURCES[0], TARGETS[0], attributed_fn="mc_dropout_prob_avg",
                         step_scores=("mc_dropout_prob_avg",), n_mcd_steps=3)[0]
    s = a.step_scores["mc_dropout_prob_avg"]
    assert np.isfinite(s).all() and np.abs(s).max() > 0  # dropout (p=0.1) really varies
    np.testing.assert_array_equal(s, b.step_scores["mc_dropout_prob_avg"])  # deterministic
