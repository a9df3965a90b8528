"""ReAGent: a synthetic model with a known important token, seeded determinism, batch
invariance, and agreement in distribution with Inseq 0.7.1 (``inseq_reagent.npz``)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.methods import reagent

HERE = os.path.dirname(os.path.abspath(__file__))
SIDE = os.path.join(HERE, "..", "benchmarks", "inseq_side")
V, L, KEY_POS, KEY_TOK, TARGET = 12, 8, 3, 7, 0
VOCAB = jnp.eye(V)  # one-hot embeddings: x[b, l, v] = 1 iff token v at position l
BIAS = jnp.linspace(1.0, 2.0, V).at[TARGET].set(0.0)  # target last without the key token


def logits_fn(x):  # [B, L, V] -> [B, 1, V]: the target wins iff KEY_TOK sits at KEY_POS
    boost = 8.0 * x[:, KEY_POS, KEY_TOK][:, None] * (jnp.arange(V) == TARGET)
    return (BIAS + boost)[:, None, :]


def _run(ids, key, **kw):
    ids = jnp.asarray(ids)
    B = ids.shape[0]
    x = VOCAB[ids]
    return reagent(lambda z: logits_fn(z)[..., TARGET], x, logits_fn=logits_fn,
                   target_ids=jnp.full((B, 1), TARGET), token_ids=ids, vocabulary=VOCAB,
                   visible=jnp.ones((B, 1, L), bool), key=key, **kw)


IDS = [[1, 2, 4, KEY_TOK, 5, 6, 8, 9], [9, 8, 6, KEY_TOK, 3, 2, 1, 10]]


def test_known_important_token_ranks_first():
    # keep_top_n=1: a probe stops only once the key position alone keeps the target on top
    attr = np.asarray(_run(IDS, jax.random.split(jax.random.key(0), 2), max_probe_steps=300,
                           keep_top_n=1))
    imp = attr[0, :, :, 0]  # [B, L]
    assert (imp.argmax(-1) == KEY_POS).all(), imp
    np.testing.assert_allclose(imp.sum(-1), 1.0, rtol=1e-5)  # a softmax over positions
    # every hidden feature carries the token's score (Inseq repeats it)
    np.testing.assert_array_equal(attr[0, :, :, 0], attr[0, :, :, -1])


def test_seeded_determinism_and_batch_invariance():
    keys = jax.random.split(jax.random.key(1), 2)
    a = np.asarray(_run(IDS, keys, max_probe_steps=50, num_probes=4))
    b = np.asarray(_run(IDS, keys, max_probe_steps=50, num_probes=4))
    np.testing.assert_array_equal(a, b)
    other = np.asarray(_run(IDS, jax.random.split(jax.random.key(2), 2), max_probe_steps=50,
                            num_probes=4))
    assert not np.allclose(a, other)
    for i in range(2):  # alone with its own key: the same numbers as in the batch
        alone = np.asarray(_run(IDS[i:i + 1], keys[i:i + 1], max_probe_steps=50, num_probes=4))
        np.testing.assert_allclose(alone[:, 0], a[:, i], rtol=1e-6, atol=1e-7)


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="replacing_ratio"):
        _run(IDS, 0, replacing_ratio=0.0)
    with pytest.raises(ValueError, match="num_probes"):
        _run(IDS, 0, num_probes=0)


@pytest.fixture(scope="module")
def gpt2_tiny():
    return jaxattr.load_model(os.path.join(SIDE, "tiny_ckpt", "gpt2"))


@pytest.fixture(scope="module")
def record():
    z = np.load(os.path.join(SIDE, "inseq_reagent.npz"), allow_pickle=False)
    return z["reagent/importance"], json.loads(str(z["__meta__"]))


def test_pipeline_batch_invariance_and_listing(gpt2_tiny):
    texts = ["The cat sat on the", "Hello world, this is"]
    gens = ["The cat sat on the mat and looked at the dog.", "Hello world, this is a tiny test."]
    kw = dict(method="reagent", max_probe_steps=8, num_probes=4)
    # 8 probe steps leave some steps unstopped (NaN, as Inseq): the warning says so and names
    # the option to raise, not the generic non-finite causes
    with pytest.warns(RuntimeWarning, match="none of the probes stopped within max_probe_steps"):
        batched = gpt2_tiny.attribute(texts, gens, **kw)
    with pytest.warns(RuntimeWarning, match="max_probe_steps"):
        alone = gpt2_tiny.attribute(texts[0], gens[0], **kw)[0]
    a, b = batched[0].target_attributions, alone.target_attributions
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert "reagent" in jaxattr.list_methods()


def test_distribution_matches_inseq(gpt2_tiny, record):
    """Inseq's R seeded runs (16 probes each) vs one jaxattr run with R x 16 probes: where
    both are finite (a step where no probe stopped is NaN, in Inseq too), the per-cell means
    agree within 4.5 standard errors (Inseq's spread over seeds; jaxattr's grand mean over as
    many probes has about the same error, hence the sqrt(2))."""
    runs, meta = record
    R = runs.shape[0]
    assert R >= 4
    ref_mean = np.nanmean(runs, 0)
    se = np.nanstd(runs, 0, ddof=1) / np.sqrt(np.isfinite(runs).sum(0).clip(1))
    out = gpt2_tiny.attribute(meta["input_text"], meta["generated_text"], method="reagent",
                              num_probes=16 * R, key=0)[0]
    got = out.target_attributions[..., 0]
    assert [t for t, _ in meta["target"]] == out.target
    # positions a step does not see are NaN in both (the causal prefix)
    both_nan = np.isnan(runs).all(0) & np.isnan(got)
    for c in range(got.shape[1]):
        prefix = len(out.target) - got.shape[1] + c
        assert both_nan[prefix:, c].all()
    ok = np.isfinite(ref_mean) & np.isfinite(got) & (np.isfinite(runs).sum(0) >= 2)
    assert ok.sum() >= 7  # at least the first step's prompt tokens
    z = np.abs(got[ok] - ref_mean[ok]) / np.sqrt(2 * se[ok] ** 2 + 1e-12)
    assert z.max() < 4.5, (z.max(), np.round(got, 3), np.round(ref_mean, 3))
