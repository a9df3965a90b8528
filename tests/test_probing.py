"""Diagnostic classifiers (jaxattr.probing): synthetic representations with known answers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr.probing as P
from jaxattr.encoding import InputError
from jaxattr.probing import scores
from jaxattr.probing.train import predict, run_probes, standardize, train_probe


def one_layer_data(n=2000, layers=4, h=16, at=2, seed=0):
    """Binary labels linearly decodable (margin 3 sd) at layer ``at`` only; pure noise
    elsewhere."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, layers, h)).astype(np.float32)
    d = rng.normal(size=h)
    x[:, at] += (3.0 * (2 * y[:, None] - 1) * d / np.linalg.norm(d)).astype(np.float32)
    return x, y


def test_one_decodable_layer_accuracy_and_compression():
    x, y = one_layer_data(n=1500)
    res = P.fit(x, y, mdl=True, spec=P.TrainSpec(max_steps=400))
    assert res.accuracy[2] >= 0.99
    for g in (0, 1, 3):
        assert 0.45 <= res.accuracy[g] <= res.chance + 0.05, res.accuracy
    assert int(np.argmax(res.compression)) == 2
    assert res.compression[2] > 5 and (np.delete(res.compression, 2) < 1.1).all()
    assert res.best_layer == "2"
    assert (res.ci_low <= res.accuracy).all() and (res.accuracy <= res.ci_high).all()


def type_data(n=3000, n_types=120, h=12, seed=0):
    """Each example is one of ``n_types`` word types (a fixed random vector plus small noise);
    the task label is a linear function of the type vector."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_types, h))
    types = rng.integers(0, n_types, n)
    x = (emb[types] + 0.05 * rng.normal(size=(n, h))).astype(np.float32)
    y = (emb[types] @ rng.normal(size=h) > 0).astype(int)
    return x, y, types


def test_mlp_memorises_control_task_linear_does_not():
    x, y, types = type_data(n=1500, n_types=80, h=8)
    spec = P.TrainSpec(max_steps=600, patience=10, hidden=(128,))
    lin = P.fit(x, y, control="type", types=types, spec=spec)
    mlp = P.fit(x, y, probe="mlp", control="type", types=types, spec=spec)
    assert lin.accuracy[0] >= 0.95 and mlp.accuracy[0] >= 0.95
    assert mlp.control_accuracy[0] >= 0.95, mlp.control_accuracy
    assert lin.control_accuracy[0] <= 0.8, lin.control_accuracy
    assert lin.selectivity[0] > mlp.selectivity[0] + 0.15
    np.testing.assert_allclose(lin.selectivity, lin.accuracy - lin.control_accuracy)


@pytest.mark.parametrize("probe,batch_size,optimizer,early",
                         [("linear", None, "adamw", True), ("mlp", 32, "adamw", True),
                          ("linear", None, "lbfgs", False), ("linear", None, "lbfgs", True)])
def test_vmapped_program_equals_per_layer_loop(probe, batch_size, optimizer, early):
    rng = np.random.default_rng(1)
    g, n, h, n_train, n_val = 3, 240, 6, 160, 40
    x = rng.normal(size=(g, n, h)).astype(np.float32)
    x[1] += rng.normal(size=(n, 1)).astype(np.float32)
    labels = np.stack([rng.integers(0, 3, n), rng.integers(0, 3, n)]).astype(np.int32)
    spec = P.TrainSpec(max_steps=200, eval_every=5, patience=3, hidden=(16,),
                       batch_size=batch_size, optimizer=optimizer, early_stopping=early,
                       l2=0.0 if optimizer == "adamw" else 1e-2)
    task = np.array([0, 1, 0, 1])
    n_rows = np.array([n_train, n_train, 40, 90])
    keys = jnp.stack([jax.random.PRNGKey(s) for s in (0, 0, 1, 2)])
    kw = dict(spec=spec, probe=probe, kind="classification", n_out=3)
    pred, logp, steps = run_probes(jnp.asarray(x), jnp.asarray(labels), jnp.asarray(task),
                                   jnp.asarray(n_rows), keys, n_train=n_train, n_val=n_val, **kw)
    one = jax.jit(train_probe, static_argnames=("spec", "probe", "kind", "n_out"))
    distinct_steps = set()
    for layer in range(g):
        xs = standardize(jnp.asarray(x[layer]), n_train)
        for j in range(len(task)):
            y = jnp.asarray(labels[task[j]])
            params, st, _ = one(xs[:n_train], y[:n_train], jnp.asarray(n_rows[j]),
                                xs[n_train:n_train + n_val], y[n_train:n_train + n_val],
                                keys[j], **kw)
            p, lp = predict(params, xs, y, "classification")
            assert int(st) == int(steps[layer, j])
            distinct_steps.add(int(st))
            np.testing.assert_allclose(np.asarray(lp), np.asarray(logp[layer, j]), atol=1e-5)
            np.testing.assert_array_equal(np.asarray(p), np.asarray(pred[layer, j]))
    assert len(distinct_steps) > 1      # jobs stopped at different steps inside the vmap


def test_regression_r2_matches_signal_to_noise():
    rng = np.random.default_rng(2)
    n, h = 3000, 8
    x = rng.normal(size=(n, 3, h)).astype(np.float32)
    w = rng.normal(size=h)
    signal = x[:, 1] @ w
    noise_sd = 0.5 * signal.std()
    y = signal + noise_sd * rng.normal(size=n)
    res = P.fit(x, y)          # float labels: regression
    assert res.kind == "regression" and res.metric == "r2"
    assert abs(res.accuracy[1] - 1 / 1.25) < 0.03, res.accuracy   # var(s)/(var(s)+var(noise))
    assert (np.abs(res.accuracy[[0, 2]]) < 0.03).all(), res.accuracy
    assert res.ci_low[1] < res.accuracy[1] < res.ci_high[1]


def test_mapping_of_sites_equals_zero_padded_array():
    x, y = one_layer_data(n=600, layers=2, h=8, at=1)
    narrow = x[:, 1, :5]
    res_map = P.fit({"a": x[:, 0], "b": narrow}, y, seeds=2)
    padded = x.copy()
    padded[:, 1, 5:] = 0.0
    padded[:, 1, :5] = narrow
    res_arr = P.fit(padded, y, seeds=2, layer_names=["a", "b"])
    assert res_map.layers == ("a", "b") and res_map.accuracy_seeds.shape == (2, 2)
    np.testing.assert_allclose(res_map.accuracy_seeds, res_arr.accuracy_seeds)


def test_wilson_interval_hand_computed():
    lo, hi = scores.wilson_interval(0.5, 100)
    assert abs(lo - 0.40383) < 1e-4 and abs(hi - 0.59617) < 1e-4
    lo, hi = scores.wilson_interval(1.0, 20)
    assert abs(lo - 0.83887) < 1e-4 and hi == pytest.approx(1.0)


def test_online_codelength_hand_computed():
    ends = scores.block_ends(8, (0.25, 0.5, 1.0))
    assert ends == [2, 4, 8]
    logp = np.full((2, 8), np.log(0.5))
    logp[1] = np.log(0.25)
    # 2 rows uniform over 4 classes (4 bits) + 2 rows at p=1/2 (2 bits) + 4 rows at p=1/4 (8)
    assert scores.online_codelength(logp, ends, 4) == pytest.approx(14.0)


def test_save_load_table_figure(tmp_path):
    x, y, types = type_data(n=800, n_types=30)
    res = P.fit(x[:, None].repeat(2, 1), y, control="type", types=types, mdl=True,
                spec=P.TrainSpec(mdl_fractions=(0.1, 0.25, 0.5, 1.0), max_steps=200),
                layer_names=["embed", "blocks.0.resid_post"])
    back = P.load(res.save(tmp_path / "probe.json"))
    for a, b in zip(jax.tree.leaves(res), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(res) == jax.tree.structure(back)
    text = res.table()
    assert "blocks.0.resid_post" in text and "selectivity" in text and "compression" in text
    pytest.importorskip("matplotlib")
    fig = res.figure()
    assert len(fig.axes) == 2


def test_bad_inputs_have_clear_errors():
    x, y = one_layer_data(n=200, layers=2, h=4, at=1)
    with pytest.raises(InputError, match="labels has 199 entries but features have 200"):
        P.fit(x, y[:-1])
    with pytest.raises(InputError, match="single class"):
        P.fit(x, np.zeros(200, int))
    bad = x.copy()
    bad[3, 1, 0] = np.nan
    with pytest.raises(InputError, match=r"NaN or infinite values in layer\(s\) \['1'\]"):
        P.fit(bad, y)
    with pytest.raises(InputError, match="needs types="):
        P.fit(x, y, control="type")
    with pytest.raises(InputError, match="mdl=True needs a classification"):
        P.fit(x, y.astype(np.float32) + 0.5, mdl=True)
    with pytest.raises(InputError, match="probe='svm'"):
        P.fit(x, y, probe="svm")
    with pytest.raises(InputError, match=r"\[N, n_layers, H\]"):
        P.fit(x[None], y)
    with pytest.raises(ValueError, match="mdl=True needs more training examples"):
        P.fit(x[:30], y[:30], mdl=True)
    with pytest.raises(ValueError, match="val_fraction"):
        P.TrainSpec(val_fraction=0.5, test_fraction=0.6)


def _sklearn_problem(n_classes, n=400, h=10, seed=0):
    """Standardised anisotropic features with a linear label (binary) or a label that shifts
    one feature (three classes)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, h)) @ rng.normal(size=(h, h))     # correlated features
    if n_classes == 2:
        y = (x @ rng.normal(size=h) + 2 * rng.normal(size=n) > 0).astype(np.int32)
    else:
        y = rng.integers(0, 3, n).astype(np.int32)
        x[:, 0] += 1.5 * y
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32), y


@pytest.mark.parametrize("n_classes", [2, 3])
def test_lbfgs_fits_sklearn_l2_optimum(n_classes):
    """L-BFGS without early stopping reaches scikit-learn's LogisticRegression(C) optimum
    (float64, tol 1e-10): l2 = 2 / (C n) with two classes, 1 / (C n) with more."""
    from sklearn.linear_model import LogisticRegression
    x, y = _sklearn_problem(n_classes)
    n, c = len(y), 0.3
    spec = P.TrainSpec(optimizer="lbfgs", early_stopping=False, tol=1e-6, max_steps=300,
                       l2=(2.0 if n_classes == 2 else 1.0) / (c * n))
    one = jax.jit(train_probe, static_argnames=("spec", "probe", "kind", "n_out"))
    params, steps, _ = one(jnp.asarray(x), jnp.asarray(y), jnp.asarray(n), jnp.asarray(x[:5]),
                           jnp.asarray(y[:5]), jax.random.PRNGKey(0), spec=spec,
                           probe="linear", kind="classification", n_out=n_classes)
    w, b = np.asarray(params[0]["w"], np.float64), np.asarray(params[0]["b"], np.float64)
    sk = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x.astype(np.float64), y)
    if n_classes == 2:     # one weight vector d in scikit-learn; columns -d/2, d/2 here
        w, b = (w[:, 1] - w[:, 0])[None], np.array([b[1] - b[0]])
    else:                  # softmax biases are defined up to a constant
        b, sk_b = b - b.mean(), sk.intercept_ - sk.intercept_.mean()
    scale = np.abs(sk.coef_).max()
    assert int(steps) < 100
    np.testing.assert_allclose(w.T if n_classes > 2 else w, sk.coef_, atol=1e-4 * scale)
    np.testing.assert_allclose(b, sk.intercept_ if n_classes == 2 else sk_b, atol=1e-4 * scale)


def test_lbfgs_probe_matches_sklearn_accuracy_per_layer():
    """fit() with L-BFGS and scikit-learn's penalty gives scikit-learn's held-out predictions
    on every layer (same split, same standardisation)."""
    from sklearn.linear_model import LogisticRegression
    from jaxattr.probing import data
    x, y = one_layer_data(n=1200, layers=3, h=12, at=1)
    x[:, 1] += 0.7 * np.random.default_rng(5).normal(size=(1200, 12)).astype(np.float32)
    base = P.TrainSpec()
    order, (n_tr, n_val, _) = data.split_order(len(y), val_fraction=base.val_fraction,
                                                test_fraction=base.test_fraction, seed=0)
    res = P.fit(x, y, spec=P.TrainSpec(optimizer="lbfgs", early_stopping=False, l2=2.0 / n_tr))
    tr, te = order[:n_tr], order[n_tr + n_val:]
    for layer in range(3):
        xl = x[:, layer].astype(np.float64)
        xs = (xl - xl[tr].mean(0)) / xl[tr].std(0)
        acc = LogisticRegression(C=1.0, tol=1e-8).fit(xs[tr], y[tr]).score(xs[te], y[te])
        assert abs(res.accuracy[layer] - acc) <= 1.0 / len(te) + 1e-9, (layer, res.accuracy, acc)


def test_aligned_features_are_read_in_place_with_the_same_result():
    """A 64-byte aligned C-contiguous array reaches the probe program without a copy (the
    device buffer is the caller's memory); an unaligned or reordered input is copied; both
    give the same probes."""
    from jaxattr.probing import data
    from jaxattr.probing.fit import _device_features
    for shape in [(7,), (3, 5, 11), (1000, 3, 24)]:
        assert data.aligned_empty(shape).ctypes.data % data.ALIGNMENT == 0
    x, y = one_layer_data(n=600, layers=3, h=8, at=1)
    xa = data.aligned_empty(x.shape)
    xa[...] = x
    xu = np.empty(x.nbytes + 4, np.uint8)[4:4 + x.nbytes].view(np.float32).reshape(x.shape)
    xu[...] = x                                   # 4 bytes past an allocation: unaligned
    order = np.random.default_rng(0).permutation(len(y))
    feats, _ = _device_features(data.stack_features(xa)[0], order)
    assert feats.unsafe_buffer_pointer() == xa.ctypes.data
    feats, _ = _device_features(data.stack_features(xu)[0], order)
    assert feats.unsafe_buffer_pointer() != xu.ctypes.data
    np.testing.assert_array_equal(np.asarray(feats), x)
    spec = P.TrainSpec(optimizer="lbfgs", early_stopping=False, l2=1e-3)
    a, u = P.fit(xa, y, spec=spec), P.fit(xu, y, spec=spec)
    np.testing.assert_array_equal(a.accuracy, u.accuracy)
    np.testing.assert_array_equal(a.steps, u.steps)
    np.testing.assert_array_equal(xa, x)          # only read
