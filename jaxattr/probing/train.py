"""The training program: one probe (:func:`train_probe`), and every probe of a run — all
layers × seeds × (task, control) × MDL blocks — in one jitted, vmapped program
(:func:`run_probes`).

Rows are ordered ``[train | validation | test]`` by the caller; a probe trains on a prefix of
the training rows (all of them, or an MDL block), stops early on the validation rows, and is
evaluated on every row. By default each step sees the probe's whole training prefix (full
batch); with ``TrainSpec.batch_size`` each step draws that many of its rows.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from .spec import TrainSpec

__all__ = ["init_probe", "apply_probe", "standardize", "probe_loss", "objective", "train_probe",
           "predict", "run_probes", "KINDS", "PROBES"]

KINDS = ("classification", "regression")
PROBES = ("linear", "mlp")


def init_probe(key: jax.Array, n_in: int, n_out: int, *, probe: str, hidden: tuple) -> list:
    """Parameters of a probe: a list of ``{"w": [a, b], "b": [b]}`` layers. ``"linear"``:
    one layer ``n_in -> n_out``; ``"mlp"``: ``n_in -> *hidden -> n_out``. Hidden layers get
    LeCun-normal weights, the output layer zeros (so every probe starts from the uniform
    prediction and early stopping shrinks towards it, as an L2 penalty would); biases 0."""
    sizes = (n_in, n_out) if probe == "linear" else (n_in, *hidden, n_out)
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, (a, b)) in enumerate(zip(keys, zip(sizes[:-1], sizes[1:]))):
        w = (jnp.zeros((a, b), jnp.float32) if i == len(sizes) - 2
             else jax.random.normal(k, (a, b), jnp.float32) / jnp.sqrt(a))
        params.append({"w": w, "b": jnp.zeros((b,), jnp.float32)})
    return params


def apply_probe(params: list, x: jax.Array) -> jax.Array:
    """``x [N, H] -> [N, n_out]`` (ReLU between layers)."""
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def standardize(x: jax.Array, n_rows: int, *, whiten: bool = False) -> jax.Array:
    """Centre and scale each feature of ``x [N, H]`` by the mean and standard deviation of
    its first ``n_rows`` rows (the training split); constant features become 0.

    ``whiten=True`` then rotates onto the training rows' principal axes and scales each to
    unit variance (PCA whitening; directions with variance below ``1e-6`` of the largest are
    dropped). A linear probe can express the same functions either way; on anisotropic
    features whitened inputs make gradient training converge in far fewer steps."""
    ref = x[:n_rows]
    mu = ref.mean(0)
    sd = ref.std(0)
    z = jnp.where(sd > 0, (x - mu) / jnp.where(sd > 0, sd, 1.0), 0.0)
    if not whiten:
        return z
    zr = z[:n_rows]
    lam, vec = jnp.linalg.eigh(zr.T @ zr / n_rows)
    keep = lam > 1e-6 * lam[-1]
    return (z @ vec) * jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, lam, 1.0)), 0.0)


def probe_loss(params: list, x: jax.Array, y: jax.Array, w: jax.Array, kind: str) -> jax.Array:
    """Weighted mean loss over rows (``w [N]``, 0 = unused): softmax cross-entropy with
    integer labels, or squared error for ``kind="regression"``."""
    out = apply_probe(params, x)
    if kind == "classification":
        per = optax.softmax_cross_entropy_with_integer_labels(out, y)
    else:
        per = (out[:, 0] - y) ** 2
    return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)


def objective(params: list, x: jax.Array, y: jax.Array, w: jax.Array, kind: str,
              l2: float) -> jax.Array:
    """:func:`probe_loss` plus ``l2 / 2`` times the squared norm of the weights (not biases)."""
    loss = probe_loss(params, x, y, w, kind)
    if l2:
        loss = loss + 0.5 * l2 * sum(jnp.sum(layer["w"] ** 2) for layer in params)
    return loss


def _optimizer(spec: TrainSpec):
    if spec.optimizer == "lbfgs":
        return optax.lbfgs()
    return optax.adamw(spec.learning_rate, weight_decay=spec.weight_decay)


def train_probe(x_train: jax.Array, y_train: jax.Array, n_rows: jax.Array,
                x_val: jax.Array, y_val: jax.Array, key: jax.Array, *, spec: TrainSpec,
                probe: str, kind: str, n_out: int):
    """Train one probe on the first ``n_rows`` rows of ``x_train [N_tr, H]``.

    Every ``spec.eval_every`` steps (AdamW on the full batch or on ``spec.batch_size`` rows
    drawn per step; or L-BFGS on the full batch) the run checks a monitored loss: with
    ``spec.early_stopping`` the validation loss, keeping the parameters where it was lowest;
    otherwise the training objective, keeping the latest parameters (training to
    convergence). It stops after ``spec.patience`` checks without an improvement of more
    than ``spec.min_delta``, or at ``spec.max_steps``.

    Classifiers start from the zero function plus the (add-one smoothed) log prior of the
    training labels as output bias, so a probe that never beats it predicts the majority class.

    Returns ``(params, steps, monitored_loss)``.
    """
    k_init, k_data = jax.random.split(key)
    params = init_probe(k_init, x_train.shape[1], n_out, probe=probe, hidden=spec.hidden)
    w = (jnp.arange(x_train.shape[0]) < n_rows).astype(jnp.float32)
    if kind == "classification":    # start from the training prior: the chance-level guess
        counts = jnp.zeros((n_out,), jnp.float32).at[y_train].add(w)
        params[-1]["b"] = jnp.log((counts + 1.0) / (counts.sum() + n_out))
    opt = _optimizer(spec)
    w_val = jnp.ones((x_val.shape[0],), jnp.float32)
    full = functools.partial(objective, x=x_train, y=y_train, w=w, kind=kind, l2=spec.l2)
    grad_fn = jax.grad(objective)
    value_and_grad = optax.value_and_grad_from_state(full)

    def step(i, carry):
        p, s, start = carry
        if spec.optimizer == "lbfgs":
            value, g = value_and_grad(p, state=s)
            updates, s = opt.update(g, s, p, value=value, grad=g, value_fn=full)
            return optax.apply_updates(p, updates), s, start
        if spec.batch_size is None:
            g = grad_fn(p, x_train, y_train, w, kind, spec.l2)
        else:
            idx = jax.random.randint(jax.random.fold_in(k_data, start + i),
                                     (spec.batch_size,), 0, n_rows)
            g = grad_fn(p, x_train[idx], y_train[idx], jnp.ones((spec.batch_size,)), kind,
                        spec.l2)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, start

    def monitor(p):
        if spec.early_stopping:
            return probe_loss(p, x_val, y_val, w_val, kind)
        return full(p)

    def cond(c):
        return (~c["done"]) & (c["step"] < spec.max_steps)

    def body(c):
        p, s, _ = jax.lax.fori_loop(0, spec.eval_every, step,
                                    (c["params"], c["opt"], c["step"]))
        val = monitor(p)
        better = val < c["best_loss"] - spec.min_delta
        keep = better if spec.early_stopping else jnp.bool_(True)
        best = jax.tree.map(lambda a, b: jnp.where(keep, a, b), p, c["best"])
        bad = jnp.where(better, 0, c["bad"] + 1)
        return dict(params=p, opt=s, best=best, step=c["step"] + spec.eval_every,
                    best_loss=jnp.where(better, val, c["best_loss"]), bad=bad,
                    done=bad >= spec.patience)

    init = dict(params=params, opt=opt.init(params), best=params, step=jnp.int32(0),
                best_loss=monitor(params), bad=jnp.int32(0), done=jnp.bool_(False))
    out = jax.lax.while_loop(cond, body, init)
    return out["best"], out["step"], out["best_loss"]


def predict(params: list, x: jax.Array, y: jax.Array, kind: str):
    """``(prediction [N], log-probability of y [N])``: the arg-max class and the natural-log
    probability of label ``y`` (classification), or the predicted value and zeros
    (regression)."""
    out = apply_probe(params, x)
    if kind == "classification":
        logp = jax.nn.log_softmax(out, axis=-1)
        return (jnp.argmax(out, -1).astype(jnp.float32),
                jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0])
    return out[:, 0], jnp.zeros(out.shape[:1], jnp.float32)


@functools.partial(jax.jit, static_argnames=("n_train", "n_val", "spec", "probe", "kind",
                                             "n_out"))
def run_probes(features: jax.Array, labels: jax.Array, task: jax.Array, n_rows: jax.Array,
               keys: jax.Array, *, n_train: int, n_val: int, spec: TrainSpec, probe: str,
               kind: str, n_out: int):
    """Every probe of a run in one program.

    Args:
      features: ``[G, N, H]`` (G layers or sites), rows ordered train | validation | test.
      labels: ``[T, N]`` one row per label set (the task, the control task); ``int32``
        classes or ``float32`` values.
      task, n_rows, keys: one entry per job ``J`` trained on every layer: the label set
        ``task [J]``, the training prefix ``n_rows [J]`` (``n_train``, or an MDL block) and the
        initialisation key ``keys [J, 2]`` (the seed).
      n_train, n_val: sizes of the training and validation splits.

    Returns:
      ``(prediction [G, J, N], log-probability of the label [G, J, N], steps [G, J])`` over
      all rows, after standardising each layer with its training rows' statistics.
    """
    def layer(x):
        x = standardize(x, n_train, whiten=spec.whiten)
        x_tr, x_val = x[:n_train], x[n_train:n_train + n_val]

        def job(t, n, key):
            y = labels[t]
            params, steps, _ = train_probe(x_tr, y[:n_train], n, x_val,
                                           y[n_train:n_train + n_val], key, spec=spec,
                                           probe=probe, kind=kind, n_out=n_out)
            pred, logp = predict(params, x, y, kind)
            return pred, logp, steps
        return jax.vmap(job)(task, n_rows, keys)

    if spec.layer_batch is None:
        return jax.vmap(layer)(features)
    return jax.lax.map(layer, features, batch_size=spec.layer_batch)
