"""Discretized integrated gradients: kNN graph, monotonic paths and attributions equal to
Inseq 0.7.1's on the same weights, and its defining properties.

``benchmarks/inseq_side/inseq_dig.npz`` is made by ``run_inseq_dig.py`` in the side
environment (Inseq 0.7.1, scikit-learn) on the tiny checkpoints of ``test_inseq_reference.py``.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr import knn_cache
from jaxattr.methods import discretized_integrated_gradients as dig
from jaxattr.methods.monotonic_paths import (knn_graph, monotonic_dims, monotonic_path_embeddings,
                                             monotonic_word_paths)
from jaxattr.pipeline import vocabulary_table

HERE = os.path.dirname(os.path.abspath(__file__))
SIDE = os.path.join(HERE, "..", "benchmarks", "inseq_side")
NPZ = os.path.join(SIDE, "inseq_dig.npz")
TOL = 1e-5  # as test_inseq_reference.py
N_STEPS = 50


@pytest.fixture(scope="module")
def reference():
    z = np.load(NPZ, allow_pickle=False)
    meta = json.loads(str(z["__meta__"]))
    return z, meta, {c["call_id"]: c for c in meta["calls"]}


@pytest.fixture(scope="module")
def models():
    return {name: jaxattr.load_model(os.path.join(SIDE, "tiny_ckpt", name))
            for name in ("gpt2", "marian")}


def _vocab(model):
    return vocabulary_table(model.adapter, "target")


@pytest.mark.parametrize("name", ["gpt2", "marian"])
def test_knn_graph_equals_scikit_learn(name, reference, models):
    z, _, _ = reference
    idx, dist = jax.jit(knn_graph)(_vocab(models[name]))
    idx, ref_idx = np.asarray(idx), z[f"knn/{name}/indices"]
    ref_dist = z[f"knn/{name}/distances"]
    np.testing.assert_allclose(np.asarray(dist), ref_dist, rtol=1e-5)
    # Same neighbours in the same order, except where two neighbours are tied (distances
    # equal to float32 rounding: 2 of 15900 in the Marian vocabulary): their order is
    # rounding's. Each neighbour must sit in scikit-learn's row at the same distance.
    for row, col in zip(*np.nonzero(idx != ref_idx)):
        at = np.flatnonzero(ref_idx[row] == idx[row, col])
        assert at.size == 1, (row, col)
        np.testing.assert_allclose(ref_dist[row, at[0]], ref_dist[row, col], rtol=1e-6)
    assert (idx != ref_idx).mean() < 1e-3


@pytest.mark.parametrize("strategy", ["greedy", "maxcount"])
@pytest.mark.parametrize("name", ["gpt2", "marian"])
def test_paths_equal_inseq(name, strategy, reference, models):
    z, meta, _ = reference
    key = f"paths/{name}/{strategy}"
    ids, bids = z[f"{key}/ids"], z[f"{key}/baseline_ids"]
    vocab = _vocab(models[name])
    words = monotonic_word_paths(ids, bids, vocab, z[f"knn/{name}/indices"], n_steps=N_STEPS,
                                 strategy=strategy, special_ids=meta["special_ids"][name])
    np.testing.assert_array_equal(np.asarray(words), z[f"{key}/words"])
    emb = monotonic_path_embeddings(words, bids, vocab, n_steps=N_STEPS)  # [n, P, H]
    np.testing.assert_allclose(np.moveaxis(np.asarray(emb), 0, 1), z[f"{key}/embeddings"],
                               rtol=0, atol=1e-6)


CALLS = {
    "gpt2/dig_greedy": dict(),
    "gpt2/dig_maxcount": dict(strategy="maxcount"),
    "marian_fixedscale/dig_greedy": dict(attribute_target=True),
}


def _rel(a, b):
    return np.nanmax(np.abs(a - b)) / np.nanmax(np.abs(b))


@pytest.mark.parametrize("call_id", sorted(CALLS))
def test_attributions_equal_inseq(call_id, reference, models):
    z, _, calls = reference
    call = calls[call_id]
    assert "error" not in call, call.get("error")
    model = models["gpt2" if call_id.startswith("gpt2") else "marian"]
    out = model.attribute(call["input_texts"], call["generated_texts"],
                          method="discretized_integrated_gradients",
                          step_scores=("probability",), **CALLS[call_id])
    for i, (seq, ref) in enumerate(zip(out.sequence_attributions, call["sequences"])):
        assert seq.target == [t for t, _ in ref["target"]]
        key = f"{call_id}/{i}"
        tgt = z[f"{key}/target_attributions"]
        assert seq.target_attributions.shape == tgt.shape
        np.testing.assert_array_equal(np.isnan(seq.target_attributions), np.isnan(tgt))
        assert _rel(seq.target_attributions, tgt) <= TOL
        if f"{key}/source_attributions" in z.files:
            src = z[f"{key}/source_attributions"]
            assert seq.source_attributions.shape == src.shape
            assert _rel(seq.source_attributions, src) <= TOL


def test_batch_invariance(models):
    m = models["gpt2"]
    prompts = ["The cat sat on the", "Hello world, this is", "Birds fly south when"]
    gens = ["The cat sat on the mat and looked at the dog.",
            "Hello world, this is a tiny test.", "Birds fly south when the winter comes."]
    batched = m.attribute(prompts, gens, method="discretized_integrated_gradients",
                          strategy="maxcount", n_steps=12)
    for i in (0, 2):
        alone = m.attribute(prompts[i], gens[i], method="discretized_integrated_gradients",
                            strategy="maxcount", n_steps=12)[0]
        a, b = batched[i].target_attributions, alone.target_attributions
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert _rel(a, b) <= 1e-5


def _toy(V=40, H=6, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (V, H))


def test_linear_score_sums_to_score_change():
    """For a linear score the path sum telescopes: Σ attributions = s(x) − s(baseline)."""
    vocab = _toy()
    ids = jnp.asarray([[3, 17, 5, 0]])
    bids = jnp.asarray([[1, 1, 1, 0]])
    w = jax.random.normal(jax.random.PRNGKey(1), (2, 6))

    def f(x):  # [1, L, H] -> [1, 2]
        return jnp.einsum("blh,th->bt", x, w)

    x = vocab[ids]
    attr = dig(f, x, token_ids=ids, baseline_ids=bids, vocabulary=vocab, n_steps=10,
               n_neighbors=8, special_ids=(0,))
    change = f(x) - f(vocab[bids])  # [1, 2]
    np.testing.assert_allclose(attr.sum(axis=(1, 2, 3)), change[0], rtol=1e-5, atol=1e-6)
    # the special token (id 0, its own baseline) has a constant path: no attribution
    np.testing.assert_array_equal(attr[:, 0, 3], 0.0)
    # multiply_by_inputs multiplies by x − baseline
    m = dig(f, x, token_ids=ids, baseline_ids=bids, vocabulary=vocab, n_steps=10,
            n_neighbors=8, multiply_by_inputs=True)
    np.testing.assert_allclose(m, attr * (x - vocab[bids])[None], rtol=1e-6)


@pytest.mark.parametrize("strategy", ["greedy", "maxcount"])
def test_paths_are_monotonic(strategy):
    """Every point lies between the next point towards the input and the baseline
    (Inseq's ``check_monotonic``), the path starts at the baseline and ends at the input."""
    vocab = _toy(V=60, H=5, seed=3)
    ids, bids = jnp.arange(2, 12), jnp.full((10,), 1)
    knn = knn_graph(vocab, 10)[0]
    words = monotonic_word_paths(ids, bids, vocab, knn, n_steps=8, strategy=strategy)
    emb = monotonic_path_embeddings(words, bids, vocab, n_steps=8)  # [8, 10, H]
    np.testing.assert_array_equal(emb[0], vocab[bids])
    np.testing.assert_array_equal(emb[-1], vocab[ids])
    for k in range(7):  # point k lies between point k + 1 and the baseline
        assert bool(monotonic_dims(emb[k], emb[0], emb[k + 1]).all())
    # anchors are distinct words on the way (until the baseline is reached)
    for row in np.asarray(words):
        body = [w for w in row if w != 1]
        assert len(body) == len(set(body))


def test_knn_cache_is_npz_keyed_by_table(tmp_path, monkeypatch):
    vocab = _toy(V=30, H=4)
    first = knn_cache.cached_knn_graph(vocab, 5, cache_dir=str(tmp_path))
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    with np.load(files[0], allow_pickle=False) as z:
        np.testing.assert_array_equal(z["indices"], first)
    knn_cache._MEMORY.clear()

    def boom(*a, **k):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(knn_cache, "_knn_jit", boom)
    np.testing.assert_array_equal(knn_cache.cached_knn_graph(vocab, 5, cache_dir=str(tmp_path)),
                                  first)
    monkeypatch.undo()
    other = vocab.at[0, 0].add(1.0)  # another table: another file
    knn_cache.cached_knn_graph(other, 5, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 2


def test_clear_errors(models):
    m = models["gpt2"]
    with pytest.raises(ValueError, match="baseline='unk'"):
        m.attribute("The cat sat on the", "The cat sat on the mat.",
                    method="discretized_integrated_gradients", baseline="zeros")
    with pytest.raises(ValueError, match="strategy must be one of"):
        m.attribute("The cat sat on the", "The cat sat on the mat.",
                    method="discretized_integrated_gradients", strategy="closest")
    assert "discretized_integrated_gradients" in jaxattr.list_methods()
