"""Activation patching and causal tracing against independent truths: patching everything
restores the clean run, nothing leaves the corrupted one, the vmapped grid equals a loop of
single patched forwards, first-order patching is exact where the metric is linear in the site,
and causal tracing equals a hand-written restore loop."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.encoding import InputError
from jaxattr.interventions import (activation_patching, average_traces, causal_trace,
                                   load_result)
from jaxattr.interventions.engine import patched_metrics
from jaxattr.interventions.runs import encode_prompts
from jaxattr.internals.sites import SiteError

HERE = os.path.dirname(os.path.abspath(__file__))
CKPT = os.path.join(HERE, os.pardir, "benchmarks", "native_side", "ckpt", "llama")
CLEAN = ["The cat sat on the mat and", "Kim has a red"]
CORR = ["The mat sat on the cat and", "Sam has a red"]


@pytest.fixture(scope="module")
def llama():
    return jaxattr.load_model(CKPT)


def _metric(backend, ids, mask, answer, foil, patch=None):
    last = jnp.asarray(mask.sum(1) - 1)
    out = backend.forward(target_ids=jnp.asarray(ids), target_mask=jnp.asarray(mask),
                          positions=last[:, None], patch=patch or {})
    lg = np.asarray(out["logits"][:, 0], np.float64)
    r = np.arange(len(ids))
    return lg[r, answer] - lg[r, foil]


def _single_patch(backend, site):
    """A jitted forward that overwrites ``site`` at position ``t`` (and head ``h``, or all
    heads with ``h = -1``) with ``value`` — one cell of a grid, written independently."""
    @jax.jit
    def run(ids, mask, value, t, h):
        def patch(o):
            if o.ndim == 4:
                keep = (jnp.arange(o.shape[2]) == h) | (h < 0)
                new = jnp.where(keep[None, :, None], value[:, t], o[:, t])
                return o.at[:, t].set(new)
            return o.at[:, t].set(value[:, t])
        last = jnp.sum(mask, 1) - 1
        return backend.forward(target_ids=ids, target_mask=mask, positions=last[:, None],
                               patch={site: patch})["logits"][:, 0]
    return run


@pytest.fixture(scope="module")
def pairs(llama):
    c = encode_prompts(llama, CLEAN, name="clean")
    k = encode_prompts(llama, CORR, name="corrupted")
    assert [len(t) for t in c.tokens] == [len(t) for t in k.tokens]
    return c, k


def test_patch_everything_restores_clean_and_nothing_keeps_corrupted(llama, pairs):
    c, k = pairs
    res = activation_patching(llama, CLEAN, CORR, answer=" on", foil=" in",
                              sites="blocks.0.resid_pre", positions="together")
    np.testing.assert_allclose(res.scores[:, 0, 0], res.clean, rtol=1e-5, atol=1e-5)
    ans = llama.tokenizer(" on", add_special_tokens=False)["input_ids"][0]
    foil = llama.tokenizer(" in", add_special_tokens=False)["input_ids"][0]
    np.testing.assert_allclose(res.clean, _metric(llama.adapter, c.ids, c.mask, ans, foil),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.corrupted, _metric(llama.adapter, k.ids, k.mask, ans, foil),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.normalized()[:, 0, 0], 1.0, atol=1e-4)
    # an all-zero mask is the unpatched corrupted run
    src = llama.adapter.forward(**c.run(), capture=("blocks.1.mlp_out",))["captured"]
    zero = {"blocks.1.mlp_out": jnp.zeros((3,) + c.ids.shape[1:])}
    out = patched_metrics(
        llama.adapter, k.run(), sources=src, masks=zero, positions=jnp.asarray(k.last),
        metric=lambda lg: lg[jnp.arange(2), ans] - lg[jnp.arange(2), foil])
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(res.corrupted, (3, 2)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_grid_equals_loop_of_single_patches(llama, pairs, direction):
    c, k = pairs
    sites = ("blocks.0.attn_out", "blocks.2.resid_pre")
    res = activation_patching(llama, CLEAN, CORR, answer=" on", foil=" in", sites=sites,
                              direction=direction, chunk=5)
    run, src = (k, c) if direction == "denoise" else (c, k)
    acts = llama.adapter.forward(**src.run(), capture=sites)["captured"]
    ans = llama.tokenizer(" on", add_special_tokens=False)["input_ids"][0]
    foil = llama.tokenizer(" in", add_special_tokens=False)["input_ids"][0]
    for s, site in enumerate(sites):
        single = _single_patch(llama.adapter, site)
        for t in range(c.ids.shape[1]):
            lg = np.asarray(single(jnp.asarray(run.ids), jnp.asarray(run.mask), acts[site], t,
                                   -1), np.float64)
            want = lg[:, ans] - lg[:, foil]
            for b in range(2):
                if t < c.lengths[b]:
                    np.testing.assert_allclose(res.scores[b, s, t], want[b], rtol=1e-5,
                                               atol=1e-5)
                else:
                    assert np.isnan(res.scores[b, s, t])


def test_head_patching_equals_loop(llama, pairs):
    c, k = pairs
    res = activation_patching(llama, CLEAN[:1], CORR[:1], answer=" on",
                              sites="blocks.1.head_out", positions=[2, -1])
    n = int(c.lengths[0])
    ids_c, mask_c = jnp.asarray(c.ids[:1, :n]), jnp.asarray(c.mask[:1, :n])
    acts = llama.adapter.forward(target_ids=ids_c, target_mask=mask_c,
                                 capture=("blocks.1.head_out",))["captured"]["blocks.1.head_out"]
    ans = llama.tokenizer(" on", add_special_tokens=False)["input_ids"][0]
    assert res.scores.shape == (1, 1, 2, acts.shape[2])
    single = _single_patch(llama.adapter, "blocks.1.head_out")
    for p, t in enumerate([2, n - 1]):
        for h in range(acts.shape[2]):
            lg = single(jnp.asarray(k.ids[:1, :n]), jnp.asarray(k.mask[:1, :n]), acts, t, h)
            np.testing.assert_allclose(res.scores[0, 0, p, h], float(lg[0, ans]), rtol=1e-5,
                                       atol=1e-5)


def test_attribution_patching_exact_where_linear(llama):
    # logits are linear in the head's input (final_norm): first order is exact there
    kw = dict(answer=" on", foil=" in", sites="final_norm")
    exact = activation_patching(llama, CLEAN, CORR, **kw)
    approx = activation_patching(llama, CLEAN, CORR, method="attribution", **kw)
    ok = np.isfinite(exact.scores)
    np.testing.assert_allclose(approx.scores[ok], exact.scores[ok], rtol=1e-4, atol=1e-4)
    integ = activation_patching(llama, CLEAN, CORR, method="integrated", n_steps=4, **kw)
    np.testing.assert_allclose(integ.scores[ok], exact.scores[ok], rtol=1e-4, atol=1e-4)
    # and not exact at a nonlinear site (the test can fail)
    e2 = activation_patching(llama, CLEAN, CORR, answer=" on", foil=" in",
                             sites="blocks.0.resid_pre")
    a2 = activation_patching(llama, CLEAN, CORR, answer=" on", foil=" in",
                             sites="blocks.0.resid_pre", method="attribution")
    assert np.nanmax(np.abs(e2.scores - a2.scores)) > 1e-3


def test_causal_trace_equals_restore_loop(llama, tmp_path):
    prompt, subject = "The cat sat on the mat and", "cat sat"
    s0, s1 = jaxattr.interventions.subject_token_range(llama, prompt, subject)
    p = encode_prompts(llama, prompt, name="prompt")
    assert " ".join(p.tokens[0][s0:s1]).replace("▁", " ").split() == ["cat", "sat"]
    hidden = llama.adapter.embedding_matrix().shape[1]
    noise = np.random.default_rng(0).normal(size=(3, s1 - s0, hidden)).astype(np.float32)
    ans = llama.tokenizer(" on", add_special_tokens=False)["input_ids"][0]
    for kind, window in ((None, 1), ("mlp", 2)):
        tr = causal_trace(llama, prompt, subject, answer=" on", noise=noise, kind=kind,
                          window=window, chunk=7)
        n_layers = tr.scores.shape[1]
        site = "resid_post" if kind is None else "mlp_out"
        names = [f"blocks.{l}.{site}" for l in range(n_layers)]
        ids, mask = jnp.asarray(p.ids), jnp.asarray(p.mask)
        clean = llama.adapter.forward(target_ids=ids, target_mask=mask, capture=names)
        full = np.zeros((3, ids.shape[1], hidden), np.float32)
        full[:, s0:s1] = noise
        run = dict(target_ids=jnp.repeat(ids, 3, 0), target_mask=jnp.repeat(mask, 3, 0),
                   positions=jnp.full((3, 1), ids.shape[1] - 1))

        @jax.jit
        def prob(t, layers):
            # restore position t of every site whose layer is in `layers` (a 0/1 vector)
            patch = {names[j]: (lambda o, j=j: jnp.where(
                layers[j] > 0, o.at[:, t].set(clean["captured"][names[j]][0, t]), o))
                for j in range(n_layers)}
            patch["embed"] = lambda e: e + full
            lg = llama.adapter.forward(**run, patch=patch)["logits"][:, 0]
            return jax.nn.softmax(lg, -1)[:, ans].mean()
        none = jnp.zeros((n_layers,))
        assert tr.low_score == pytest.approx(float(prob(0, none)), rel=1e-5, abs=1e-6)
        for t in (0, s0, s1 - 1, ids.shape[1] - 1):
            for l in range(n_layers):
                lo, hi = (l, l + 1) if kind is None else (max(0, l - window // 2),
                                                          min(n_layers, l - (-window // 2)))
                layers = jnp.zeros((n_layers,)).at[lo:hi].set(1.0)
                assert tr.scores[t, l] == pytest.approx(float(prob(t, layers)), rel=1e-4,
                                                        abs=1e-6)
    # the clean run is the high score; restoring everything before the subject is a no-op
    assert tr.high_score > 0
    path = tr.save(tmp_path / "trace.npz")
    back = load_result(path)
    np.testing.assert_array_equal(back.scores, tr.scores)
    assert back.subject_range == tr.subject_range and back.tokens == tr.tokens
    avg = average_traces([tr, tr])
    assert avg.mean.shape == (6, tr.scores.shape[1])
    assert "causal trace" in tr.to_text() and "<table" in tr.to_html()


def test_patching_result_round_trip_and_views(llama, tmp_path):
    res = activation_patching(llama, CLEAN, CORR, answer=" on", foil=" in",
                              sites="blocks.*.mlp_out", positions=[1, 3])
    back = load_result(res.save(tmp_path / "p.npz"))
    np.testing.assert_array_equal(back.scores, res.scores)
    assert back.sites == res.sites and back.clean_tokens == res.clean_tokens
    assert back.info == res.info
    assert "blocks.0.mlp_out" in res.to_text() and "<table" in res.to_html(1)


def test_clear_errors(llama):
    with pytest.raises(InputError, match="same length"):
        activation_patching(llama, "The cat sat", "The cat sat on the mat", answer=" on")
    with pytest.raises(SiteError, match=r"mlp_out"):
        activation_patching(llama, CLEAN, CORR, answer=" on", sites="blocks.0.mlp_output")
    with pytest.raises(InputError, match="does not occur"):
        causal_trace(llama, "The cat sat on the mat", "dog")
    with pytest.raises(InputError, match="logit_diff"):
        activation_patching(llama, CLEAN, CORR, answer=" on", metric="logit_diff")
    with pytest.raises(InputError, match="noise array"):
        causal_trace(llama, "The cat sat on the mat", "cat", noise=np.zeros((2, 5, 3)))
