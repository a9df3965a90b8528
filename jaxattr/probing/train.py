"""The training program: one probe (:func:`train_probe`), and every probe of a run — all
layers × seeds × (task, control) × MDL blocks — in one jitted, vmapped program
(:func:`run_probes`).

Rows are ordered ``[train | validation | test]`` by the caller; a probe trains on a prefix of
the training rows (all of them, or an MDL block), stops early on the validation rows, and is
evaluated on every row. Training is full-batch: each step sees the probe's whole training
prefix, so results do not depend on a batch order.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from .spec import TrainSpec

__all__ = ["init_probe", "apply_probe", "standardize", "probe_loss", "train_probe",
           "predict", "run_probes", "KINDS", "PROBES"]

KINDS = ("classification", "regression")
PROBES = ("linear", "mlp")


def init_probe(key: jax.Array, n_in: int, n_out: int, *, probe: str, hidden: tuple) -> list:
    """Parameters of a probe: a list of ``{"w": [a, b], "b": [b]}`` layers, LeCun-normal
    weights and zero biases. ``"linear"``: one layer ``n_in -> n_out``; ``"mlp"``:
    ``n_in -> *hidden -> n_out``."""
    sizes = (n_in, n_out) if probe == "linear" else (n_in, *hidden, n_out)
    params = []
    for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append({"w": jax.random.normal(k, (a, b), jnp.float32) / jnp.sqrt(a),
                       "b": jnp.zeros((b,), jnp.float32)})
    return params


def apply_probe(params: list, x: jax.Array) -> jax.Array:
    """``x [N, H] -> [N, n_out]`` (ReLU between layers)."""
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def standardize(x: jax.Array, n_rows: int) -> jax.Array:
    """Centre and scale each feature of ``x [N, H]`` by the mean and standard deviation of
    its first ``n_rows`` rows (the training split); constant features become 0."""
    ref = x[:n_rows]
    mu = ref.mean(0)
    sd = ref.std(0)
    return jnp.where(sd > 0, (x - mu) / jnp.where(sd > 0, sd, 1.0), 0.0)


def probe_loss(params: list, x: jax.Array, y: jax.Array, w: jax.Array, kind: str) -> jax.Array:
    """Weighted mean loss over rows (``w [N]``, 0 = unused): softmax cross-entropy with
    integer labels, or squared error for ``kind="regression"``."""
    out = apply_probe(params, x)
    if kind == "classification":
        per = optax.softmax_cross_entropy_with_integer_labels(out, y)
    else:
        per = (out[:, 0] - y) ** 2
    return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)


def train_probe(x_train: jax.Array, y_train: jax.Array, n_rows: jax.Array,
                x_val: jax.Array, y_val: jax.Array, key: jax.Array, *, spec: TrainSpec,
                probe: str, kind: str, n_out: int):
    """Train one probe with AdamW on the first ``n_rows`` rows of ``x_train [N_tr, H]``
    (full batch), evaluating the validation loss every ``spec.eval_every`` steps and stopping
    after ``spec.patience`` evaluations without improvement (or at ``spec.max_steps``).

    Returns ``(params, steps, best_val_loss)``: the parameters with the lowest validation loss.
    """
    params = init_probe(key, x_train.shape[1], n_out, probe=probe, hidden=spec.hidden)
    opt = optax.adamw(spec.learning_rate, weight_decay=spec.weight_decay)
    w = (jnp.arange(x_train.shape[0]) < n_rows).astype(jnp.float32)
    w_val = jnp.ones((x_val.shape[0],), jnp.float32)
    grad_fn = jax.grad(probe_loss)

    def step(_, carry):
        p, s = carry
        updates, s = opt.update(grad_fn(p, x_train, y_train, w, kind), s, p)
        return optax.apply_updates(p, updates), s

    def cond(c):
        return (~c["done"]) & (c["step"] < spec.max_steps)

    def body(c):
        p, s = jax.lax.fori_loop(0, spec.eval_every, step, (c["params"], c["opt"]))
        val = probe_loss(p, x_val, y_val, w_val, kind)
        better = val < c["best_loss"] - spec.min_delta
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, c["best"])
        bad = jnp.where(better, 0, c["bad"] + 1)
        return dict(params=p, opt=s, best=best, step=c["step"] + spec.eval_every,
                    best_loss=jnp.where(better, val, c["best_loss"]), bad=bad,
                    done=bad >= spec.patience)

    init = dict(params=params, opt=opt.init(params), best=params, step=jnp.int32(0),
                best_loss=probe_loss(params, x_val, y_val, w_val, kind), bad=jnp.int32(0),
                done=jnp.bool_(False))
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
        x = standardize(x, n_train)
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
