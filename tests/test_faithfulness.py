"""Faithfulness metrics: a synthetic additive scorer with known token contributions, ferret's
definitions on a hand-computed case, and the batched evaluation against a loop of single
forwards on tiny real models."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxattr.evaluate import FaithfulnessResult, faithfulness, load_faithfulness

from _scalar_scorer import ScalarTokens, decoder_output
from conftest import FULL, PROMPTS, SOURCES, TARGETS


class AdditiveScorer(ScalarTokens):
    """``m(x) = link(Σ_i x_i)`` over the kept tokens of the prefix; token ``v``'s embedding is
    the scalar ``w[v]`` (zero baseline), so its contribution to the sum is exactly ``w[v]``."""
    sigmoid: bool = struct.field(pytree_node=False, default=False)

    def score(self, chunk, embeds):
        s = (embeds["target"][..., 0] * chunk.target_mask).sum(-1)
        return jax.nn.sigmoid(s) if self.sigmoid else s


@pytest.fixture(scope="module")
def additive():
    rng = np.random.default_rng(0)
    V, n_seq, L, n_prompt = 50, 60, 14, 8
    w = rng.normal(size=V).astype(np.float32)
    w[0] = 0.0  # the fill token
    ids = [rng.integers(1, V, size=L) for _ in range(n_seq)]
    return AdditiveScorer(w=jnp.asarray(w)), w, ids, n_prompt


BINS = (0.1, 0.2, 0.3, 0.5)


def _evaluate(scorer, ids, attrs, n_prompt, **kw):
    out = decoder_output(ids, attrs, n_prompt)
    return faithfulness(scorer, out, metrics=("comprehensiveness", "sufficiency"), bins=BINS,
                        **kw)


def test_oracle_best_reversed_worst(additive):
    scorer, w, ids, n_prompt = additive
    rng = np.random.default_rng(1)
    oracle = _evaluate(scorer, ids, [w[i] for i in ids], n_prompt).mean()
    reverse = _evaluate(scorer, ids, [-w[i] for i in ids], n_prompt).mean()
    random = _evaluate(scorer, ids, [rng.normal(size=len(i)) for i in ids], n_prompt).mean()
    assert oracle["comprehensiveness"] > random["comprehensiveness"] > reverse["comprehensiveness"]
    assert oracle["sufficiency"] < random["sufficiency"] < reverse["sufficiency"]
    # the oracle is optimal bin by bin: no ranking removes more (or keeps more) of the sum
    res = _evaluate(scorer, ids, [w[i] for i in ids], n_prompt)
    for i, seq_ids in enumerate(ids[:5]):
        for t in range(len(seq_ids) - n_prompt):
            contrib = np.sort(w[seq_ids[:n_prompt + t]])[::-1]
            n = len(contrib)
            for j, b in enumerate(BINS):
                k = int(math.floor(b * n + 1e-9))
                if k:
                    np.testing.assert_allclose(res.bin_values["comprehensiveness"][i, t, j],
                                               contrib[:k].sum(), rtol=1e-5, atol=1e-5)


def test_random_matches_permutation_expectation(additive):
    scorer, w, ids, n_prompt = additive
    rng = np.random.default_rng(2)
    res = _evaluate(scorer, ids, [rng.normal(size=len(i)) for i in ids], n_prompt)
    d_comp, d_suff = [], []
    for i, seq_ids in enumerate(ids):
        for t in range(len(seq_ids) - n_prompt):
            c = w[seq_ids[:n_prompt + t]].astype(np.float64)
            n, total = len(c), c.sum()
            ks = sorted({int(math.floor(b * n + 1e-9)) for b in BINS} - {0})
            # k of n tokens removed uniformly at random remove k/n of the sum on average
            e_comp = np.mean([k / n * total for k in ks])
            e_suff = np.mean([(1 - k / n) * total for k in ks])
            d_comp.append(res.values["comprehensiveness"][i, t] - e_comp)
            d_suff.append(res.values["sufficiency"][i, t] - e_suff)
    for d in (np.array(d_comp), np.array(d_suff)):
        se = d.std(ddof=1) / np.sqrt(len(d))
        assert abs(d.mean()) < 3 * se, (d.mean(), se)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_delete_matches_ferret_hand_computed():
    # prompt ids 1, 2, 3 with contributions 1.0, -0.5, 2.0; one generated token (id 4).
    w = np.zeros(8, np.float32)
    w[[1, 2, 3]] = [1.0, -0.5, 2.0]
    scorer = AdditiveScorer(w=jnp.asarray(w), sigmoid=True)
    out = decoder_output([np.array([1, 2, 3, 4])], [np.array([0.2, 0.7, 0.1, 0.0])], 3)
    # ferret (removal_args remove_tokens=True, based_on="k", thresholds 1..n):
    # comprehensiveness = mean_k p(x) - p(x without top-k); sufficiency = mean_k p(x) - p(top-k)
    # ranking: token 2 (0.7), token 1 (0.2), token 3 (0.1); the empty input scores sigmoid(0)
    p = _sig(2.5)
    comp = np.mean([p - _sig(3.0), p - _sig(2.0), p - _sig(0.0)])
    suff = np.mean([p - _sig(-0.5), p - _sig(0.5), p - p])
    res = faithfulness(scorer, out, erase="delete", bins=(1, 2, 3))
    np.testing.assert_allclose(res.values["comprehensiveness"][0, 0], comp, atol=1e-6)
    np.testing.assert_allclose(res.values["sufficiency"][0, 0], suff, atol=1e-6)
    # ferret's "perc" rule: int(b * n) tokens; empty and repeated rationales left out of AOPC
    res = faithfulness(scorer, out, erase="delete", bins=(0.1, 0.3, 0.5, 0.7, 0.8))
    np.testing.assert_allclose(res.values["comprehensiveness"][0, 0],
                               np.mean([p - _sig(3.0), p - _sig(2.0)]), atol=1e-6)
    np.testing.assert_allclose(res.values["sufficiency"][0, 0],
                               np.mean([p - _sig(-0.5), p - _sig(0.5)]), atol=1e-6)


def test_soft_metrics_expectation():
    # soft comprehensiveness keeps token i with probability 1 - q_i: E = Σ q_i w_i
    w = np.zeros(6, np.float32)
    w[1:5] = [1.0, 2.0, -1.0, 0.5]
    scorer = AdditiveScorer(w=jnp.asarray(w))
    attr = np.array([1.0, 0.5, 0.25, 0.0, 0.0])
    out = decoder_output([np.array([1, 2, 3, 4, 5])], [attr], 4)
    res = faithfulness(scorer, out, metrics=("soft_comprehensiveness", "soft_sufficiency"),
                       n_soft_samples=400, seed=3)
    q = attr[:4] / attr.max()
    c = w[1:5]
    sd = np.sqrt((q * (1 - q) * c ** 2).sum() / 400)
    assert abs(res.values["soft_comprehensiveness"][0, 0] - (q * c).sum()) < 4 * sd
    assert abs(res.values["soft_sufficiency"][0, 0] - ((1 - q) * c).sum()) < 4 * sd


# --------------------------------------------------------------------------- real models
def _candidates(view, t, special):
    pos = view.attr_pos_start + t
    col = view.target_attributions[:pos, t]
    rows = [r for r in range(pos) if view.target_ids[r] not in special]
    return rows, col


@pytest.mark.parametrize("erase", ["mask", "delete"])
def test_batched_equals_loop_of_single_forwards(gpt2, erase):
    out = gpt2.attribute(PROMPTS[:2], FULL[:2], show_progress=False)
    bins = (1, 2, 4)
    res = faithfulness(gpt2, out, bins=bins, erase=erase,
                       metrics=("comprehensiveness", "sufficiency", "norm_sufficiency"))
    agg = out.aggregate()
    ad = gpt2.adapter
    special = set(gpt2.tokenizer.all_special_ids)
    unk = gpt2.tokenizer.unk_token_id

    @jax.jit
    def _probs(ids, mask, keep, last):  # one sequence, right-padded to a fixed length
        emb = jnp.where(keep[None, :, None], ad.embed(ids[None]),
                        ad.embed(jnp.full((1, ids.shape[0]), unk)))
        logits = ad.logits(target_ids=ids[None], target_mask=mask[None], target_embeds=emb)
        return jax.nn.softmax(logits[0, last].astype(jnp.float32))

    def prob(ids, keep):
        ids = np.asarray(ids)
        if erase == "delete":
            ids = ids[keep] if keep.any() else np.array([unk])
            keep = np.ones(len(ids), bool)
        pad = 32 - len(ids)
        return _probs(jnp.asarray(np.pad(ids, (0, pad))), jnp.asarray(
            np.pad(np.ones(len(ids), np.int32), (0, pad))), jnp.asarray(np.pad(keep, (0, pad))),
            len(ids) - 1)

    for i, view in enumerate(agg):
        for t in range(view.attr_pos_end - view.attr_pos_start):
            pos = view.attr_pos_start + t
            prefix, y = view.target_ids[:pos], view.target_ids[pos]
            rows, col = _candidates(view, t, special)
            order = [rows[j] for j in np.argsort(-col[rows], kind="stable")]
            full = float(prob(prefix, np.ones(pos, bool))[y])
            for j, k in enumerate(bins):
                k = min(k, len(rows))
                erased = np.ones(pos, bool)
                erased[order[:k]] = False
                kept = ~erased
                kept[[r for r in range(pos) if r not in rows]] = True
                comp = full - float(prob(prefix, erased)[y])
                suff = full - float(prob(prefix, kept)[y])
                np.testing.assert_allclose(res.bin_values["comprehensiveness"][i, t, j], comp,
                                           atol=1e-6)
                np.testing.assert_allclose(res.bin_values["sufficiency"][i, t, j], suff,
                                           atol=1e-6)


def test_encoder_decoder_source_mask_equals_loop(marian):
    out = marian.attribute(SOURCES[:2], TARGETS[:2], show_progress=False)
    res = faithfulness(marian, out, bins=(1, 2))
    agg = out.aggregate()
    ad = marian.adapter
    tok = marian.tokenizer
    special = set(tok.all_special_ids)
    view = agg[0]
    src = np.asarray(view.source_ids)
    t = 1
    pos = view.attr_pos_start + t
    tgt, y = np.asarray(view.target_ids[:pos]), view.target_ids[pos]
    rows = [r for r in range(len(src)) if src[r] not in special]
    col = view.source_attributions[:, t]
    order = [rows[j] for j in np.argsort(-col[rows], kind="stable")]

    @jax.jit
    def prob(keep):
        emb = ad.embed(jnp.asarray(src)[None], side="encoder")
        base = ad.embed(jnp.full((1, len(src)), tok.unk_token_id), side="encoder")
        logits = ad.logits(target_ids=jnp.asarray(tgt)[None],
                           target_mask=jnp.ones((1, pos), jnp.int32),
                           source_ids=jnp.asarray(src)[None],
                           source_mask=jnp.ones((1, len(src)), jnp.int32),
                           source_embeds=jnp.where(jnp.asarray(keep)[None, :, None], emb, base))
        return jax.nn.softmax(logits[0, -1].astype(jnp.float32))[y]

    full = float(prob(np.ones(len(src), bool)))
    for j, k in enumerate((1, 2)):
        keep = np.ones(len(src), bool)
        keep[order[:k]] = False
        np.testing.assert_allclose(res.bin_values["comprehensiveness"][0, t, j],
                                   full - float(prob(keep)), atol=1e-6)


def test_all_metrics_round_trip_and_views(gpt2, tmp_path):
    out = gpt2.attribute(PROMPTS[:2], FULL[:2], show_progress=False)
    metrics = ("comprehensiveness", "sufficiency", "norm_comprehensiveness",
               "norm_sufficiency", "soft_comprehensiveness", "soft_sufficiency", "deletion",
               "insertion", "log_odds")
    res = faithfulness(gpt2, out, metrics=metrics)
    assert set(res.values) == set(metrics)
    per = res.per_sequence()
    assert all(v.shape == (2,) for v in per.values())
    assert np.isfinite(per["comprehensiveness"]).all()
    # deletion curve starts at m(x) and ends at m(∅); insertion the other way round
    d, ins = res.curves["deletion"], res.curves["insertion"]
    m = res.step_mask
    np.testing.assert_allclose(d[m][:, 0], ins[m][:, -1])
    np.testing.assert_allclose(d[m][:, -1], ins[m][:, 0])
    path = tmp_path / "f.npz"
    res.save(path)
    back = load_faithfulness(path)
    for k in res.values:
        np.testing.assert_array_equal(back.values[k], res.values[k])
    np.testing.assert_array_equal(back.curves["deletion"], res.curves["deletion"])
    assert back.info == res.info
    table = res.to_table()
    assert "comprehensiveness ↑" in table and "deletion ↓" in table
    fig = res.to_figure()
    assert len(fig.axes[0].lines) == 2  # mean deletion and insertion curves
    # a pytree: leaves are the arrays
    assert len(jax.tree_util.tree_leaves(res)) == len(jax.tree_util.tree_leaves(back))


def test_bad_arguments(gpt2):
    out = gpt2.attribute(PROMPTS[:1], FULL[:1], show_progress=False)
    with pytest.raises(ValueError, match="metrics"):
        faithfulness(gpt2, out, metrics=("comprehensivness",))
    with pytest.raises(ValueError, match="erase"):
        faithfulness(gpt2, out, erase="drop")
    with pytest.raises(ValueError, match="bins"):
        faithfulness(gpt2, out, bins=(0.5, 2))
    with pytest.raises(ValueError, match="log_odds"):
        faithfulness(gpt2, out, metrics=("log_odds",), attributed_fn="logit")
