"""The transformers-4.x-on-current-JAX fixes in jaxattr._compat."""
import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import _compat


def test_legacy_clip_keywords_work_and_match_jnp():
    jnp_fixed = _compat.jnp_with_legacy_clip()
    x = jnp.arange(-5, 6)
    np.testing.assert_array_equal(jnp_fixed.clip(x, a_min=-2, a_max=3), np.clip(x, -2, 3))
    np.testing.assert_array_equal(jnp_fixed.clip(x, a_max=3), np.minimum(x, 3))
    np.testing.assert_array_equal(jnp_fixed.clip(x, min=0), np.maximum(x, 0))
    assert jnp_fixed.arange is jnp.arange


def test_t5_runs_after_apply():
    _compat.apply()
    import transformers.models.t5.modeling_flax_t5 as t5mod
    if "a_max" not in inspect.signature(jnp.clip).parameters:
        assert getattr(t5mod.jnp, "_jaxattr_compat", False)
    from jaxattr.testing import make_model
    model, _ = make_model("t5")
    ids = jnp.ones((1, 70), jnp.int32)  # long enough for the "large" relative buckets
    out = model(ids, decoder_input_ids=jnp.ones((1, 3), jnp.int32)).logits
    assert out.shape == (1, 3, model.config.vocab_size)
    assert np.isfinite(np.asarray(out)).all()


def test_relative_position_buckets_match_numpy_reference():
    _compat.apply()
    from transformers.models.t5.modeling_flax_t5 import FlaxT5Attention
    rel = np.arange(-200, 200)
    got = np.asarray(FlaxT5Attention._relative_position_bucket(
        jnp.asarray(rel), bidirectional=True, num_buckets=32, max_distance=128))
    # independent reference of T5's bucketing (Raffel et al.)
    nb, exact = 16, 8
    ref = (rel > 0).astype(int) * nb
    n = np.abs(rel)
    large = exact + (np.log(np.maximum(n, 1) / exact) / np.log(128 / exact)
                     * (nb - exact)).astype(int)
    large = np.minimum(large, nb - 1)
    ref = ref + np.where(n < exact, n, large)
    np.testing.assert_array_equal(got, ref)


def test_attach_params_to_a_model_built_without_init():
    from transformers import FlaxGPT2LMHeadModel

    from jaxattr._compat import attach_params
    from jaxattr.testing import make_model

    ref, _ = make_model("gpt2", seed=3)
    bare = FlaxGPT2LMHeadModel(ref.config, _do_init=False)
    attach_params(bare, ref.params)
    ids = jnp.asarray([[5, 6, 7, 8]])
    np.testing.assert_array_equal(np.asarray(bare(ids).logits), np.asarray(ref(ids).logits))
    with pytest.raises(ValueError, match="missing"):   # the setter's own check still applies
        attach_params(FlaxGPT2LMHeadModel(ref.config, _do_init=False),
                      {"transformer": {}})
