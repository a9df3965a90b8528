"""``model.prepare``: a frozen, hashable spec of a run plus the batches, reproducing
``model.attribute``; the explicit options (``layer``, ``split_head``, ``prefix_groups``,
``aggregator``, ``quadrature``) are validated with clear errors."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import jaxattr
from jaxattr import RunSpec
from jaxattr.internals.sites import SiteError

from conftest import FULL, PROMPTS, SOURCES, TARGETS


def test_spec_is_frozen_hashable_and_equal_for_equal_inputs(gpt2):
    kw = dict(method="integrated_gradients", n_steps=4, step_scores=["probability"],
              quadrature="riemann_middle")
    a = gpt2.prepare(PROMPTS, FULL, **kw)
    b = gpt2.prepare(list(PROMPTS), list(FULL), **kw)
    assert isinstance(a.spec, RunSpec)
    assert a.spec == b.spec and hash(a.spec) == hash(b.spec)
    assert len({a.spec, b.spec}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.spec.split_head = False
    # the options are in the spec, routed to the method
    assert dict(a.spec.method_kwargs) == {"n_steps": 4, "quadrature": "riemann_middle"}
    assert a.spec.baseline_ids == "unk" and a.spec.step_fns[0][0] == "probability"
    # a different option is a different spec
    c = gpt2.prepare(PROMPTS, FULL, **dict(kw, n_steps=5))
    assert c.spec != a.spec and hash(c.spec) != hash(a.spec)
    assert gpt2.prepare(PROMPTS, FULL, **kw, split_head=False).spec != a.spec


@pytest.mark.parametrize("method,extra", [("saliency", {}),
                                          ("integrated_gradients", {"n_steps": 3})])
def test_prepared_batches_reproduce_attribute(gpt2, method, extra):
    kw = dict(method=method, batch_size=2, **extra)
    out = gpt2.attribute(PROMPTS, FULL, show_progress=False, **kw)
    prep = gpt2.prepare(PROMPTS, FULL, **kw)
    assert prep.n_batches == 2 and sorted(i for c in prep.chunks for i in c) == [0, 1, 2]
    for b, batch in enumerate(prep.batches()):
        res = jaxattr.attribute_batch(gpt2.adapter, batch, prep.baseline,
                                      **prep.spec.pipeline_kwargs())
        ref = out.batches[b]
        np.testing.assert_array_equal(np.asarray(res.target_attributions),
                                      np.asarray(ref.target_attributions))
        for name in ref.step_scores:
            np.testing.assert_array_equal(np.asarray(res.step_scores[name]),
                                          np.asarray(ref.step_scores[name]))
    # run(prepare(...)) is attribute(...)
    again = gpt2.run(prep, show_progress=False)
    for x, y in zip(again, out):
        np.testing.assert_array_equal(x.target_attributions, y.target_attributions)
    assert again.info == out.info


def test_prepare_of_an_encoder_decoder_gives_source_batches(marian):
    prep = marian.prepare(SOURCES[:2], TARGETS[:2], method="input_x_gradient")
    batch = prep.batch(0)
    assert prep.spec.attribute_source and not prep.spec.attribute_target
    assert batch.source_ids.shape[0] == 2 and batch.baseline_source_ids is None
    res = jaxattr.attribute_batch(marian.adapter, batch, prep.baseline,
                                  **prep.spec.pipeline_kwargs())
    ref = marian.attribute(SOURCES[:2], TARGETS[:2], method="input_x_gradient",
                           show_progress=False).batches[0]
    np.testing.assert_array_equal(np.asarray(res.source_attributions),
                                  np.asarray(ref.source_attributions))


# --------------------------------------------------------------------------- explicit options

def test_layer_is_validated(gpt2):
    with pytest.raises(SiteError, match=r"no site matches .blocks\.9\.mlp_out.*mlp_out"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], method="layer_saliency", layer="blocks.9.mlp_out")
    with pytest.raises(TypeError, match="layer must be a site name"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], method="layer_saliency", layer=3)
    with pytest.raises(ValueError, match="`layer` does not apply to method='attention'"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], method="attention", layer="blocks.0.mlp_out")
    spec = gpt2.prepare(PROMPTS[:1], FULL[:1], method="layer_saliency",
                        layer="blocks.*.mlp_out").spec
    assert spec.layer == ("blocks.0.mlp_out", "blocks.1.mlp_out")


def test_split_head_and_granular_must_be_booleans(gpt2):
    with pytest.raises(TypeError, match="split_head must be True or False; got 'no'"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], split_head="no")
    with pytest.raises(TypeError, match="granular must be True or False"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], granular=None)


@pytest.mark.parametrize("bad", [0, -2, "fast", 1.5, True])
def test_prefix_groups_is_validated(gpt2, bad):
    with pytest.raises(ValueError, match=r"prefix_groups must be 'auto', 'exact' .* or an int >= 1"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], prefix_groups=bad)


def test_aggregator_is_validated(gpt2):
    with pytest.raises(ValueError, match="Unknown aggregator 'l3'.*absmax"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], granular=False, aggregator="l3")
    with pytest.raises(ValueError, match="aggregator='sum' is the in-program.*granular=False"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], aggregator="sum")
    assert gpt2.prepare(PROMPTS[:1], FULL[:1], granular=False).spec.reduce_hidden == "vnorm"
    assert gpt2.prepare(PROMPTS[:1], FULL[:1], granular=False,
                        method="attention").spec.reduce_hidden == "mean"


def test_quadrature_is_validated(gpt2):
    with pytest.raises(ValueError, match="Unknown quadrature 'simpson'.*gausslegendre"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], method="integrated_gradients",
                     quadrature="simpson")
    with pytest.raises(ValueError, match="quadrature='riemann_left' applies to path methods"):
        gpt2.prepare(PROMPTS[:1], FULL[:1], method="saliency", quadrature="riemann_left")
    spec = gpt2.prepare(PROMPTS[:1], FULL[:1], method="layer_integrated_gradients",
                        layer="blocks.0.mlp_out", quadrature="riemann_left").spec
    assert dict(spec.method_kwargs)["quadrature"] == "riemann_left"


def test_explicit_options_are_in_the_signature(gpt2):
    import inspect
    for fn in (gpt2.attribute, gpt2.prepare):
        params = inspect.signature(fn).parameters
        for name in ("layer", "split_head", "prefix_groups", "aggregator", "quadrature"):
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (fn, name)
    for name in ("layer", "split_head", "prefix_groups", "aggregator", "quadrature"):
        assert f"\n          {name}: " in gpt2.attribute.__doc__, name


def test_deprecated_ig_method_keyword_warns_and_agrees():
    def f(x):
        return jax.numpy.stack([jax.numpy.sum(jax.numpy.sin(x)), jax.numpy.sum(x ** 3)])
    x = jax.numpy.linspace(-1.0, 1.0, 6)
    new = jaxattr.integrated_gradients(f, x, n_steps=7, quadrature="riemann_left")
    with pytest.warns(DeprecationWarning, match="quadrature='riemann_left'"):
        old = jaxattr.integrated_gradients(f, x, n_steps=7, method="riemann_left")
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    # the rule itself, by hand: left Riemann nodes 0, 1/7, ..., 6/7 on f = sum(x^3)
    alphas = np.arange(7) / 7
    expected = np.asarray(x) * np.mean([3 * (a * np.asarray(x)) ** 2 for a in alphas], 0)
    np.testing.assert_allclose(np.asarray(new)[1], expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="give only quadrature="):
        with pytest.warns(DeprecationWarning):
            jaxattr.integrated_gradients(f, x, quadrature="riemann_right", method="riemann_left")
