"""Aggregation: hidden reductions, normalisation, word/span merging, pairs, slices, pytrees."""
import jax
import numpy as np
import pytest

from jaxattr import aggregate as agg
from jaxattr.results import AttributionOutput, SequenceAttribution

from _results_helpers import NAN, gpt2, gpt2_output, toy_decoder, toy_encdec, toy_output


def assert_same(a, b):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=1e-6, atol=1e-7, equal_nan=True)


# --------------------------------------------------------------------------- reductions
def test_hidden_reductions_by_hand():
    a = np.array([[[3.0, -4.0], [1.0, 1.0]], [[NAN, NAN], [-2.0, 1.0]]], np.float32)
    assert_same(agg.vnorm(a), [[5.0, np.sqrt(2)], [NAN, np.sqrt(5)]])
    assert_same(agg.hidden_sum(a), [[-1.0, 2.0], [NAN, -1.0]])
    assert_same(agg.hidden_mean(a), [[-0.5, 1.0], [NAN, -0.5]])
    assert_same(agg.absmax(a), [[-4.0, 1.0], [NAN, -2.0]])


def test_reduce_hidden_on_views_and_outputs():
    seq = toy_encdec().reduce_hidden("sum")
    assert seq.source_attributions.shape == (4, 3) and seq.target_attributions.shape == (4, 3)
    assert_same(seq.source_attributions[2], [-2.0, 1.0, -5.0])
    assert_same(seq.target_attributions[:, 2], [1.0, 2.0, 7.0, NAN])
    out = toy_output().reduce_hidden("absmax")
    assert out[0].source_attributions.shape == (4, 3)
    assert out[1].target_attributions.shape == (4, 2)          # already 2-D: unchanged
    assert out.info["aggregations"] == ["reduce_hidden(how='absmax')"]
    with pytest.raises(ValueError, match="Unknown aggregator"):
        agg.reduce_hidden(toy_encdec(), "median")


def test_normalized_columns_sum_to_one():
    rng = np.random.default_rng(0)
    seq = toy_encdec()
    seq.source_attributions = rng.standard_normal((4, 3, 2)).astype(np.float32)
    for view in (seq.normalize(),                                 # with the hidden axis
                 seq.reduce_hidden().normalize(),                  # after vnorm
                 seq.reduce_hidden("sum").normalize()):            # signed values
        total = (np.nansum(np.abs(view.source_attributions), axis=tuple({0, 2} & set(
            range(view.source_attributions.ndim))))
                 + np.nansum(np.abs(view.target_attributions), axis=tuple({0, 2} & set(
                     range(view.target_attributions.ndim)))))
        assert_same(total, np.ones(3))
    default = toy_encdec().aggregate()
    total = default.source_attributions.sum(0) + np.nansum(default.target_attributions, 0)
    assert_same(total, np.ones(3))
    # NaN stays NaN; an all-zero column stays zero instead of dividing by zero
    zero = toy_decoder()
    zero.target_attributions = np.where(np.isnan(zero.target_attributions), NAN, 0.0)
    assert_same(zero.normalize().target_attributions, zero.target_attributions)


def test_rescale_keeps_sign_and_peaks_at_one():
    seq = toy_encdec().reduce_hidden("sum").rescale()
    peak = np.maximum(np.nanmax(np.abs(seq.source_attributions), 0),
                      np.nanmax(np.abs(seq.target_attributions), 0))
    assert_same(peak, np.ones(3))
    assert_same(seq.source_attributions[2], [-2 / 3, 1 / 4, -5 / 7])


# --------------------------------------------------------------------------- word boundaries
def test_word_groups_byte_level():
    toks = ["The", "Ġcap", "ital", "Ġof", "Ġ", "F", "ran", "ce", ".", "Ċ", "Hello",
            "<|endoftext|>", "x", "Ġy"]
    assert agg.detect_scheme(toks) == "bytelevel"
    assert agg.word_groups(toks) == [(0, 1), (1, 3), (3, 4), (4, 9), (9, 10), (10, 11),
                                     (11, 12), (12, 13), (13, 14)]


def test_word_groups_sentencepiece():
    toks = ["<s>", "▁Le", "▁ch", "at", "▁est", "▁là", ".", "</s>"]
    assert agg.detect_scheme(toks) == "sentencepiece"
    assert agg.word_groups(toks) == [(0, 1), (1, 2), (2, 4), (4, 5), (5, 7), (7, 8)]


def test_word_groups_wordpiece():
    toks = ["[CLS]", "the", "cap", "##ital", "of", "fr", "##an", "##ce", "[SEP]"]
    assert agg.detect_scheme(toks) == "wordpiece"
    assert agg.word_groups(toks) == [(0, 1), (1, 2), (2, 4), (4, 5), (5, 8), (8, 9)]


def test_word_groups_forced_boundaries_and_unknown_scheme():
    assert agg.word_groups(["Ġa", "b", "c"], boundaries=(2,)) == [(0, 2), (2, 3)]
    assert agg.detect_scheme(["a", "b"]) == "none"
    assert agg.word_groups(["a", "b"]) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="Unknown word scheme"):
        agg.word_groups(["a"], scheme="bpe")


def _merged_tokens(tok, text):
    ids = tok(text)["input_ids"]
    toks = tok.convert_ids_to_tokens(ids)
    seq = SequenceAttribution(source=toks, target=["<x>"], source_attributions=None,
                              target_attributions=None, step_scores={}, attr_pos_start=0,
                              attr_pos_end=1)
    return toks, agg.merge_words(seq, tokenizer=tok).source


def test_merge_words_real_byte_level_tokenizer():
    from jaxattr.testing import make_tokenizer
    tok = make_tokenizer("bytelevel")
    toks, words = _merged_tokens(tok, "The capital of France is Paris.")
    assert len(toks) > len(words)                                  # something was merged
    assert agg.detect_scheme(tokenizer=tok) == "bytelevel"
    assert words == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "ĠParis."]


def test_merge_words_real_sentencepiece_tokenizer():
    from jaxattr.testing import make_tokenizer
    tok = make_tokenizer("eos")
    toks, words = _merged_tokens(tok, "The capital of France is Paris.")
    assert len(toks) > len(words)
    assert agg.detect_scheme(tokenizer=tok) == "sentencepiece"
    assert words == ["▁The", "▁capital", "▁of", "▁France", "▁is", "▁Paris.", "</s>"]


def test_merge_words_real_wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers
    from transformers import PreTrainedTokenizerFast
    from jaxattr.testing import CORPUS
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tk.token_to_id("[CLS]")),
                                                 ("[SEP]", tk.token_to_id("[SEP]"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]")
    toks, words = _merged_tokens(tok, "The capital of France is Paris.")
    assert any(t.startswith("##") for t in toks)
    assert agg.detect_scheme(tokenizer=tok) == "wordpiece"
    assert words == ["[CLS]", "the", "capital", "of", "france", "is", "paris", ".", "[SEP]"]


# --------------------------------------------------------------------------- merging values
def test_merge_words_values_by_hand():
    m = toy_encdec().merge_words()
    assert m.source == ["▁Le", "▁chat", "</s>"]
    assert m.target == ["<pad>", "▁The", "▁cat"]
    assert (m.attr_pos_start, m.attr_pos_end) == (1, 3) and m.generated == ["▁The", "▁cat"]
    assert m.source_ids is None and m.target_ids is None
    # absmax over each word's rows and columns, elementwise over the hidden axis
    assert_same(m.source_attributions, [[[1, 0], [0, 2]],
                                        [[-2, 3], [4, -5]],
                                        [[1, 1], [2, 0]]])
    assert_same(m.target_attributions, [[[1, 0], [1, 1]],
                                        [[NAN, NAN], [2, 2]],
                                        [[NAN, NAN], [3, 4]]])
    # the word's probability is the product of its pieces'; entropies add up
    assert_same(m.step_scores["probability"], [0.5, 0.2])
    assert_same(m.step_scores["entropy"], [1.0, 2.5])
    s = toy_encdec().merge_words(how="sum", step_scores_how={"probability": "mean"})
    assert_same(s.source_attributions[1], [[-2, 3], [5, -3]])
    assert_same(s.step_scores["probability"], [0.5, 0.45])


def test_merge_words_splits_at_the_start_of_the_generation():
    seq = SequenceAttribution(source=None, target=["ĠPar", "is", "ian"],
                              source_attributions=None,
                              target_attributions=np.array([[1.0], [2.0], [NAN]], np.float32),
                              step_scores={}, attr_pos_start=2, attr_pos_end=3)
    m = seq.merge_words()
    assert m.target == ["ĠParis", "ian"] and m.generated == ["ian"]
    assert_same(m.target_attributions, [[2.0], [NAN]])


def test_merge_words_on_a_real_output():
    model, tok = gpt2()
    out = gpt2_output()
    merged = out.merge_words(tokenizer=tok)
    seq, m = out[0], merged[0]
    assert "".join(m.target) == "".join(seq.target)
    assert m.target == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "ĠParis"]
    assert m.generated == ["Ġis", "ĠParis"]
    n = len(m.generated)
    assert m.target_attributions.shape == (len(m.target), n, seq.target_attributions.shape[-1])
    # "ĠParis" is several pieces: its probability is the product of theirs
    paris = seq.step_scores["probability"][-(len(seq.target) - seq.target.index("Ġis") - 1):]
    assert_same(m.step_scores["probability"][-1], np.prod(paris))
    assert_same(m.step_scores["logprob"][-1], np.sum(np.log(paris)))
    with pytest.raises(TypeError, match="host view"):
        agg.merge_words(out.batches[0])


def test_span_merge_and_pair_difference_by_hand():
    def view(pronoun, src, tgt, prob):
        return SequenceAttribution(
            source=["▁The", "▁doctor", "▁said", pronoun, "</s>"], target=["<pad>", "▁X", "▁Y"],
            source_attributions=np.array(src, np.float32),
            target_attributions=np.array(tgt, np.float32),
            step_scores={"probability": np.array(prob, np.float32)},
            attr_pos_start=1, attr_pos_end=3)
    a = view("▁he", [[.1, .2], [.3, .1], [.2, .2], [.4, .5], [0, 0]],
             [[0, 0], [NAN, 0], [NAN, NAN]], [.5, .5])
    b = view("▁she", [[.1, .1], [.2, .1], [.2, .3], [.1, .1], [0, .1]],
             [[0, .1], [NAN, 0], [NAN, NAN]], [.25, .125])
    ma, mb = (x.merge_spans(source_spans=[(1, 3)], how="sum") for x in (a, b))
    assert ma.source == ["▁The", "▁doctor▁said", "▁he", "</s>"]
    assert_same(ma.source_attributions, [[.1, .2], [.5, .3], [.4, .5], [0, 0]])
    d = ma - mb
    assert d.source == ["▁The", "▁doctor▁said", "▁he → ▁she", "</s>"]
    assert d.target == ["<pad>", "▁X", "▁Y"]
    assert_same(d.source_attributions, [[0, .1], [.1, -.1], [.3, .4], [0, -.1]])
    assert_same(d.target_attributions, [[0, -.1], [NAN, 0], [NAN, NAN]])
    assert_same(d.step_scores["probability"], [.25, .375])
    # the same through outputs, and the reverse order of operations gives the same numbers
    outs = AttributionOutput([a], {"method": "x"}), AttributionOutput([b], {"method": "x"})
    d2 = agg.merge_spans(agg.difference(*outs), source_spans=[(1, 3)], how="sum")
    assert_same(d2[0].source_attributions, d.source_attributions)
    with pytest.raises(ValueError, match="matching shapes"):
        a - b.merge_spans(source_spans=[(0, 2)])


def test_span_validation():
    seq = toy_encdec()
    with pytest.raises(ValueError, match="overlap"):
        seq.merge_spans(source_spans=[(0, 2), (1, 3)])
    with pytest.raises(ValueError, match="crosses position 1"):
        seq.merge_spans(target_spans=[(0, 2)])
    with pytest.raises(ValueError, match="no source"):
        toy_decoder().merge_spans(source_spans=[(0, 1)])
    m = seq.merge_spans(target_spans=[(-2, 4)])          # negative start
    assert m.target == ["<pad>", "▁The", "▁cat"]


def test_slice_tokens_by_hand():
    s = toy_decoder().slice_tokens(target=(1, 3))
    assert s.target == ["Ġthere", "Ġyou"] and s.generated == ["Ġyou"]
    assert (s.attr_pos_start, s.attr_pos_end) == (1, 2)
    assert_same(s.target_attributions, [[-0.25], [NAN]])
    assert_same(s.step_scores["probability"], [0.25])
    assert s.target_ids == [6, 7]
    e = toy_encdec().slice_tokens(source=slice(1, 3))
    assert e.source == ["▁ch", "at"] and e.source_attributions.shape == (2, 3, 2)
    with pytest.raises(ValueError, match="no attributed token"):
        toy_decoder().slice_tokens(target=(0, 2))


def test_operations_chain_in_any_order():
    seq = toy_encdec()
    a = seq.merge_spans(source_spans=[(1, 3)], how="sum").reduce_hidden("sum")
    b = seq.reduce_hidden("sum").merge_spans(source_spans=[(1, 3)], how="sum")
    assert_same(a.source_attributions, b.source_attributions)
    c = seq.merge_words(how="sum").reduce_hidden("sum").normalize()
    d = agg.normalize(agg.reduce_hidden(agg.merge_words(seq, how="sum"), "sum"))
    assert_same(c.source_attributions, d.source_attributions)
    assert_same(c.target_attributions, d.target_attributions)
    out = toy_output().merge_words().reduce_hidden().normalize()
    assert out.info["aggregations"][0].startswith("merge_words(")
    assert len(out.info["aggregations"]) == 3


# --------------------------------------------------------------------------- pytree
def test_pytree_operations_match_the_host_view_under_jit():
    out = gpt2_output()
    batch = out.batches[0]
    rows = out.info["batch_rows"][0]
    f = jax.jit(lambda b: agg.normalize(agg.reduce_hidden(b)))
    res = f(batch)
    assert res.target_attributions.shape == batch.target_attributions.shape[:3]
    for r, i in enumerate(rows):
        host = out[i].aggregate()
        n_tgt, n = host.target_attributions.shape
        got = np.asarray(res.target_attributions[r, :n_tgt, :n])
        want = np.nan_to_num(host.target_attributions, nan=0.0)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    scaled = jax.jit(agg.rescale)(agg.reduce_hidden(batch, "sum"))
    assert float(np.abs(np.asarray(scaled.target_attributions)).max()) == pytest.approx(1.0)
    diff = jax.jit(agg.difference)(res, res)
    assert float(np.abs(np.asarray(diff.target_attributions)).max()) == 0.0
    # the output keeps its batches consistent through numeric steps
    agg_out = out.reduce_hidden().normalize()
    assert len(agg_out.batches) == 1 and agg_out.batches[0].target_attributions.ndim == 3
