"""Silent wrong results found by review (issue 12, items 2-7): each now right or an error."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr import integrated_gradients, occlusion, smoothgrad
from jaxattr.methods import quadrature

from conftest import FULL, PROMPTS


def test_with_params_under_mesh_auto_uses_the_new_params(gpt2):
    """The replicated-parameter cache must not serve the old parameters to a copy."""
    other = gpt2.with_params(jax.tree_util.tree_map(lambda p: p * 1.5, gpt2.params))
    gpt2.attribute(PROMPTS[1], FULL[1], mesh="auto", show_progress=False)  # fills the cache
    want = other.attribute(PROMPTS[1], FULL[1], show_progress=False)[0].target_attributions
    got = other.attribute(PROMPTS[1], FULL[1], mesh="auto",
                          show_progress=False)[0].target_attributions
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_smoothgrad_of_ig_records_no_deltas_and_does_not_warn(gpt2):
    sg_ig = smoothgrad(integrated_gradients, n_samples=2, stdevs=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seq = gpt2.attribute(PROMPTS[1], FULL[1], method=sg_ig, n_steps=16,
                             show_progress=False)[0]
    assert "deltas" not in seq.step_scores
    assert np.isfinite(seq.target_attributions[0]).all()


def test_attention_aggregation_is_the_same_on_the_output_and_the_view(gpt2, tmp_path):
    out = gpt2.attribute(PROMPTS[1], FULL[1], method="attention", show_progress=False)
    raw = out[0].target_attributions  # [rows, steps, layers, heads]
    by_out = out.aggregate()[0].target_attributions
    by_view = out[0].aggregate().target_attributions
    # hand-computed: mean over layers and heads, then each column's |values| sum to 1
    mean = raw.reshape(raw.shape[:2] + (-1,)).mean(-1)
    expected = mean / np.nansum(np.abs(mean), axis=0, keepdims=True)
    np.testing.assert_allclose(by_out, expected, rtol=1e-5)
    np.testing.assert_allclose(by_view, expected, rtol=1e-5)
    out.save(tmp_path / "att.json")
    loaded = jaxattr.load(tmp_path / "att.json")
    np.testing.assert_allclose(loaded[0].aggregate().target_attributions, expected, rtol=1e-5)
    # the renderers aggregate the view the same way: the text shows the mean's numbers
    from jaxattr.render._common import prepared
    np.testing.assert_allclose(prepared(out[0]).target_attributions, expected, rtol=1e-5)


def test_occlusion_of_integer_inputs_gives_float_attributions():
    x = jnp.asarray([[3, 1]])  # [L=1, H=2] int: one position with two features
    attr = occlusion(lambda z: (0.5 * z.sum())[None], x, token_axis=0)
    assert jnp.issubdtype(attr.dtype, jnp.floating)
    np.testing.assert_allclose(attr[0], [[1.0, 1.0]])  # Δ = 2 split over 2 features
    x = jnp.asarray([[400, 0, 0]])
    attr = occlusion(lambda z: (z.sum() / 1.0)[None], x, token_axis=0)
    np.testing.assert_allclose(attr[0], [[400 / 3] * 3], rtol=1e-6)
    x = jnp.asarray([[3], [1]])  # two positions, one feature: [1.5, 0.5]
    attr = occlusion(lambda z: (0.5 * z.sum())[None], x, token_axis=0)
    np.testing.assert_allclose(attr[0, :, 0], [1.5, 0.5])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_baseline_is_rejected(gpt2, bad):
    base = np.zeros(gpt2.config.n_embd, np.float32)
    base[3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        gpt2.attribute(PROMPTS[1], FULL[1], method="integrated_gradients", baseline=base,
                       n_steps=2, show_progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        integrated_gradients(lambda z: z.sum()[None], jnp.ones((2, 3)),
                             jnp.asarray([[0.0, bad, 0.0]] * 2))
    with pytest.raises(ValueError, match="numeric array"):
        gpt2.attribute(PROMPTS[1], FULL[1], method="integrated_gradients",
                       baseline=np.array(["a"] * 4), n_steps=2, show_progress=False)


def test_non_finite_results_warn_and_name_the_cause(gpt2):
    """A custom attributed function with log(0): its gradient is NaN everywhere."""
    def zero_prob(logits, batch):
        return jnp.log(jax.nn.softmax(logits)[..., 0] * 0.0)
    with pytest.warns(RuntimeWarning, match="NaN or inf.*sequence 0"):
        gpt2.attribute(PROMPTS[1], FULL[1], attributed_fn=zero_prob, show_progress=False)


def test_attr_pos_negative_counts_from_the_end_for_start_and_end(gpt2):
    whole = gpt2.attribute(PROMPTS[1], FULL[1], show_progress=False)[0]
    n = len(whole.target)
    tail = gpt2.attribute(PROMPTS[1], FULL[1], attr_pos_start=-2, show_progress=False)[0]
    assert (tail.attr_pos_start, tail.attr_pos_end) == (n - 2, n)
    np.testing.assert_allclose(tail.target_attributions, whole.target_attributions[:, -2:],
                               rtol=1e-5)
    mid = gpt2.attribute(PROMPTS[1], FULL[1], attr_pos_start=-3, attr_pos_end=-1,
                         show_progress=False)[0]
    assert (mid.attr_pos_start, mid.attr_pos_end) == (n - 3, n - 1)
    with pytest.raises(jaxattr.InputError, match="attr_pos_start=-40 counts back"):
        gpt2.attribute(PROMPTS[1], FULL[1], attr_pos_start=-40)
    with pytest.raises(jaxattr.InputError, match="attr_pos_end must be an integer"):
        gpt2.attribute(PROMPTS[1], FULL[1], attr_pos_end=2.5)


@pytest.mark.parametrize("value", [2.5, 2.0, "4", True, 0])
def test_step_and_sample_counts_must_be_integers(gpt2, value):
    with pytest.raises(ValueError, match="n_steps must be an integer"):
        quadrature(value)
    with pytest.raises(ValueError, match="n_samples must be an integer"):
        jaxattr.gradient_shap(lambda z: z.sum()[None], jnp.ones((2, 3)), n_samples=value)
    if value == 2.5:
        with pytest.raises(ValueError, match="n_steps must be an integer"):
            gpt2.attribute(PROMPTS[1], FULL[1], method="integrated_gradients", n_steps=value,
                           show_progress=False)


# --------------------------------------------------------------------------------------------
# Item 14: what reaches the terminal and the disk; item 17: the trapezoid factor


def test_to_text_escapes_terminal_codes_in_the_files_info():
    from jaxattr.results import AttributionOutput
    from _results_helpers import toy_decoder
    evil = AttributionOutput([toy_decoder()], {"model": "m\x1b[2J\x1b]0;pwned\x07",
                                               "method": "sal\x1b[31miency"})
    text = evil.to_text(color=False)
    assert "\x1b" not in text and "\x07" not in text
    assert "m\\x1b[2J\\x1b]0;pwned\\x07" in text and "sal\\x1b[31miency" in text
    html = evil.to_html()
    assert "\x1b" not in html


def test_saving_to_a_directory_is_a_clear_error_and_leaves_no_tmp(tmp_path):
    from _results_helpers import toy_output
    target = tmp_path / "results"
    target.mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        toy_output().save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert list(target.iterdir()) == []


def test_merge_words_decodes_byte_level_words_to_text():
    from jaxattr.results import SequenceAttribution
    from jaxattr.testing import make_model
    tok = make_model("gpt2")[1]
    text = "Hello wörld café"
    tokens = tok.tokenize(text)
    assert any("Ã" in t for t in tokens)  # the byte-level pieces show as mojibake
    n = len(tokens)
    attr = np.tril(np.ones((n, n - 1), np.float32), -1)
    attr[np.triu_indices(n, 0)[0], np.clip(np.triu_indices(n, 0)[1] - 1, 0, n - 2)] = np.nan
    seq = SequenceAttribution(source=None, target=tokens, source_attributions=None,
                              target_attributions=attr, step_scores={}, attr_pos_start=1,
                              attr_pos_end=n)
    merged = seq.merge_words(scheme="bytelevel").target
    # independent truth: the tokenizer's own decoding of each word (markers kept as Ġ)
    words = [tok.convert_tokens_to_string(tokens[a:b]).replace(" ", "Ġ")
             for a, b in jaxattr.aggregate.word_groups(tokens, scheme="bytelevel",
                                                       boundaries=(1, n))]
    assert merged == words
    assert "Ġwörld" in merged and "Ġcafé" in merged


def test_trapezoid_rule_is_textbook_and_the_captum_factor_is_documented():
    n = 7
    alphas, w = quadrature(n, "riemann_trapezoid")
    np.testing.assert_allclose(w.sum(), 1.0)  # a constant integrates exactly
    captum = np.full(n, 1.0 / n)  # Captum's riemann_trapezoid step sizes, written out
    captum[0] /= 2
    captum[-1] /= 2
    np.testing.assert_allclose(w, captum * n / (n - 1))
    for doc in (quadrature.__doc__, open(jaxattr.__file__.replace(
            "jaxattr/__init__.py", "README.md"), encoding="utf-8").read()):
        assert "n/(n-1)" in doc.replace(" ", "").replace("−", "-")


# --------------------------------------------------------------------------------------------
# Item 15: gradient SHAP samples its baseline from a set


def test_gradient_shap_samples_baselines_from_a_set():
    """Linear s = Σ w·x: every sample gives (x − b_j)·w exactly, so the estimate is
    (x − b̄)·w with b̄ = f·b1 + (1 − f)·b2, f the share of draws of b1 (a multiple of 1/n)."""
    w = jnp.asarray([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]])
    score = lambda z: (w * z).sum()[None]  # noqa: E731
    x = jnp.asarray([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    b1, b2 = jnp.zeros_like(x), jnp.full_like(x, 2.0)
    n = 40
    attr = jaxattr.gradient_shap(score, x, jnp.stack([b1, b2]), n_samples=n, key=3)[0]
    bbar = x - attr / w           # = f·b1 + (1 − f)·b2 at every element
    f = 1 - float(bbar[0, 0]) / 2.0
    np.testing.assert_allclose(bbar, f * b1 + (1 - f) * b2, atol=1e-5)
    assert 0 < f < 1 and abs(f * n - round(f * n)) < 1e-3  # both drawn, a sample mean
    # a set of one baseline is that baseline (same draws of noise and alpha)
    one = jaxattr.gradient_shap(score, x, b2[None], n_samples=5, stdevs=0.1, key=3)
    np.testing.assert_allclose(one, jaxattr.gradient_shap(score, x, b2, n_samples=5,
                                                          stdevs=0.1, key=3), rtol=1e-6)
    with pytest.raises(ValueError, match="non-finite"):
        jaxattr.gradient_shap(score, x, jnp.stack([b1, b2.at[0, 0].set(jnp.nan)]))


# --------------------------------------------------------------------------------------------
# Item 16: contrastive results carry and show the foil


def test_contrastive_results_carry_and_show_the_foil(gpt2, tmp_path):
    prompt, full, foil = "The cat", "The cat sat on the mat", "The cat sat on the cat"
    out = gpt2.attribute(prompt, full, attributed_fn="contrast_prob_diff",
                         contrast_targets=foil, show_progress=False)
    seq = out[0]
    tok = gpt2.tokenizer
    n_prompt = len(tok.tokenize(prompt))
    expected = tok.tokenize(foil)[n_prompt:]          # aligned by position
    assert seq.foil_tokens == expected
    gen = tok.tokenize(full)[n_prompt:]
    assert seq.generated_labels == [t if f == t else f"{f} → {t}"
                                    for f, t in zip(expected, gen)]
    assert seq.generated_labels[-2:] == ["Ġc → Ġm", "at"]  # same token: no foil shown
    assert "Ġc → Ġm" in out.to_text(color=False)
    assert "Ġc → Ġm" in out.to_html()
    out.save(tmp_path / "c.json")
    assert jaxattr.load(tmp_path / "c.json")[0].foil_tokens == expected
    # without a contrast there is no foil
    assert gpt2.attribute(prompt, full, show_progress=False)[0].foil_tokens is None


def test_suite_has_a_per_test_timeout_and_a_slow_marker(pytestconfig):
    import tomllib
    root = pytestconfig.rootpath
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    assert any(d.startswith("pytest-timeout") for d in
               cfg["project"]["optional-dependencies"]["test"])
    ini = cfg["tool"]["pytest"]["ini_options"]
    assert int(ini["timeout"]) > 0
    assert any(m.startswith("slow:") for m in ini["markers"])
    assert pytestconfig.getini("timeout")  # pytest-timeout is installed and reads it
