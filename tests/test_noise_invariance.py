"""Noisy methods are batch-invariant: an example's noise is keyed on the example itself.

The same sequence attributed alone, inside a batch at another row, with another batch size or
padded to another length gives the same numbers (the README's padding-invariance claim), for
every method that draws random numbers, through the model and through the functional API.
"""
import inspect
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import (gradient_shap, input_x_gradient, integrated_gradients, saliency,
                     smoothgrad, smoothgrad_sq, vargrad)
from jaxattr.adapters.dropout import keyed_mask
from jaxattr.methods import METHODS
from jaxattr.methods._common import draw_noise, example_identity
from jaxattr.methods.needs import needs_of

from conftest import FULL, PROMPTS, SOURCES, TARGETS

NOISY = {  # smoothgrad_sq / vargrad share smoothgrad's draws (checked functionally below)
    "smoothgrad_sq_ixg": (smoothgrad_sq(input_x_gradient, n_samples=2, stdevs=0.5), {}),
    "gradient_shap": ("gradient_shap", {"n_samples": 2, "stdevs": 0.5}),
}


def _attrs(view):
    parts = [view.target_attributions]
    if view.source_attributions is not None:
        parts.append(view.source_attributions)
    return [np.nan_to_num(p, nan=0.0) for p in parts]


def _assert_same(a, b):
    for x, y in zip(_attrs(a), _attrs(b)):
        scale = np.abs(x).max()
        assert scale > 0
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name", sorted(NOISY))
def test_noisy_methods_are_batch_invariant_decoder_only(gpt2, name):
    method, kw = NOISY[name]
    alone = gpt2.attribute(PROMPTS[1], FULL[1], method=method, show_progress=False, **kw)[0]
    # Row 2 of a batch of 3 (padded to the longest), then batch_size=2 (another bucket/row).
    batched = gpt2.attribute([PROMPTS[0], PROMPTS[2], PROMPTS[1]], [FULL[0], FULL[2], FULL[1]],
                             method=method, show_progress=False, **kw)[2]
    _assert_same(alone, batched)


def test_noise_differs_between_examples_and_keys(gpt2):
    """The per-example key is not one shared draw: two examples, or two seeds, differ."""
    method = smoothgrad(saliency, n_samples=2, stdevs=0.5)
    clean = gpt2.attribute(PROMPTS[1], FULL[1], show_progress=False)[0].target_attributions
    a = gpt2.attribute(PROMPTS[1], FULL[1], method=method, show_progress=False)[0]
    b = gpt2.attribute(PROMPTS[1], FULL[1], method=method, key=1, show_progress=False)[0]
    # batch_size=2: another row, another padded length
    chunked = gpt2.attribute([PROMPTS[0], PROMPTS[1], PROMPTS[2]], [FULL[0], FULL[1], FULL[2]],
                             method=method, batch_size=2, show_progress=False)[1]
    _assert_same(a, chunked)
    assert not np.allclose(np.nan_to_num(a.target_attributions), np.nan_to_num(clean))
    assert not np.allclose(np.nan_to_num(a.target_attributions),
                           np.nan_to_num(b.target_attributions))
    ids = jnp.asarray([[5, 6, 7, 0], [5, 6, 8, 0], [0, 5, 6, 7]])
    mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 1]])
    h = np.asarray(example_identity(ids, mask))
    assert h[0] != h[1] and h[0] == h[2]  # content and order count, padding does not


@pytest.mark.slow
def test_smoothgrad_is_batch_invariant_encoder_decoder(marian):
    method = smoothgrad(saliency, n_samples=2, stdevs=0.5)
    alone = marian.attribute(SOURCES[1], TARGETS[1], method=method, attribute_target=True,
                             show_progress=False)[0]
    batched = marian.attribute(SOURCES, TARGETS, method=method, attribute_target=True,
                               show_progress=False)[1]
    _assert_same(alone, batched)


def _score(x):  # x [B, L, H] -> scores [B, T=2]: a nonlinear function of each example
    return jnp.stack([jnp.tanh(x).sum((1, 2)), (x[:, :2] ** 2).sum((1, 2))], -1)


@pytest.mark.parametrize("method", [smoothgrad(saliency, n_samples=3, stdevs=0.4),
                                    vargrad(integrated_gradients, n_samples=2, stdevs=0.4),
                                    smoothgrad_sq(input_x_gradient, n_samples=2, stdevs=0.4),
                                    gradient_shap])
def test_functional_per_example_keys_equal_one_example_at_a_time(method):
    """With a batch of keys ``[B]``, example b's result is the one it gets alone with key b;
    and under ``vmap`` (one key) every example's result equals the call on it alone."""
    x = jax.random.normal(jax.random.key(3), (3, 4, 5))
    keys = jax.random.split(jax.random.key(9), 3)
    extra = ({"stdevs": 0.4} if method is gradient_shap
             else {"n_steps": 4} if "n_steps" in needs_of(method).options else {})
    batched = method(_score, x, key=keys, **extra)  # [T, B, L, H]
    for b in range(3):
        alone = method(_score, x[b:b + 1], key=keys[b:b + 1], **extra)
        np.testing.assert_allclose(batched[:, b], alone[:, 0], rtol=1e-4, atol=1e-5)
        # padding the example's sequence axis does not change its noise on its own positions
        padded = jnp.pad(x[b:b + 1], ((0, 0), (0, 3), (0, 0)))
        sc = lambda z: _score(z[:, :4])  # noqa: E731
        np.testing.assert_allclose(method(sc, padded, key=keys[b:b + 1], **extra)[:, 0, :4],
                                   alone[:, 0], rtol=1e-4, atol=1e-5)
    one = lambda z: method(lambda v: _score(v[None])[0], z, key=5, **extra)  # noqa: E731
    np.testing.assert_allclose(jax.vmap(one)(x), jnp.stack([one(z) for z in x]),
                               rtol=1e-4, atol=1e-5)


def test_per_example_keys_must_match_the_batch():
    with pytest.raises(ValueError, match="per-example keys"):
        draw_noise(jnp.zeros((3, 4)), jax.random.split(jax.random.key(0), 2), 0.1)


MCD = dict(attributed_fn="mc_dropout_prob_avg", step_scores=("mc_dropout_prob_avg", "probability"),
           n_mcd_steps=3, show_progress=False)


def test_mc_dropout_is_batch_invariant(gpt2):
    """MC-dropout masks come from each example's own key and positions: the same sequence
    alone, at row 2 of a batch padded to another length, and with batch_size=2 (another row
    and bucket) gets the same dropout forwards, so the same step scores and attributions."""
    assert gpt2.config.attn_pdrop > 0 and gpt2.config.resid_pdrop > 0
    alone = gpt2.attribute(PROMPTS[1], FULL[1], **MCD)[0]
    batched = gpt2.attribute([PROMPTS[0], PROMPTS[2], PROMPTS[1]], [FULL[0], FULL[2], FULL[1]],
                             **MCD)[2]
    chunked = gpt2.attribute([PROMPTS[1], PROMPTS[0], PROMPTS[2]], [FULL[1], FULL[0], FULL[2]],
                             batch_size=2, **MCD)[0]
    z = alone.step_scores["mc_dropout_prob_avg"]
    # dropout is on: the z-score is finite (std over the dropout forwards > 0) and not 0
    assert np.isfinite(z).all() and np.abs(z).max() > 1e-3
    for other in (batched, chunked):
        np.testing.assert_allclose(other.step_scores["mc_dropout_prob_avg"], z,
                                   rtol=1e-4, atol=1e-5)
        _assert_same(alone, other)


@pytest.mark.slow
def test_mc_dropout_is_batch_invariant_encoder_decoder(marian):
    alone = marian.attribute(SOURCES[1], TARGETS[1], attribute_target=True, **MCD)[0]
    batched = marian.attribute(SOURCES, TARGETS, attribute_target=True, **MCD)[1]
    z = alone.step_scores["mc_dropout_prob_avg"]
    assert np.isfinite(z).all() and np.abs(z).max() > 1e-3
    np.testing.assert_allclose(batched.step_scores["mc_dropout_prob_avg"], z, rtol=1e-4,
                               atol=1e-5)
    _assert_same(alone, batched)


def test_keyed_dropout_masks_ignore_row_batch_and_padding():
    keys = jax.random.split(jax.random.key(4), 3)
    m = np.asarray(keyed_mask(keys, (3, 4, 9, 9), 0.9, site=7))  # [B, heads, Lq, Lk]
    alone = np.asarray(keyed_mask(keys[1:2], (1, 4, 5, 5), 0.9, site=7))  # shorter, own row
    np.testing.assert_array_equal(alone[0], m[1, :, :5, :5])
    hidden = np.asarray(keyed_mask(keys, (3, 6, 32), 0.9, site=2))
    np.testing.assert_array_equal(np.asarray(keyed_mask(keys[2:], (1, 11, 32), 0.9, site=2))
                                  [0, :6], hidden[2])
    big = np.asarray(keyed_mask(keys, (3, 64, 256), 0.9, site=1))
    assert abs(big.mean() - 0.9) < 0.01  # 49152 Bernoulli(0.9) draws: std 0.0014
    assert (big[0] != big[1]).any()      # examples differ,
    assert (np.asarray(keyed_mask(keys, (3, 64, 256), 0.9, site=3)) != big).any()  # sites too


# Noisy methods that need model-aware inputs besides (score_fn, x), with where their per-example
# keys are tested instead.
MODEL_AWARE = {"reagent": "test_reagent.py::test_seeded_determinism_and_batch_invariance"}


def _required_keywords(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty}


def _noisy_methods():
    """Every registered method that draws random numbers (declares ``key``) and runs on a
    score function alone, and noise tunnels around methods with extra settings."""
    noisy = {name: fn for name, fn in METHODS.items() if needs_of(fn).key}
    assert {n for n, fn in noisy.items() if _required_keywords(fn)} == set(MODEL_AWARE)
    out = {n: fn for n, fn in noisy.items() if n not in MODEL_AWARE}
    out["vargrad_ig"] = vargrad(integrated_gradients, n_samples=2, stdevs=0.4)
    return out


@pytest.mark.parametrize("name", sorted(_noisy_methods()))
def test_every_noisy_method_under_vmap_equals_a_loop(name):
    """The functional API under ``jax.vmap`` (one key, unbatched examples inside) equals the
    same call on each example in a Python loop, with non-zero noise."""
    method = _noisy_methods()[name]
    assert {"smoothgrad", "smoothgrad_sq", "vargrad", "gradient_shap", "lime"} <= set(
        _noisy_methods())
    options = needs_of(method).options
    kw = {k: v for k, v in dict(n_samples=3, stdevs=0.4, n_steps=4).items() if k in options}
    x = jax.random.normal(jax.random.key(3), (3, 4, 5))

    def one(z):  # z [L, H] -> [T, L, H]
        return method(lambda v: _score(v[None])[0], z, key=5, **kw)

    looped = jnp.stack([one(z) for z in x])
    vmapped = jax.vmap(one)(x)
    assert float(jnp.abs(looped).max()) > 0
    np.testing.assert_allclose(vmapped, looped, rtol=1e-4, atol=1e-5)
    if name == "gradient_shap":  # and with a set of baselines, sampled per example
        base = jax.random.normal(jax.random.key(8), (2, 4, 5))
        one_set = lambda z: method(lambda v: _score(v[None])[0], z, base, key=5,  # noqa: E731
                                   **kw)
        np.testing.assert_allclose(jax.vmap(one_set)(x), jnp.stack([one_set(z) for z in x]),
                                   rtol=1e-4, atol=1e-5)


SHARDED_NOISY = textwrap.dedent("""
    import json, jax, numpy as np, jaxattr
    from jaxattr.testing import make_model
    assert len(jax.devices()) == 2, jax.devices()
    model = jaxattr.load_model(make_model("gpt2")[0], tokenizer=make_model("gpt2")[1])
    prompts, full = {prompts!r}, {full!r}
    runs = {{
        "smoothgrad": dict(method=jaxattr.smoothgrad(jaxattr.saliency, n_samples=2, stdevs=0.5)),
        "gradient_shap": dict(method="gradient_shap", n_samples=2, stdevs=0.5),
        "mc_dropout": dict(method="saliency", attributed_fn="mc_dropout_prob_avg",
                           n_mcd_steps=3),
        "reagent": dict(method="reagent", max_probe_steps=8, num_probes=4),
    }}
    worst = {{}}
    for name, kw in runs.items():
        one = model.attribute(prompts, full, show_progress=False, **kw)
        sh = model.attribute(prompts, full, show_progress=False, mesh="auto", **kw)
        assert len(sh.batches[0].target_attributions.sharding.device_set) == 2
        w = 0.0
        for x, y in zip(one.sequence_attributions, sh.sequence_attributions):
            u, v = x.target_attributions, y.target_attributions
            assert np.array_equal(np.isnan(u), np.isnan(v))
            w = max(w, float(np.nanmax(np.abs(u - v)) / np.nanmax(np.abs(u))))
        worst[name] = w
    print("WORST", json.dumps(worst))
""")


def test_noisy_methods_sharded_equal_unsharded():
    """On 2 (fake CPU) devices with ``mesh="auto"`` (3 inputs: padded to 4 rows, 2 per
    device) every noisy method gives the unsharded numbers."""
    script = SHARDED_NOISY.format(prompts=PROMPTS, full=FULL)
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    worst = json.loads(res.stdout.split("WORST", 1)[1])
    assert set(worst) == {"smoothgrad", "gradient_shap", "mc_dropout", "reagent"}
    assert max(worst.values()) <= 1e-5, worst
