"""Cells that restart from the noisy run's cached state (the layers below the first restored one
are not recomputed) give the numbers of full patched forwards, on the transformers-Flax adapter
and on the native model, for every kind of causal trace; and a hand-written restore loop agrees
on attention windows."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.interventions import causal_trace, subject_token_range
from jaxattr.interventions.engine import patched_metrics, restart_groups
from jaxattr.interventions.runs import encode_prompts
from jaxattr.interventions.tracing import trace_masks

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA = os.path.join(HERE, os.pardir, "benchmarks", "native_side", "ckpt", "llama")
SITE = {None: "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


@pytest.fixture(scope="module")
def llama():
    return jaxattr.load_model(LLAMA)


def _setup(model, prompt, subject, samples=3):
    s0, s1 = subject_token_range(model, prompt, subject)
    p = encode_prompts(model, prompt, name="prompt")
    hidden = model.adapter.embedding_matrix().shape[1]
    noise = np.random.default_rng(1).normal(size=(samples, s1 - s0, hidden)).astype(np.float32)
    full = np.zeros((samples, p.ids.shape[1], hidden), np.float32)
    full[:, s0:s1] = noise
    return p, noise, full


def _full_recompute(model, p, full, answer, kind, window):
    """Every cell a whole noisy forward with its restore mask (no restart)."""
    backend = model.adapter
    n_layers = 1 + max(int(s.split(".")[1]) for s in backend.sites()
                       if s.endswith(".resid_post"))
    sites = tuple(f"blocks.{l}.{SITE[kind]}" for l in range(n_layers))
    ids, mask = jnp.asarray(p.ids), jnp.asarray(p.mask)
    s, length = full.shape[0], ids.shape[1]
    clean = backend.forward(target_ids=ids, target_mask=mask, capture=sites)["captured"]
    m = trace_masks(n_layers, length, kind, window)
    run = {"target_ids": jnp.repeat(ids, s, 0), "target_mask": jnp.repeat(mask, s, 0)}
    prob = lambda lg: jax.nn.softmax(lg.astype(jnp.float32), -1)[:, answer]  # noqa: E731
    cells = patched_metrics(backend, run, sources=clean,
                            masks={n: jnp.asarray(m[j]) for j, n in enumerate(sites)},
                            metric=prob, positions=jnp.full((s,), length - 1),
                            base_patch={"embed": lambda e: e + jnp.asarray(full)}, chunk=11)
    return np.asarray(cells.mean(-1)).reshape(length, n_layers)


@pytest.mark.parametrize("backend", ["flax", "native"])
def test_restarted_grid_equals_full_recompute(backend, gpt2, llama):
    model = gpt2 if backend == "flax" else llama
    prompt, subject = "The cat sat on the mat and", "cat sat"
    p, noise, full = _setup(model, prompt, subject)
    answer = 7
    for kind, window in ((None, 1), ("mlp", 1), ("mlp", 3), ("attn", 2)):
        tr = causal_trace(model, prompt, subject, answer=answer, noise=noise, kind=kind,
                          window=window, chunk=5)
        ref = _full_recompute(model, p, full, answer, kind, window)
        assert np.abs(ref - ref[0, 0]).max() > 1e-6          # the grid is not constant
        np.testing.assert_allclose(tr.scores, ref, rtol=1e-5, atol=1e-7,
                                   err_msg=f"kind={kind} window={window}")


def test_attention_window_equals_hand_written_restore_loop(gpt2):
    prompt, subject, window = "The cat sat on the mat and", "cat sat", 2
    p, noise, full = _setup(gpt2, prompt, subject, samples=2)
    tr = causal_trace(gpt2, prompt, subject, answer=7, noise=noise, kind="attn", window=window)
    n_layers = tr.scores.shape[1]
    names = [f"blocks.{l}.attn_out" for l in range(n_layers)]
    ids, mask = jnp.asarray(p.ids), jnp.asarray(p.mask)
    fwd = gpt2.adapter.forward
    clean = fwd(target_ids=ids, target_mask=mask, capture=names)["captured"]
    length = ids.shape[1]
    for t in (1, length - 1):
        for l in range(n_layers):
            lo, hi = max(0, l - window // 2), min(n_layers, l - (-window // 2))
            patch = {names[j]: (lambda o, j=j: o.at[:, t].set(clean[names[j]][0, t]))
                     for j in range(lo, hi)}
            patch["embed"] = lambda e: e + jnp.asarray(full)
            lg = fwd(target_ids=jnp.repeat(ids, 2, 0), target_mask=jnp.repeat(mask, 2, 0),
                     positions=jnp.full((2, 1), length - 1), patch=patch)["logits"][:, 0]
            expected = float(jax.nn.softmax(lg, -1)[:, 7].mean())
            assert tr.scores[t, l] == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_restart_groups_partition_the_cells():
    m = trace_masks(4, 3, "mlp", 3)                       # [site, C, L]
    sites = {f"blocks.{j}.mlp_out": j for j in range(4)}
    groups, gm, order = restart_groups({n: m[j] for n, j in sites.items()}, sites,
                                       lambda l, used: f"blocks.{l}.resid_pre")
    # cell (t, l) with window 3 first restores layer max(0, l - 1)
    assert [g[0] for g in groups] == ["blocks.0.resid_pre", "blocks.1.resid_pre",
                                      "blocks.2.resid_pre"]
    stacked = {n: np.concatenate([g.get(n, np.zeros((len(next(iter(g.values()))), 3)))
                                  for g in gm]) for n in sites}
    for n, j in sites.items():
        np.testing.assert_array_equal(stacked[n][order], m[j])
    for (start, used), g in zip(groups, gm):
        first = int(start.split(".")[1])
        assert all(sites[n] >= first for n in used)


def test_restarted_exact_patching_equals_loop_of_single_patches(gpt2):
    """Cells of every stage (embeddings, a sublayer, a block output, the head's input) restart
    at their own stage; each equals one full forward with that single patch."""
    from jaxattr.interventions import activation_patching
    clean, corr = ["The cat sat on", "Kim has a red ball"], ["The mat sat on", "Sam has a red ball"]
    sites = ("embed", "blocks.0.mlp_out", "blocks.1.resid_post", "final_norm")
    res = activation_patching(gpt2, clean, corr, answer=7, foil=9, sites=sites, chunk=4)
    c = encode_prompts(gpt2, clean, name="clean")
    k = encode_prompts(gpt2, corr, name="corrupted")
    fwd = gpt2.adapter.forward
    acts = fwd(**c.run(), capture=sites)["captured"]
    last = jnp.asarray(k.last)[:, None]
    for s, site in enumerate(sites):
        for t in range(c.ids.shape[1]):
            patch = {site: lambda o, v=acts[site], t=t: o.at[:, t].set(v[:, t])}
            lg = np.asarray(fwd(**k.run(), positions=last, patch=patch)["logits"][:, 0],
                            np.float64)
            want = lg[:, 7] - lg[:, 9]
            for b in range(2):
                if t < c.lengths[b]:
                    assert res.scores[b, s, t] == pytest.approx(want[b], rel=1e-5, abs=1e-5)
