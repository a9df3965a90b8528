"""Targets against independent numpy references, hand-checked filtering, registry, jit and grad."""
import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import targets as T
from jaxattr.targets import TargetBatch

B, S, V, K = 2, 3, 11, 4
RTOL = ATOL = 2e-5


# --------------------------------------------------------------------------- numpy references
def np_logsoftmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_take(a, ids):
    return np.take_along_axis(a, np.asarray(ids)[..., None], -1)[..., 0]


def np_top_p_keep(row, top_p, min_keep=1):
    """Loop-based nucleus: walk tokens from least to most probable, drop while the running
    mass stays <= 1 - top_p, never drop the min_keep most probable ones."""
    p = np.exp(np_logsoftmax(row))
    order = np.argsort(row, kind="stable")
    keep = np.ones(len(row), bool)
    mass = 0.0
    for rank, idx in enumerate(order):
        mass += p[idx]
        if mass <= 1 - top_p and rank < len(row) - min_keep:
            keep[idx] = False
    return keep


def np_top_k_keep(row, k):
    return row >= np.sort(row)[::-1][k - 1]


def np_kl(p_logits, q_logits, top_k=0, top_p=1.0, strategy="merged"):
    out = np.zeros(p_logits.shape[:-1])
    for idx in np.ndindex(*p_logits.shape[:-1]):
        zp, zq = np.asarray(p_logits[idx], np.float64), np.asarray(q_logits[idx], np.float64)
        ref = {"original": zp, "contrast": zq, "merged": zp + zq}[strategy]
        keep = np.ones(len(zp), bool)
        if top_p < 1:
            keep &= np_top_p_keep(ref, top_p)
        if top_k > 0:
            keep &= np_top_k_keep(np.where(keep, ref, -np.inf), top_k)
        lp, lq = np_logsoftmax(zp[keep]), np_logsoftmax(zq[keep])
        out[idx] = np.sum(np.exp(lp) * (lp - lq))
    return out


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(B, S, V)).astype(np.float32) * 2
    c_logits = rng.normal(size=(B, S, V)).astype(np.float32) * 2
    d_logits = (logits[None] + rng.normal(size=(K, B, S, V)) * 0.5).astype(np.float32)
    ids = rng.integers(0, V, size=(B, S))
    c_ids = (ids + 1 + rng.integers(0, V - 1, size=(B, S))) % V  # always != ids
    batch = TargetBatch(
        target_ids=jnp.asarray(ids), step_mask=jnp.ones((B, S), jnp.float32),
        contrast_ids=jnp.asarray(c_ids), contrast_logits=jnp.asarray(c_logits),
        dropout_logits=jnp.asarray(d_logits))
    return dict(logits=logits, c_logits=c_logits, d_logits=d_logits, ids=ids, c_ids=c_ids,
                batch=batch)


def run(name, d, batch=None, **kw):
    return np.asarray(T.get_target(name)(jnp.asarray(d["logits"]), batch or d["batch"], **kw))


# --------------------------------------------------------------------------- values
def test_non_contrastive_targets_match_numpy(data):
    lp = np_logsoftmax(data["logits"])
    p = np.exp(lp)
    lpy = np_take(lp, data["ids"])
    np.testing.assert_allclose(run("logit", data), np_take(data["logits"], data["ids"]),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("probability", data), np.exp(lpy), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("probability", data, logprob=True), lpy, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("logprob", data), lpy, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("entropy", data), -(p * lp).sum(-1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("crossentropy", data), -lpy, rtol=RTOL, atol=ATOL)


def test_perplexity_is_natural_exp_not_inseq_base2(data):
    p_y = np.exp(np_take(np_logsoftmax(data["logits"]), data["ids"]))
    ppl = run("perplexity", data)
    np.testing.assert_allclose(ppl, 1.0 / p_y, rtol=RTOL, atol=ATOL)
    assert not np.allclose(ppl, 2.0 ** (-np.log(p_y)), rtol=1e-3)


def test_contrastive_targets_match_numpy(data):
    z, zc = data["logits"], data["c_logits"]
    lpy = np_take(np_logsoftmax(z), data["ids"])
    lqc = np_take(np_logsoftmax(zc), data["c_ids"])
    zcy = np_take(zc, data["c_ids"])
    np.testing.assert_allclose(run("contrast_logits", data), zcy, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("contrast_prob", data), np.exp(lqc), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("contrast_prob", data, logprob=True), lqc, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("contrast_logits_diff", data), np_take(z, data["ids"]) - zcy,
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("contrast_prob_diff", data), np.exp(lpy) - np.exp(lqc),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run("contrast_prob_diff", data, logprob=True), lpy - lqc,
                               rtol=RTOL, atol=ATOL)
    # Inseq: pcxmi = -log2(p_orig / p_contrast); in_context_pvi = -log p_orig + log p_contrast
    np.testing.assert_allclose(run("pcxmi", data), -np.log2(np.exp(lpy) / np.exp(lqc)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run("in_context_pvi", data), -lpy + lqc, rtol=RTOL, atol=ATOL)


def test_contrast_fallbacks(data):
    """No contrast_ids: the original token scored in the contrast run; no contrast_logits: the
    contrast run is the original run."""
    z, zc = data["logits"], data["c_logits"]
    no_ids = data["batch"].replace(contrast_ids=None)
    np.testing.assert_allclose(run("contrast_prob", data, no_ids),
                               np.exp(np_take(np_logsoftmax(zc), data["ids"])), rtol=RTOL, atol=ATOL)
    no_logits = data["batch"].replace(contrast_logits=None)
    lp = np_logsoftmax(z)
    np.testing.assert_allclose(run("contrast_prob_diff", data, no_logits),
                               np.exp(np_take(lp, data["ids"])) - np.exp(np_take(lp, data["c_ids"])),
                               rtol=RTOL, atol=ATOL)
    neither = data["batch"].replace(contrast_ids=None, contrast_logits=None)
    for name in ("contrast_logits", "contrast_prob", "contrast_logits_diff", "contrast_prob_diff",
                 "pcxmi", "in_context_pvi", "kl_divergence"):
        with pytest.raises(ValueError, match="contrast"):
            run(name, data, neither)
    with pytest.raises(ValueError, match="contrast_logits"):
        run("kl_divergence", data, no_logits)


def test_contrast_mask_zeroes_missing_steps(data):
    mask = np.ones((B, S), np.float32)
    mask[0, 1] = 0.0
    masked = data["batch"].replace(contrast_mask=jnp.asarray(mask))
    for name in ("contrast_prob_diff", "pcxmi", "kl_divergence"):
        full, part = run(name, data), run(name, data, masked)
        assert part[0, 1] == 0.0 and full[0, 1] != 0.0
        np.testing.assert_array_equal(part[mask > 0], full[mask > 0])


def test_kl_divergence_unfiltered_matches_numpy(data):
    np.testing.assert_allclose(run("kl_divergence", data), np_kl(data["logits"], data["c_logits"]),
                               rtol=1e-4, atol=1e-5)
    assert np.all(run("kl_divergence", data) > 0)


@pytest.mark.parametrize("top_k,top_p,strategy", [
    (3, 1.0, "merged"), (0, 0.7, "merged"), (4, 0.9, "merged"),
    (3, 1.0, "original"), (0, 0.6, "original"), (5, 0.8, "contrast")])
def test_kl_divergence_filtered_matches_numpy(data, top_k, top_p, strategy):
    got = run("kl_divergence", data, top_k=top_k, top_p=top_p, filter_strategy=strategy)
    want = np_kl(data["logits"], data["c_logits"], top_k, top_p, strategy)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, run("kl_divergence", data), atol=1e-3)  # filtering did something


def test_kl_and_pcxmi_zero_when_contrast_equals_original(data):
    same = data["batch"].replace(contrast_logits=jnp.asarray(data["logits"]), contrast_ids=None)
    for name, kw in (("kl_divergence", {}), ("kl_divergence", dict(top_k=3, top_p=0.8)),
                     ("pcxmi", {}), ("in_context_pvi", {})):
        np.testing.assert_allclose(run(name, data, same, **kw), 0.0, atol=1e-6)
        assert np.abs(run(name, data, **kw)).max() > 1e-2  # and not 0 in general


# --------------------------------------------------------------------------- hand-checked filters
P = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
Q = np.array([0.05, 0.6, 0.3, 0.025, 0.025])


def hand_batch(q=Q):
    return TargetBatch(target_ids=jnp.zeros((1, 1), jnp.int32), step_mask=jnp.ones((1, 1)),
                       contrast_logits=jnp.log(jnp.asarray(q, jnp.float32))[None, None])


@pytest.mark.parametrize("top_p,size", [(1.0, 5), (0.8, 3), (0.5, 2), (0.3, 1), (0.01, 1)])
def test_top_p_size_hand_checked(top_p, size):
    # ascending P: .05 .10 .15 .30 .40 -> cumulative .05 .15 .30 .60 1.0; drop while <= 1 - top_p
    z = jnp.log(jnp.asarray(P, jnp.float32))[None, None]
    assert T.top_p_size(z, hand_batch(), top_p=top_p)[0, 0] == size


@pytest.mark.parametrize("top_p,size", [(0.5, 2), (0.75, 3), (0.25, 1), (0.6, 3), (0.0, 1)])
def test_top_p_boundary_is_inclusive(top_p, size):
    # uniform over 4: cumulative mass is exactly .25 .5 .75 1; mass == 1 - top_p is removed,
    # except the most probable token (min_tokens_to_keep=1), even at top_p=0
    z = jnp.zeros((1, 1, 4), jnp.float32)
    assert T.top_p_size(z, hand_batch(), top_p=top_p)[0, 0] == size


def test_top_p_size_per_row_and_requires_top_p(data):
    got = run("top_p_size", data, top_p=0.7)
    want = np.array([[np_top_p_keep(r, 0.7).sum() for r in row] for row in data["logits"]])
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 1  # rows differ, so a batch-wide count would fail
    with pytest.raises(ValueError, match="top_p"):
        run("top_p_size", data)


def test_top_k_mask_keeps_ties():
    z = jnp.asarray([[3.0, 1.0, 2.0, 2.0, 0.0]])
    np.testing.assert_array_equal(T.top_k_mask(z, 2), [[True, False, True, True, False]])
    np.testing.assert_array_equal(T.top_k_mask(z, 1), [[True, False, False, False, False]])


def test_kl_top_k_hand_checked():
    zp = jnp.log(jnp.asarray(P, jnp.float32))[None, None]
    # original strategy, top_k=2 keeps {0, 1}: P' = (4/7, 3/7), Q' = (1/13, 12/13)
    want = 4 / 7 * math.log((4 / 7) / (1 / 13)) + 3 / 7 * math.log((3 / 7) / (12 / 13))
    got = T.kl_divergence(zp, hand_batch(), top_k=2, filter_strategy="original")[0, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # top_p=0.5 on P keeps the same {0, 1}; top_p=0.8 keeps {0,1,2}, then top_k=2 -> {0, 1}
    for kw in (dict(top_p=0.5), dict(top_p=0.8, top_k=2)):
        got = T.kl_divergence(zp, hand_batch(), filter_strategy="original", **kw)[0, 0]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # min_tokens_to_keep raises the effective k: top_k=1 with 2 kept == top_k=2
    got = T.kl_divergence(zp, hand_batch(), top_k=1, min_tokens_to_keep=2,
                          filter_strategy="original")[0, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # merged (Inseq default): P*Q = (.02, .18, .045, .0025, .00125) -> top-2 {1, 2}, where
    # P' = Q' = (2/3, 1/3): KL = 0 although the unfiltered KL is not.
    np.testing.assert_allclose(T.kl_divergence(zp, hand_batch(), top_k=2)[0, 0], 0.0, atol=1e-6)
    assert T.kl_divergence(zp, hand_batch())[0, 0] > 0.1
    # contrast strategy: Q's top-2 is also {1, 2}
    np.testing.assert_allclose(
        T.kl_divergence(zp, hand_batch(), top_k=2, filter_strategy="contrast")[0, 0], 0.0,
        atol=1e-6)


def test_filter_argument_errors(data):
    with pytest.raises(ValueError, match="top_k"):
        run("kl_divergence", data, top_k=V + 1)
    with pytest.raises(ValueError, match="top_p"):
        run("kl_divergence", data, top_p=1.5)
    with pytest.raises(ValueError, match="filter_strategy"):
        run("kl_divergence", data, filter_strategy="both")


# --------------------------------------------------------------------------- mc dropout
def test_mc_dropout_prob_avg_matches_numpy(data):
    for logprob in (False, True):
        f = (lambda z: np_take(np_logsoftmax(z), data["ids"])) if logprob else \
            (lambda z: np.exp(np_take(np_logsoftmax(z), data["ids"])))
        noisy = np.stack([f(z) for z in data["d_logits"]])
        want = (f(data["logits"]) - noisy.mean(0)) / noisy.std(0, ddof=1)
        got = run("mc_dropout_prob_avg", data, n_mcd_steps=K, logprob=logprob)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_mc_dropout_prob_avg_errors(data):
    with pytest.raises(ValueError, match="n_mcd_steps"):
        run("mc_dropout_prob_avg", data, n_mcd_steps=K + 1)
    with pytest.raises(ValueError, match="dropout_logits"):
        run("mc_dropout_prob_avg", data, data["batch"].replace(dropout_logits=None),
            n_mcd_steps=K)


# --------------------------------------------------------------------------- registry / contract
ALL = ["logit", "probability", "logprob", "entropy", "crossentropy", "perplexity",
       "contrast_logits", "contrast_prob", "contrast_logits_diff", "contrast_prob_diff", "pcxmi",
       "kl_divergence", "in_context_pvi", "mc_dropout_prob_avg", "top_p_size"]
KWARGS = {"mc_dropout_prob_avg": dict(n_mcd_steps=K), "top_p_size": dict(top_p=0.8),
          "kl_divergence": dict(top_k=5, top_p=0.9)}


def test_registry_resolves_every_name():
    assert set(ALL) <= set(T.TARGETS)
    for name in ALL:
        fn = T.get_target(name)
        assert fn is T.TARGETS[name] and fn is getattr(T, name)
    with pytest.raises(ValueError, match="Available"):
        T.get_target("no_such_target")
    custom = lambda logits, batch: logits[..., 0]  # noqa: E731
    assert T.get_target(custom) is custom
    T.register_target("_custom_for_test", custom)
    try:
        assert T.get_target("_custom_for_test") is custom
    finally:
        del T.TARGETS["_custom_for_test"]


def test_options_are_keyword_only_with_defaults():
    for name in ALL:
        params = list(inspect.signature(T.TARGETS[name]).parameters.values())
        assert [p.name for p in params[:2]] == ["logits", "batch"], name
        for p in params[2:]:
            assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, (name, p.name)


def test_needs_declared():
    assert T.target_needs(T.probability) == frozenset()
    assert T.target_needs(T.pcxmi) == {"contrast"}
    assert T.target_needs(T.kl_divergence) == {"contrast_logits"}
    assert T.target_needs(T.mc_dropout_prob_avg) == {"dropout_logits"}
    assert T.target_needs(lambda logits, batch: logits[..., 0]) == frozenset()


@pytest.mark.parametrize("name", ALL)
def test_jit_and_grad(data, name):
    fn = functools.partial(T.TARGETS[name], **KWARGS.get(name, {}))
    z, batch = jnp.asarray(data["logits"]), data["batch"]
    eager = fn(z, batch)
    assert eager.shape == (B, S)
    np.testing.assert_allclose(jax.jit(fn)(z, batch), eager, rtol=1e-6, atol=1e-6)

    def loss(z, zc, zd):
        return jnp.sum(fn(z, batch.replace(contrast_logits=zc, dropout_logits=zd)))

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(z, batch.contrast_logits,
                                                      batch.dropout_logits)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    if name != "top_p_size":  # piecewise constant
        assert np.abs(np.asarray(grads[0])).max() + np.abs(np.asarray(grads[1])).max() > 0


def test_bfloat16_logits_scored_in_float32(data):
    z16 = jnp.asarray(data["logits"], jnp.bfloat16)
    out = T.probability(z16, data["batch"])
    assert out.dtype == jnp.float32
    want = np.exp(np_take(np_logsoftmax(np.asarray(z16, np.float32)), data["ids"]))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
