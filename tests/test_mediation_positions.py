"""Causal mediation at one position per example, through the head's input, and with several
interventions — against truths that do not come from the mediation code: the logits are linear
in the head's input (so each unit's effect is a hand-computed product, the units' log effects
add up to the total, and NIE and NDE multiply to it), a position after which nothing is
scored mediates nothing, a loop of single-unit single-position swaps, and a null intervention."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr.encoding import InputError
from jaxattr.interventions import causal_mediation, mediate_interventions

BASE = ["Kim has a red ball", "The cat sat on"]
INTV = ["Sam has a red ball", "The mat sat on"]
STEREO, ANTI = 5, 9


def _runs(model, texts):
    tok = model.tokenizer
    rows = [tok(t)["input_ids"] for t in texts]
    w = max(map(len, rows))
    ids = jnp.asarray([r + [0] * (w - len(r)) for r in rows], jnp.int32)
    mask = jnp.asarray([[1] * len(r) + [0] * (w - len(r)) for r in rows], jnp.int32)
    return dict(target_ids=ids, target_mask=mask), np.asarray(mask.sum(1) - 1)


def _log_y(logits):
    lg = np.asarray(logits, np.float64)
    return lg[:, ANTI] - lg[:, STEREO]


def _med(model, base=BASE, intv=INTV, **kw):
    return causal_mediation(model, base, intv, None, stereotypical=STEREO,
                            anti_stereotypical=ANTI, **kw)


def test_head_input_units_have_their_hand_computed_effects(gpt2):
    fwd = gpt2.adapter.forward
    (b_run, last), (i_run, _) = _runs(gpt2, BASE), _runs(gpt2, INTV)
    h_b = np.asarray(fwd(**b_run, capture=("final_norm",))["captured"]["final_norm"], np.float64)
    h_i = np.asarray(fwd(**i_run, capture=("final_norm",))["captured"]["final_norm"], np.float64)
    w = np.asarray(gpt2.adapter.embedding_matrix(), np.float64)      # GPT-2's tied head
    r = np.arange(len(BASE))
    # logit(anti) - logit(stereo) = (W[anti] - W[stereo]) . h at the scored position
    dh = h_i[r, last] - h_b[r, last]                                  # [N, H]
    expected = (w[ANTI] - w[STEREO])[None] * dh                       # log(1 + NIE) per unit
    res = _med(gpt2, mediator="final_norm", positions=[int(p) for p in last])
    assert res.layers == ("final_norm",)
    log_nie = np.log1p(res.indirect_effect[:, 0].astype(np.float64))
    assert np.abs(expected).max() > 1e-4                              # units do something
    np.testing.assert_allclose(log_nie, expected, rtol=1e-3, atol=1e-6)
    log_te = np.log1p(res.total_effect.astype(np.float64))
    assert np.abs(log_te).min() > 1e-3
    # linear response: the units' log effects add up to the total, and for every unit the
    # direct and indirect effects multiply to it
    np.testing.assert_allclose(log_nie.sum(1), log_te, rtol=1e-3, atol=1e-6)
    log_nde = np.log1p(res.direct_effect[:, 0].astype(np.float64))
    np.testing.assert_allclose(log_nie + log_nde, np.broadcast_to(log_te[:, None], log_nie.shape),
                               rtol=1e-3, atol=1e-6)
    # the whole head input at the scored position carries everything (units="layer")
    whole = _med(gpt2, mediator="final_norm", positions=[int(p) for p in last], units="layer")
    np.testing.assert_allclose(whole.indirect_effect[:, 0, 0], whole.total_effect, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(whole.direct_effect[:, 0, 0], 0.0, atol=1e-5)
    # the head's input at position 0 reaches only position 0's logits: it mediates nothing
    first = _med(gpt2, mediator="final_norm", positions=0, units="layer")
    np.testing.assert_allclose(first.indirect_effect, 0.0, atol=1e-6)
    np.testing.assert_allclose(first.direct_effect[:, 0, 0], first.total_effect, rtol=1e-5,
                               atol=1e-6)


def test_one_position_per_example_equals_loop(gpt2):
    site, units = "blocks.1.mlp_out", [0, 5, -1]
    res = _med(gpt2, mediator="mlp", layers=[1], positions="intervened", chunk=7)
    (b_run, last), (i_run, _) = _runs(gpt2, BASE), _runs(gpt2, INTV)
    pos = np.argmax(np.asarray(b_run["target_ids"]) != np.asarray(i_run["target_ids"]), 1)
    assert res.info["positions"] == [int(p) for p in pos]
    fwd = gpt2.adapter.forward
    p = jnp.asarray(last)[:, None]
    b = fwd(**b_run, capture=(site,), positions=p)
    i = fwd(**i_run, capture=(site,), positions=p)
    y_b = _log_y(b["logits"][:, 0])
    r = jnp.arange(len(BASE))
    for k, u in enumerate(units):
        def swap(src):
            return lambda o: o.at[r, pos, u].set(src[r, pos, u])
        nie = np.expm1(_log_y(fwd(**b_run, positions=p, patch={site: swap(i["captured"][site])})
                              ["logits"][:, 0]) - y_b)
        nde = np.expm1(_log_y(fwd(**i_run, positions=p, patch={site: swap(b["captured"][site])})
                              ["logits"][:, 0]) - y_b)
        np.testing.assert_allclose(res.indirect_effect[:, 0, u], nie, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.direct_effect[:, 0, u], nde, rtol=1e-4, atol=1e-5)
    # one position is a part of all positions: a different (smaller or equal) swap
    every = _med(gpt2, mediator="mlp", layers=[1])
    assert not np.allclose(every.indirect_effect, res.indirect_effect)


def test_two_interventions_against_one_base_and_a_null_one(gpt2):
    out = mediate_interventions(gpt2, BASE, {"swap": INTV, "null": BASE}, None,
                                stereotypical=STEREO, anti_stereotypical=ANTI, mediator="heads")
    assert list(out) == ["swap", "null"]
    swap, null = out["swap"], out["null"]
    np.testing.assert_array_equal(swap.response[:, 0], null.response[:, 0])
    # the null intervention changes nothing, so no effect anywhere
    np.testing.assert_allclose(null.total_effect, 0.0, atol=1e-6)
    np.testing.assert_allclose(null.indirect_effect, 0.0, atol=1e-6)
    np.testing.assert_allclose(null.direct_effect, 0.0, atol=1e-6)
    one = _med(gpt2, mediator="heads")
    np.testing.assert_allclose(swap.indirect_effect, one.indirect_effect, rtol=1e-6, atol=1e-7)
    assert swap.info["intervention"] == "swap"


def test_encoder_positions_and_errors(gpt2, marian):
    kw = dict(stereotypical=STEREO, anti_stereotypical=ANTI)
    src, dst = ["Kim has a red ball", "The cat"], ["Sam has a red ball", "The dog"]
    res = causal_mediation(marian, src, dst, ["the", ""], mediator="mlp",
                           layers=["encoder.blocks.0"], positions="intervened", **kw)
    assert res.indirect_effect.shape[:2] == (2, 1)
    with pytest.raises(InputError, match="encoder sites"):
        causal_mediation(marian, src, dst, ["the", ""], mediator="mlp", positions="intervened",
                         **kw)
    with pytest.raises(InputError, match="outside example 1"):
        _med(gpt2, mediator="mlp", layers=[0], positions=[0, 40])
    with pytest.raises(InputError, match="one int per example"):
        _med(gpt2, mediator="mlp", layers=[0], positions=[0])
    with pytest.raises(InputError, match="no intervened position"):
        _med(gpt2, intv=BASE, mediator="mlp", layers=[0], positions="intervened")
    with pytest.raises(InputError, match="layers=None"):
        _med(gpt2, mediator="final_norm", layers=[0])
    with pytest.raises(InputError, match="non-empty dict"):
        mediate_interventions(gpt2, BASE, {}, None, **kw)
