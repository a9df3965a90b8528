"""PECoRe (``jaxattr.attribute_context``): selection rules by hand, batched CCI against one
``model.attribute`` call per selected token, batch invariance over examples, errors, round
trip, views. Equality with Inseq is in ``test_context_inseq.py``."""
import json
import math

import numpy as np
import pytest

import jaxattr
from jaxattr.context import (AttributeContextOutput, CCIOutput, load_context, scores_threshold,
                             select_tokens)
from jaxattr.encoding import InputError

CTX = "The cat sat on the mat."
CUR = "Kim has a red ball"
OUT = "and Sam has a blue cup."
SRC_CTX = "Hello world, this is a tiny test."
SRC_CUR = "The cat sat on the mat."
TGT = "The dog slept on the mat."


# ----------------------------------------------------------------------------- selection
def test_threshold_mean_plus_unbiased_std_by_hand():
    s = [1.0, 2.0, 3.0, 4.0]       # mean 2.5, unbiased std sqrt(5/3)
    assert scores_threshold(s, 1.0) == pytest.approx(2.5 + math.sqrt(5 / 3), rel=1e-6)
    assert scores_threshold(s, 2.0) == pytest.approx(2.5 + 2 * math.sqrt(5 / 3), rel=1e-6)
    assert scores_threshold(s, 0.0) == pytest.approx(2.5)
    assert scores_threshold([0.3], 1.0) == pytest.approx(0.3)   # one score: the mean
    assert scores_threshold(s, None) == 0.0
    assert scores_threshold([], 1.0) == 0.0


def test_selection_ranks_by_magnitude_and_cuts_topk():
    toks = ["a", "b", "c", "d"]
    assert select_tokens(toks, [1, 2, 3, 4], std_threshold=1.0)[0] == [(3, 4.0, "d")]
    assert select_tokens(toks, [1, 2, 3, 4], std_threshold=0.0)[0] == [(3, 4.0, "d"),
                                                                     (2, 3.0, "c")]
    # negative scores count by magnitude: mean -0.5, std 3 -> threshold 2.5; |-5| passes
    sel, thr = select_tokens(toks, [-5, 1, 1, 1], std_threshold=1.0)
    assert thr == pytest.approx(2.5) and sel == [(0, -5.0, "a")]
    # no threshold: all, by |score|, ties in order; top-k after the threshold
    assert select_tokens(toks[:3], [2, -2, 1], std_threshold=None)[0] == [
        (0, 2.0, "a"), (1, -2.0, "b"), (2, 1.0, "c")]
    assert select_tokens(toks, [1, 2, 3, 4], std_threshold=None, topk=2)[0] == [
        (3, 4.0, "d"), (2, 3.0, "c")]
    with pytest.raises(ValueError, match="one score per token"):
        select_tokens(toks, [1.0], std_threshold=1.0)


# ----------------------------------------------------------------------------- batched CCI
def _per_token_reference(model, out, *, contextual_input, attributed_fn):
    """CCI scores recomputed the way Inseq does it: one ``model.attribute`` call per selected
    token, on its contextual prefix, then the L2 norm of the token's column."""
    enc_dec = model.is_encoder_decoder
    tok = model.tokenizer
    ref = []
    for cci in out.cci_scores:
        kw = {}
        if cci.contrast_token is not None:
            kw["contrast_targets"] = cci.contextless_output
            # Inseq forces the contrastive forward when the foil is the contextual token
            last = (lambda text: tok(text_target=text)["input_ids"][-2]) if enc_dec else \
                (lambda text: tok(text)["input_ids"][-1])
            kw["contrast_force_inputs"] = last(cci.contextless_output) == \
                last(cci.contextual_output)
            if enc_dec and kw["contrast_force_inputs"]:   # else only the foil id is read
                kw["contrast_sources"] = SRC_CUR
        if enc_dec:
            n = len(tok(text_target=cci.contextual_output)["input_ids"])  # incl. EOS
            a = model.attribute(contextual_input, cci.contextual_output, attr_pos_start=n - 1,
                                attr_pos_end=n, attributed_fn=attributed_fn,
                                show_progress=False, **_align(model, cci, n - 1, kw))
            scores = np.linalg.norm(a[0].source_attributions[:, 0], axis=-1)
        else:
            n = len(tok(cci.contextual_output)["input_ids"])
            prompt = contextual_input.split(" ")[0]  # attr_pos_start sets the step
            a = model.attribute(prompt, cci.contextual_output, attr_pos_start=n - 1,
                                attributed_fn=attributed_fn, show_progress=False,
                                **_align(model, cci, n - 1, kw))
            scores = np.linalg.norm(a[0].target_attributions[:, 0], axis=-1)
        ref.append(scores[:len(out.input_context_tokens)])
    return ref


def _align(model, cci, step, kw):
    if "contrast_targets" not in kw:
        return kw
    tok = model.tokenizer
    if model.is_encoder_decoder:
        n_c = 1 + len(tok(text_target=kw["contrast_targets"])["input_ids"])
        q = n_c - 2
    else:
        n_c = len(tok(kw["contrast_targets"])["input_ids"])
        q = n_c - 1
    return dict(kw, contrast_targets_alignments=[[(step, q)]])


@pytest.mark.parametrize("attributed_fn", [None, "contrast_prob_diff"])
def test_batched_cci_equals_one_attribution_per_token_decoder_only(gpt2, attributed_fn):
    out = jaxattr.attribute_context(gpt2, CUR, input_context_text=CTX, output_current_text=OUT,
                                    attributed_fn=attributed_fn,
                                    context_sensitivity_std_threshold=0.0)
    assert len(out.cci_scores) >= 2
    ref = _per_token_reference(gpt2, out, contextual_input=f"{CTX} {CUR}",
                               attributed_fn=attributed_fn or "probability")
    for cci, r in zip(out.cci_scores, ref):
        np.testing.assert_allclose(cci.input_context_scores, r, rtol=1e-5, atol=1e-8)


def test_batched_cci_equals_one_attribution_per_token_encoder_decoder(marian):
    out = jaxattr.attribute_context(marian, SRC_CUR, input_context_text=SRC_CTX,
                                    output_current_text=TGT, attributed_fn="contrast_prob_diff",
                                    context_sensitivity_std_threshold=0.0)
    assert len(out.cci_scores) >= 2
    ref = _per_token_reference(marian, out, contextual_input=f"{SRC_CTX} {SRC_CUR}",
                               attributed_fn="contrast_prob_diff")
    for cci, r in zip(out.cci_scores, ref):
        np.testing.assert_allclose(cci.input_context_scores, r, rtol=1e-5, atol=1e-8)


def test_examples_batched_together_equal_each_alone(gpt2):
    curs = [CUR, "The cat"]
    outs = ["and Sam has a blue cup.", "sat on the mat and looked at the dog."]
    both = jaxattr.attribute_context(gpt2, curs, input_context_text=CTX,
                                     output_current_text=outs,
                                     attributed_fn="contrast_prob_diff",
                                     context_sensitivity_std_threshold=0.0)
    assert isinstance(both, list) and len(both) == 2
    for i in range(2):
        alone = jaxattr.attribute_context(gpt2, curs[i], input_context_text=CTX,
                                          output_current_text=outs[i],
                                          attributed_fn="contrast_prob_diff",
                                          context_sensitivity_std_threshold=0.0)
        np.testing.assert_allclose(both[i].cti_scores, alone.cti_scores, rtol=1e-5, atol=1e-7)
        assert both[i].cti_idx == alone.cti_idx
        for a, b in zip(both[i].cci_scores, alone.cci_scores):
            np.testing.assert_allclose(a.input_context_scores, b.input_context_scores,
                                       rtol=1e-5, atol=1e-9)


def test_cti_is_zero_without_context_change(gpt2):
    """Contextless and contextual runs identical (empty-ish context template): KL is 0."""
    out = jaxattr.attribute_context(gpt2, CUR, input_context_text=CTX, input_template="{current}",
                                    output_current_text=OUT)
    np.testing.assert_allclose(out.cti_scores, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(input_current_text="  "), "input_current_text must be a non-empty"),
    (dict(input_current_text=CUR, input_context_text=CTX, input_template="{context}"),
     "no {current} placeholder"),
    (dict(input_current_text=CUR, output_template="{context}: {current}"),
     "uses {context} but no output_context_text"),
    (dict(input_current_text=CUR, handle_output_context_strategy="manual"),
     "never prompts"),
    (dict(input_current_text=CUR, input_template="{context} {current}"),
     "input_context_text is missing"),
    (dict(input_current_text=CUR, contextless_output_current_text="none"),
     "no {current} placeholder"),
])
def test_bad_arguments_raise_clear_errors(gpt2, kwargs, match):
    with pytest.raises(InputError, match=match):
        jaxattr.attribute_context(gpt2, **kwargs)


def test_context_longer_than_positions_raises(gpt2):
    long_ctx = " ".join(["the cat sat on the mat"] * 40)
    with pytest.raises(InputError, match="positions"):
        jaxattr.attribute_context(gpt2, CUR, input_context_text=long_ctx,
                                  output_current_text=OUT)


def test_output_splitting_by_separator_and_punctuation():
    from jaxattr.context.texts import split_output
    assert split_output("Pleut. Reste", "{context} {current}") == ("Pleut.", "Reste")
    assert split_output("Il pleut | Je reste", "{context} | {current}") == ("Il pleut",
                                                                            "Je reste")
    with pytest.raises(InputError, match="cannot be split"):
        split_output("one two three", "{context} | {current}")


# ----------------------------------------------------------------------------- results, views
def _hand_result():
    return AttributeContextOutput(
        input_context="<b>A</b> & B", input_context_tokens=["<b>", "A&", "</b>"],
        output_current="x y", output_current_tokens=["x", "<script>", "z"],
        cti_scores=[0.1, 2.0, 0.3],
        cci_scores=[CCIOutput(cti_idx=1, cti_token="<script>", cti_score=2.0,
                              contextual_output="x <script>",
                              input_context_scores=[0.5, -1.0, 0.25])],
        info={"attribution_std_threshold": 0.0}, cti_threshold=1.2)


def test_save_load_round_trip_and_inseq_field_names(tmp_path, gpt2):
    out = jaxattr.attribute_context(gpt2, CUR, input_context_text=CTX, output_current_text=OUT,
                                    attributed_fn="contrast_prob_diff",
                                    context_sensitivity_std_threshold=0.0)
    path = tmp_path / "ctx.json"
    out.save(path)
    back = load_context(path)
    assert back.to_dict() == out.to_dict()
    assert back.cti_scores == out.cti_scores and back.cti_idx == out.cti_idx
    assert [c.to_dict() for c in back.cci_scores] == [c.to_dict() for c in out.cci_scores]
    d = json.loads(path.read_text())
    assert {"input_context", "input_context_tokens", "output_context", "output_context_tokens",
            "output_current", "output_current_tokens", "cti_scores", "cci_scores",
            "info"} <= set(d)
    assert set(d["cci_scores"][0]) == {"cti_idx", "cti_token", "cti_score", "contextual_output",
                                       "contrast_token", "contextless_output",
                                       "input_context_scores", "output_context_scores"}
    with pytest.raises(ValueError, match="not an attribute_context result"):
        (tmp_path / "other.json").write_text("{}")
        load_context(tmp_path / "other.json")


def test_text_view_marks_selected_tokens_and_cues():
    text = _hand_result().to_text(color=False)
    assert "*<script>*" in text                         # the selected output token
    # attribution threshold 0: mean -1/12 -> cues |s| >= -0.083: all three, by magnitude
    assert "A&*(-1)" in text and "<b>*(0.5)" in text
    colored = _hand_result().to_text(color=True)
    assert "\x1b[48;2;" in colored


def test_html_view_escapes_tokens_and_blocks_requests():
    html = _hand_result().to_html()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "default-src 'none'" in html
    assert html.count('class="ja-t ja-out') == 3 and html.count("ja-cti") >= 2
    assert html.count('class="ja-t ja-ctx') == 3
