"""Gradient SHAP through ``model.attribute`` with a set of baselines (issue 12, item 15).

The truth is the single-baseline run: with ``n_samples=1`` and no noise every example's
result is exactly the single-baseline result of the member it drew (same key: same ``α``),
and over several examples and keys every member gets drawn.
"""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr.encoding import InputError

from conftest import FULL, PROMPTS

KW = dict(method="gradient_shap", show_progress=False)


def _rows(out):
    return [np.nan_to_num(v.target_attributions) for v in out]


def _equal(a, b):
    return np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-12)


def test_each_sample_draws_one_member_of_the_set(gpt2):
    hits = set()
    for key in range(3):
        got = _rows(gpt2.attribute(PROMPTS, FULL, baseline=["unk", "zeros"], key=key,
                                   n_samples=1, stdevs=0.0, **KW))
        unk = _rows(gpt2.attribute(PROMPTS, FULL, baseline="unk", key=key, n_samples=1,
                                   stdevs=0.0, **KW))
        zeros = _rows(gpt2.attribute(PROMPTS, FULL, baseline="zeros", key=key, n_samples=1,
                                     stdevs=0.0, **KW))
        for g, u, z in zip(got, unk, zeros):
            assert not _equal(u, z)  # the two members give different attributions
            which = [name for name, ref in (("unk", u), ("zeros", z)) if _equal(g, ref)]
            assert len(which) == 1, "a sample is the single-baseline result of one member"
            hits.add(which[0])
    assert hits == {"unk", "zeros"}  # 9 draws (3 keys x 3 examples): both members drawn


def test_a_set_of_one_vector_repeated_is_that_vector(gpt2):
    """With noise and several samples: ``[3, H]`` copies of ``v`` == the single baseline ``v``."""
    v = np.linspace(-0.5, 0.5, gpt2.config.n_embd, dtype=np.float32)
    kw = dict(n_samples=3, stdevs=0.3, **KW)
    one = gpt2.attribute(PROMPTS[:2], FULL[:2], baseline=v, **kw)
    many = gpt2.attribute(PROMPTS[:2], FULL[:2], baseline=np.stack([v, v, v]), **kw)
    for a, b in zip(_rows(one), _rows(many)):
        assert np.abs(a).max() > 0
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())
    assert many.info["baseline"] == "set of 3: array(3, 32)"


def test_per_position_set_lines_up_with_the_tokens(gpt2):
    """``[1, L, H]``: the UNK embedding at each of the input's L positions, built by hand from
    the embedding table, equals ``baseline="unk"``; shifted by one position it does not."""
    seq = gpt2.encode([PROMPTS[1]], [FULL[1]])[0]
    L = len(seq.target_ids)
    table = np.asarray(gpt2.adapter.embedding_matrix("decoder"))
    unk_rows = table[np.full(L, gpt2.tokenizer.unk_token_id)]
    assert not set(seq.target_ids) & set(gpt2.tokenizer.all_special_ids)  # no kept specials
    kw = dict(n_samples=2, stdevs=0.2, key=4, **KW)
    want = _rows(gpt2.attribute(PROMPTS[1], FULL[1], baseline="unk", **kw))[0]
    got = _rows(gpt2.attribute(PROMPTS[1], FULL[1], baseline=unk_rows[None], **kw))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    shifted = np.concatenate([np.zeros_like(unk_rows[:1]), unk_rows[:-1]])
    other = _rows(gpt2.attribute(PROMPTS[1], FULL[1], baseline=[shifted], **kw))[0]
    assert not _equal(other, want)


def test_bad_sets_are_clear_errors(gpt2):
    H = gpt2.config.n_embd
    cases = [
        (dict(method="integrated_gradients", baseline=["unk", "zeros"]), "only gradient_shap"),
        (dict(baseline=np.zeros((2, H + 1))), f"hidden={H}"),
        (dict(baseline=[]), "empty"),
        (dict(baseline=np.zeros((0, H))), "empty"),
        (dict(baseline=["unk", np.full(H, np.nan)]), "non-finite"),
        (dict(baseline=["unk", "pad"]), "one token kind"),
        (dict(baseline=["unk", "mean"]), "names are"),
        (dict(baseline=np.zeros((2, 3, H))), "L=3 positions but input 0"),
        (dict(baseline=np.zeros((2, 1, 1, H))), "rank 2 or 3"),
        (dict(baseline=["zeros"], layer="blocks.0.mlp_out"), "layer="),
    ]
    for extra, match in cases:
        kw = dict(KW, **extra)
        with pytest.raises(InputError, match=match):
            gpt2.attribute(PROMPTS[1], FULL[1], **kw)


def test_sets_are_validated_before_tracing_for_encoder_decoder(marian):
    with pytest.raises(InputError, match="attribute_target=True"):
        marian.attribute("Kim has a red ball", "Sam has a blue cup", method="gradient_shap",
                         attribute_target=True, show_progress=False,
                         baseline=jnp.zeros((2, 6, marian.config.d_model)))


def test_prefix_groups_with_a_shared_set_give_the_one_pass_numbers(gpt2):
    """A shared set has no position axis, so generated tokens may be attributed in prefix
    groups (each on its own shorter prefix): the same numbers as one pass."""
    v = np.linspace(-0.3, 0.3, gpt2.config.n_embd, dtype=np.float32)
    kw = dict(baseline=["unk", v], n_samples=2, stdevs=0.2, **KW)
    one = gpt2.attribute(PROMPTS[0], FULL[0], prefix_groups=1, **kw)
    grouped = gpt2.attribute(PROMPTS[0], FULL[0], prefix_groups=2, **kw)
    a, b = _rows(one)[0], _rows(grouped)[0]
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())
