"""Tuned lens maths on a synthetic model with a known answer (no transformer needed).

The synthetic model's final state ``f`` is random; the state of layer ``l`` is the known
affine map ``f @ M_l + c_l``; its readout is a LayerNorm and a head. The ideal translator
undoes the map, so a trained tuned lens must reach KL ≈ 0 while the logit lens cannot.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxattr.lens import (LensSource, Readout, TrainState, TunedLens, evaluate_lens, fit,
                          lens_log_probs, lens_metadata, load_lens, load_state,
                          row_statistics, save_lens, save_state, tuned_lens_optimizer)

H, V, NL = 16, 64, 3


def _layer_norm_head(p, h):
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    return ((h - mu) / jnp.sqrt(var + 1e-5) * p["g"] + p["b"]) @ p["W"]


def _states(p, batch):
    f = batch["final"]
    rows = jnp.einsum("blh,shk->sblk", f, p["M"]) + p["c"][:, None, None]
    return jnp.concatenate([rows, f[None]], 0)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    readout = Readout(params={"g": jnp.asarray(rng.uniform(0.5, 1.5, H), jnp.float32),
                              "b": jnp.asarray(rng.normal(size=H) * 0.1, jnp.float32),
                              "W": jnp.asarray(rng.normal(size=(H, V)), jnp.float32)},
                      fn=_layer_norm_head)
    ms, cs = [], []
    for _ in range(NL):
        q, _ = np.linalg.qr(rng.normal(size=(H, H)))
        ms.append(q * rng.uniform(0.8, 1.25, H))
        cs.append(rng.normal(size=H) * 0.5)
    params = {"M": jnp.asarray(np.stack(ms), jnp.float32),
              "c": jnp.asarray(np.stack(cs), jnp.float32)}
    return LensSource(params=params, readout=readout, states_fn=_states, n_layers=NL, hidden=H)


def _batch(seed, n_micro=1):
    f = jax.random.normal(jax.random.PRNGKey(seed), (n_micro, 8, 32, H))
    nxt = jax.random.randint(jax.random.PRNGKey(seed + 1), (n_micro, 8, 32), 0, V)
    return {"final": f, "mask": jnp.ones((n_micro, 8, 32)), "next_ids": nxt,
            "next_mask": jnp.ones((n_micro, 8, 32))}


def _single(batch):
    return jax.tree.map(lambda x: x[0], batch)


def test_fresh_tuned_lens_is_the_logit_lens_exactly(synthetic):
    states = synthetic.states(_single(_batch(0)))
    logit = lens_log_probs(synthetic.readout, states)
    tuned = lens_log_probs(synthetic.readout, states, TunedLens.init(NL, H))
    np.testing.assert_array_equal(np.asarray(logit), np.asarray(tuned))


def test_row_statistics_match_numpy(synthetic):
    b = _single(_batch(3))
    states = synthetic.states(b)
    lens = TunedLens(weight=0.1 * jax.random.normal(jax.random.PRNGKey(5), (NL, H, H)),
                     bias=0.1 * jax.random.normal(jax.random.PRNGKey(6), (NL, H)))
    stats = jax.device_get(row_statistics(synthetic.readout, states, b["next_ids"], lens,
                                          top_k=4, layer_chunk=2))
    # Independent computation in float64 numpy, row by row.
    s = np.asarray(states, np.float64)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), synthetic.readout.params)
    w, bias = np.asarray(lens.weight, np.float64), np.asarray(lens.bias, np.float64)
    tgt = np.asarray(b["next_ids"])

    def logp_of(h):
        mu = h.mean(-1, keepdims=True)
        z = ((h - mu) / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p["g"]
             + p["b"]) @ p["W"]
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    final = logp_of(s[-1])
    for r in range(NL + 1):
        h = s[r] if r == NL else s[r] + s[r] @ w[r] + bias[r]
        lp = logp_of(h)
        order = np.argsort(-lp, axis=-1)[..., :4]
        np.testing.assert_array_equal(stats["top_ids"][r], order)
        np.testing.assert_allclose(stats["top_probs"][r], np.exp(np.take_along_axis(lp, order, -1)), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(stats["entropy"][r], -(np.exp(lp) * lp).sum(-1), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stats["kl"][r], (np.exp(final) * (final - lp)).sum(-1), rtol=1e-3, atol=1e-5)
        t = np.take_along_axis(lp, tgt[..., None], -1)
        np.testing.assert_allclose(stats["target_prob"][r], np.exp(t[..., 0]), rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(stats["target_rank"][r], (lp > t).sum(-1))
    np.testing.assert_allclose(stats["kl"][-1], 0.0, atol=1e-6)


def test_default_optimizer_is_the_tuned_lens_recipe():
    # One hand-computed step of SGD(lr=(1-β)·lr, momentum β, nesterov, weight decay wd)
    # after clipping the gradient to global norm 1 (PyTorch's order of operations).
    opt = tuned_lens_optimizer(10, lr=1.0, momentum=0.9, weight_decay=0.01, max_grad_norm=1.0)
    p = {"a": jnp.array([1.0, -2.0])}
    g = {"a": jnp.array([3.0, 4.0])}                  # norm 5 -> clipped to [0.6, 0.8]
    upd, state = opt.update(g, opt.init(p), p)
    gd = np.array([0.6, 0.8]) + 0.01 * np.array([1.0, -2.0])
    expected = -0.1 * (gd + 0.9 * gd)                 # nesterov: g + β·buf, buf = g
    np.testing.assert_allclose(np.asarray(upd["a"]), expected, rtol=1e-6)
    # Step 2 of 10: learning rate decayed linearly to 0.1 · 9/10.
    upd2, _ = opt.update(g, state, p)
    buf = 0.9 * gd + gd
    np.testing.assert_allclose(np.asarray(upd2["a"]), -0.09 * (gd + 0.9 * buf), rtol=1e-6)


def test_training_recovers_the_known_translators(synthetic):
    steps = 1000
    opt = tuned_lens_optimizer(steps, lr=3.0, weight_decay=0.0)
    state, history = fit(synthetic, _batch, steps=steps, optimizer=opt, show_progress=False)
    assert history.shape == (steps, NL) and np.all(history[0] > 1.0)
    held_out = [_single(_batch(10_000 + i)) for i in range(2)]
    ev = evaluate_lens(synthetic, state.lens, held_out)
    assert np.all(ev["tuned_kl"] < 1e-3), ev["tuned_kl"]
    assert np.all(ev["logit_kl"] > 1.0), ev["logit_kl"]
    # The translated states are the final state up to LayerNorm's invariances (centre and
    # scale): the cosine of the centred vectors is ~1 at every token (it is ~0 untranslated).
    b = held_out[0]
    states = synthetic.states(b)

    def cosine(x, y):
        x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
        return (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)

    final = np.asarray(b["final"])
    for layer in range(NL):
        got = np.asarray(state.lens.translate_row(states[layer], layer))
        assert cosine(got, final).min() > 0.99
        assert abs(cosine(np.asarray(states[layer]), final).mean()) < 0.3


def test_save_load_and_resume_are_exact(synthetic, tmp_path):
    opt = tuned_lens_optimizer(6, weight_decay=1e-3)
    full, hist_full = fit(synthetic, _batch, steps=6, optimizer=opt, show_progress=False)
    saved = {}

    def checkpoint(state, kls):
        if int(state.step) == 3:
            saved["path"] = save_state(tmp_path / "state.msgpack", state)

    fit(synthetic, _batch, steps=3, optimizer=opt, show_progress=False, on_step=checkpoint)
    lens0 = TunedLens.init(NL, H)
    template = TrainState(lens=lens0, opt_state=opt.init(lens0), step=jnp.zeros((), jnp.int32))
    resumed = load_state(saved["path"], template)
    assert int(resumed.step) == 3
    resumed, hist_rest = fit(synthetic, _batch, steps=6, optimizer=opt, state=resumed,
                             show_progress=False)
    np.testing.assert_array_equal(np.asarray(resumed.lens.weight), np.asarray(full.lens.weight))
    np.testing.assert_array_equal(hist_rest, hist_full[3:])

    path = save_lens(tmp_path / "lens.safetensors", full.lens, metadata={"model": "synthetic"})
    back = load_lens(path, expect=(NL, H))
    np.testing.assert_array_equal(np.asarray(back.weight), np.asarray(full.lens.weight))
    np.testing.assert_array_equal(np.asarray(back.bias), np.asarray(full.lens.bias))
    assert lens_metadata(path)["model"] == "synthetic"
    with pytest.raises(ValueError, match="Train a lens for this model"):
        load_lens(path, expect=(NL + 1, H))
    with pytest.raises(ValueError, match="same model and optimiser"):
        other = TunedLens.init(NL + 1, H)
        load_state(saved["path"], TrainState(lens=other, opt_state=opt.init(other),
                                             step=jnp.zeros((), jnp.int32)))


def test_wrong_number_of_rows_is_an_error(synthetic):
    states = synthetic.states(_single(_batch(0)))
    with pytest.raises(ValueError, match="n_layers \\+ 1"):
        lens_log_probs(synthetic.readout, states, TunedLens.init(NL + 2, H))
