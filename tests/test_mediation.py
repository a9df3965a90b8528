"""Causal mediation (Vig et al., 2020): the vmapped grid against a hand-written loop of single-unit
interventions, effects that must equal the total effect by construction, round trip, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr.encoding import InputError
from jaxattr.interventions import causal_mediation, load_result

BASE = ["Kim has a red ball", "The cat"]
INTV = ["Sam has a red ball", "The dog"]
PREFIX = ["the", ""]
STEREO, ANTI = 5, 9          # token ids of the two compared forms


def _mediate(model, **kw):
    return causal_mediation(model, BASE, INTV, PREFIX, stereotypical=STEREO,
                            anti_stereotypical=ANTI, **kw)


def _inputs(model):
    tok = model.tokenizer

    def pad(rows):
        w = max(map(len, rows))
        return (jnp.asarray([r + [0] * (w - len(r)) for r in rows], jnp.int32),
                jnp.asarray([[1] * len(r) + [0] * (w - len(r)) for r in rows], jnp.int32))
    dec = [[model.decoder_start_token_id] + (
        tok(text_target=p, add_special_tokens=False)["input_ids"] if p else []) for p in PREFIX]
    d_ids, d_mask = pad(dec)
    b_ids, s_mask = pad([tok(t)["input_ids"] for t in BASE])
    i_ids, _ = pad([tok(t)["input_ids"] for t in INTV])
    pos = d_mask.sum(1) - 1
    common = dict(target_ids=d_ids, target_mask=d_mask, source_mask=s_mask,
                  positions=pos[:, None])
    return dict(common, source_ids=b_ids), dict(common, source_ids=i_ids)


def _log_y(out):
    lg = out["logits"][:, 0]
    return np.asarray(lg[:, ANTI] - lg[:, STEREO], np.float64)


def _loop(model, site, units):
    """One Python-level forward per unit: set that unit (all positions) to the other run's."""
    fwd = model.adapter.forward
    base, intv = _inputs(model)
    b = fwd(**base, capture=(site,))
    i = fwd(**intv, capture=(site,))
    y_b = _log_y(b)
    nie, nde = [], []
    for u in units:
        def swap(src):
            return lambda o: o.at[:, :, u].set(src[:, :, u])
        nie.append(np.expm1(_log_y(fwd(**base, patch={site: swap(i["captured"][site])})) - y_b))
        nde.append(np.expm1(_log_y(fwd(**intv, patch={site: swap(b["captured"][site])})) - y_b))
    return np.stack(nie, 1), np.stack(nde, 1), np.expm1(_log_y(i) - y_b)


@pytest.mark.parametrize("mediator,site,units", [
    ("heads", "encoder.blocks.1.head_out", [0, 1, 2, 3]),
    ("mlp", "decoder.blocks.0.mlp_out", [0, 3, 7, -1])])
def test_vmapped_equals_loop_of_single_units(marian, mediator, site, units):
    res = _mediate(marian, mediator=mediator, layers=[site.rsplit(".", 1)[0]], chunk=5)
    assert res.layers == (site,)
    nie, nde, te = _loop(marian, site, units)
    assert np.abs(te).min() > 1e-3                       # the intervention does something
    np.testing.assert_allclose(res.total_effect, te, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.indirect_effect[:, 0, units], nie, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.direct_effect[:, 0, units], nde, rtol=1e-4, atol=1e-5)


def test_whole_last_layer_mediates_everything_and_decoder_input_nothing(marian):
    # every path to the logits runs through the decoder's last residual stream
    last = _mediate(marian, mediator="resid_post", layers=["decoder.blocks.1"], units="layer")
    assert last.indirect_effect.shape == (2, 1, 1)
    np.testing.assert_allclose(last.indirect_effect[:, 0, 0], last.total_effect, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(last.direct_effect[:, 0, 0], 0.0, atol=1e-5)
    np.testing.assert_allclose(last.log_share("indirect"), 1.0, rtol=1e-4)
    # the decoder's input embeddings do not depend on the source: nothing flows through them,
    # so holding them changes nothing (NDE = TE, NIE = 0)
    first = _mediate(marian, mediator="resid_pre", layers=["decoder.blocks.0"], units="layer")
    np.testing.assert_allclose(first.direct_effect[:, 0, 0], first.total_effect, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(first.indirect_effect[:, 0, 0], 0.0, atol=1e-6)


def test_all_layers_views_and_round_trip(marian, tmp_path):
    res = _mediate(marian, mediator="heads")
    assert len(res.layers) == 4 and res.indirect_effect.shape[1:] == (4, 4)
    y = res.response.astype(np.float64)
    np.testing.assert_allclose(res.total_effect, y[:, 1] / y[:, 0] - 1, rtol=1e-4)
    top = res.top(3)
    assert top[0][2] == pytest.approx(float(res.mean_indirect().max()))
    assert 0 < res.sparsity() <= 1 and "head_out" in res.to_text()
    back = load_result(res.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(back.indirect_effect, res.indirect_effect)
    np.testing.assert_array_equal(back.response, res.response)
    assert back.layers == res.layers and back.mediator == "heads"


def test_errors(marian):
    kw = dict(stereotypical=STEREO, anti_stereotypical=ANTI)
    with pytest.raises(InputError, match="same length|tokens"):
        causal_mediation(marian, ["The cat"], ["Kim has a red ball"], "", **kw)
    with pytest.raises(InputError, match="mediator"):
        causal_mediation(marian, BASE, INTV, PREFIX, mediator="neurons", **kw)
    with pytest.raises(InputError, match="ambiguous"):
        causal_mediation(marian, BASE, INTV, PREFIX, layers=[1], **kw)
    with pytest.raises(InputError, match="no site"):
        causal_mediation(marian, BASE, INTV, PREFIX, layers=["decoder.blocks.7"], **kw)
    with pytest.raises(InputError, match="targets"):
        causal_mediation(marian, BASE, INTV, None, **kw)
    with pytest.raises(InputError, match="same token"):
        causal_mediation(marian, BASE, INTV, PREFIX, stereotypical=3, anti_stereotypical=3)
    with pytest.raises(InputError, match="intervened"):
        causal_mediation(marian, BASE, INTV[:1], PREFIX, **kw)
    with pytest.raises(InputError, match="units"):
        causal_mediation(marian, BASE, INTV, PREFIX, units="all", **kw)
