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
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ..xla_safety import safe_jit
from .spec import TrainSpec

__all__ = ["init_probe", "dense", "apply_probe", "standardize", "probe_loss", "objective", "train_probe",
           "predict", "run_probes", "minimize_lbfgs", "lbfgs_init", "lbfgs_step", "preconditioner", "precondition",
           "PRECONDITION_ROWS", "KINDS", "PROBES"]

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


@jax.custom_vjp
def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [N, a] @ w [a, b]``, whose weight gradient is computed as ``(g^T x)^T`` rather than
    ``x^T g``: the same numbers, but XLA's CPU matmul contracts the long row axis of
    row-major ``x`` several times faster this way (a probe's training is mostly these
    passes over the features)."""
    return x @ w


def _dense_fwd(x, w):
    return x @ w, (x, w)


def _dense_bwd(res, g):
    x, w = res
    # the barrier keeps XLA from folding the transpose back into the slow form
    return g @ w.T, jax.lax.optimization_barrier(jnp.einsum("nb,na->ba", g, x)).T


dense.defvjp(_dense_fwd, _dense_bwd)


def apply_probe(params: list, x: jax.Array) -> jax.Array:
    """``x [N, H] -> [N, n_out]`` (ReLU between layers)."""
    for i, layer in enumerate(params):
        x = dense(x, layer["w"]) + layer["b"]
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


#: Training rows used to estimate the L-BFGS preconditioner (:func:`preconditioner`).
PRECONDITION_ROWS = 4096


def preconditioner(x_train: jax.Array, *, rows: int = PRECONDITION_ROWS,
                   ridge: float = 1e-3) -> tuple:
    """``(L, L^{-T})``: the lower Cholesky factor ``L [H, H]`` of ``x^T x / m + ridge * I`` over
    the first ``m = min(rows, N)`` rows of standardised training features ``x_train [N, H]``,
    and the inverse of its transpose.

    L-BFGS on a linear (or MLP) probe optimises ``u = L^T w`` instead of the first layer's
    weights ``w`` (:func:`precondition`): the objective is the same function of ``w`` (the same
    optimum, penalty included), but in ``u`` the features look whitened, so on anisotropic
    states it needs a fraction of the passes. The factor is an estimate from a subset of rows:
    a preconditioner need not be exact."""
    xs = x_train[:min(int(rows), x_train.shape[0])]
    gram = xs.T @ xs / xs.shape[0]
    eye = jnp.eye(gram.shape[0], dtype=gram.dtype)
    chol = jnp.linalg.cholesky(gram + ridge * eye)
    return chol, jax.scipy.linalg.solve_triangular(chol, eye, lower=True, trans="T")


def precondition(params: list, pre: Optional[tuple], *, inverse: bool = False,
                 grad: bool = False) -> list:
    """Map the first layer's weights of a probe from ``u`` (optimised) to ``w = L^{-T} u``;
    ``inverse=True``: ``u = L^T w``; ``grad=True``: the gradient in ``u`` of ``f(L^{-T} u)`` to
    the gradient of ``f`` in ``w`` (``L`` times it). ``pre = (L, L^{-T})`` comes from
    :func:`preconditioner`; ``pre=None`` is the identity."""
    if pre is None:
        return params
    chol, inv_t = pre
    w = params[0]["w"]
    w = chol.T @ w if inverse else (chol @ w if grad else inv_t @ w)
    return [{**params[0], "w": w}] + list(params[1:])


def lbfgs_init(fun: Callable, params, *, memory_size: int = 10) -> dict:
    """State of :func:`lbfgs_step` at ``params`` (one evaluation of ``fun`` and its
    gradient). Parameters are handled as one flat vector."""
    flat, unravel = ravel_pytree(params)
    value, grad = jax.value_and_grad(lambda v: fun(unravel(v)))(flat)
    d = flat.shape[0]
    return dict(x=flat, f=value, g=grad, dir=-grad,
                alpha=jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.linalg.norm(grad), 1e-12)),
                s=jnp.zeros((memory_size, d), flat.dtype), y=jnp.zeros((memory_size, d), flat.dtype),
                rho=jnp.zeros((memory_size,), flat.dtype), k=jnp.int32(0),
                failed=jnp.bool_(False))


def _two_loop(g, s, y, rho, k):
    """``-H g`` by the L-BFGS two-loop recursion over the ``min(k, m)`` stored pairs (ring
    buffer, newest at ``(k - 1) % m``), scaled by ``s·y / y·y`` of the newest pair."""
    m = s.shape[0]
    n = jnp.minimum(k, m)

    def back(i, carry):
        q, a = carry
        j = (k - 1 - i) % m
        ai = jnp.where(i < n, rho[j] * jnp.dot(s[j], q), 0.0)
        return q - ai * y[j], a.at[j].set(ai)

    q, a = jax.lax.fori_loop(0, m, back, (g, jnp.zeros((m,), g.dtype)))
    j = (k - 1) % m
    gamma = jnp.where(k > 0, jnp.dot(s[j], y[j]) / jnp.maximum(jnp.dot(y[j], y[j]), 1e-30), 1.0)
    r = gamma * q

    def fwd(i, r):
        j = (k - n + i) % m
        b = rho[j] * jnp.dot(y[j], r)
        return r + jnp.where(i < n, a[j] - b, 0.0) * s[j]

    return -jax.lax.fori_loop(0, m, fwd, r)


def lbfgs_step(fun: Callable, unravel: Callable, st: dict, *, c1: float = 1e-4) -> dict:
    """One evaluation of L-BFGS with a backtracking (Armijo) line search: try
    ``x + alpha * dir``; if the value does not rise above the Armijo bound, take the step,
    store the curvature pair (when ``s·y > 0``) and form the next direction with step 1;
    otherwise halve ``alpha``. Each call evaluates ``fun`` and its gradient once, with no
    data-dependent branches, so lanes of a ``vmap`` advance independently at one pass each."""
    x_try = st["x"] + st["alpha"] * st["dir"]
    f_try, g_try = jax.value_and_grad(lambda v: fun(unravel(v)))(x_try)
    slope = jnp.dot(st["g"], st["dir"])
    armijo = f_try <= st["f"] + c1 * st["alpha"] * slope
    # near the optimum float32 values stop resolving the decrease: accept a step whose
    # value is within rounding and whose slope along the line shows it did not overshoot
    # (Hager & Zhang's approximate Wolfe condition)
    approx = ((f_try <= st["f"] + 1e-6 * jnp.abs(st["f"]))
              & (jnp.dot(g_try, st["dir"]) <= -0.8 * slope) & (slope < 0))
    ok = jnp.isfinite(f_try) & ((armijo & (f_try < st["f"])) | approx)
    sv, yv = x_try - st["x"], g_try - st["g"]
    sy = jnp.dot(sv, yv)
    store = ok & (sy > 1e-10 * jnp.dot(yv, yv))
    m = st["s"].shape[0]
    j = st["k"] % m
    s_mem = jnp.where(store, st["s"].at[j].set(sv), st["s"])
    y_mem = jnp.where(store, st["y"].at[j].set(yv), st["y"])
    rho = jnp.where(store, st["rho"].at[j].set(1.0 / jnp.where(store, sy, 1.0)), st["rho"])
    k = st["k"] + store.astype(jnp.int32)
    x = jnp.where(ok, x_try, st["x"])
    f = jnp.where(ok, f_try, st["f"])
    g = jnp.where(ok, g_try, st["g"])
    new_dir = _two_loop(g, s_mem, y_mem, rho, k)
    descent = jnp.dot(new_dir, g) < 0            # else restart from steepest descent
    new_dir = jnp.where(descent, new_dir, -g)
    alpha = st["alpha"] * 0.5
    return dict(x=x, f=f, g=g, dir=jnp.where(ok, new_dir, st["dir"]),
                alpha=jnp.where(ok, 1.0, alpha), s=s_mem, y=y_mem, rho=rho, k=k,
                failed=~ok & (alpha < 1e-10))


def minimize_lbfgs(fun: Callable, params, *, tol: float, max_steps: int,
                   memory_size: int = 10, grad_map: Optional[Callable] = None):
    """Minimise ``fun(params) -> scalar`` with L-BFGS (:func:`lbfgs_step`) to a stationary
    point: stop when the largest absolute entry of the gradient is at most ``tol``
    (scikit-learn's ``lbfgs`` criterion), when the line search cannot lower the value any
    more (the float32 floor), or after ``max_steps`` evaluations. Under ``vmap`` every lane
    stops on its own criterion (a finished lane is frozen while the others run).
    ``grad_map`` maps the gradient (a pytree like ``params``) to the one whose entries are
    compared with ``tol`` (e.g. back to the original parameters of a preconditioned problem).

    Returns ``(params, evaluations)``."""
    _, unravel = ravel_pytree(params)

    grad_map = grad_map or (lambda g: g)

    def cond(c):
        st, i = c
        gmax = jnp.max(jnp.stack([jnp.max(jnp.abs(a))
                                  for a in jax.tree.leaves(grad_map(unravel(st["g"])))]))
        return (i < max_steps) & (gmax > tol) & ~st["failed"]

    def body(c):
        st, i = c
        return lbfgs_step(fun, unravel, st), i + 1

    st, steps = jax.lax.while_loop(cond, body, (lbfgs_init(fun, params,
                                                           memory_size=memory_size),
                                                jnp.int32(0)))
    return unravel(st["x"]), steps


def train_probe(x_train: jax.Array, y_train: jax.Array, n_rows: jax.Array,
                x_val: jax.Array, y_val: jax.Array, key: jax.Array, *, spec: TrainSpec,
                probe: str, kind: str, n_out: int, precond: Optional[jax.Array] = None):
    """Train one probe on the first ``n_rows`` rows of ``x_train [N_tr, H]``.

    ``precond``: for L-BFGS, the :func:`preconditioner` of the features (default: computed
    here from ``x_train``); AdamW ignores it.

    L-BFGS without early stopping runs to the optimum of the objective
    (:func:`minimize_lbfgs`, ``spec.tol``). Otherwise, every ``spec.eval_every`` steps (AdamW
    on the full batch or on ``spec.batch_size`` rows drawn per step; or L-BFGS evaluations,
    :func:`lbfgs_step`) the run checks a monitored loss: with
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
    full = functools.partial(objective, x=x_train, y=y_train, w=w, kind=kind, l2=spec.l2)
    if spec.optimizer == "lbfgs":
        pre = preconditioner(x_train) if precond is None else precond
        in_u = functools.partial(precondition, pre=pre)      # u -> w
        full_u = lambda u: full(in_u(u))                     # noqa: E731
        u0 = precondition(params, pre, inverse=True)
        if not spec.early_stopping:
            u, steps = minimize_lbfgs(full_u, u0, tol=spec.tol, max_steps=spec.max_steps,
                                      grad_map=functools.partial(precondition, pre=pre,
                                                                 grad=True))
            params = in_u(u)
            return params, steps, full(params)
        _, unravel_u = ravel_pytree(u0)
        unravel = lambda v: in_u(unravel_u(v))              # noqa: E731
        opt_init = lambda p: lbfgs_init(full_u, u0)          # noqa: E731
    else:
        opt = optax.adamw(spec.learning_rate, weight_decay=spec.weight_decay)
        opt_init = opt.init
    w_val = jnp.ones((x_val.shape[0],), jnp.float32)
    grad_fn = jax.grad(objective)

    def step(i, carry):
        p, s, start = carry
        if spec.optimizer == "lbfgs":
            s = lbfgs_step(full_u, unravel_u, s)
            return unravel(s["x"]), s, start
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

    init = dict(params=params, opt=opt_init(params), best=params, step=jnp.int32(0),
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


@functools.partial(safe_jit, static_argnames=("n_train", "n_val", "spec", "probe", "kind",
                                             "n_out"))
def run_probes(features: jax.Array, labels: jax.Array, task: jax.Array, n_rows: jax.Array,
               keys: jax.Array, *, n_train: int, n_val: int, spec: TrainSpec, probe: str,
               kind: str, n_out: int, order: Optional[jax.Array] = None):
    """Every probe of a run in one program.

    Args:
      features: ``[G, N, H]`` (G layers or sites), rows ordered train | validation | test.
      labels: ``[T, N]`` one row per label set (the task, the control task); ``int32``
        classes or ``float32`` values.
      task, n_rows, keys: one entry per job ``J`` trained on every layer: the label set
        ``task [J]``, the training prefix ``n_rows [J]`` (``n_train``, or an MDL block) and the
        initialisation key ``keys [J, 2]`` (the seed).
      n_train, n_val: sizes of the training and validation splits.
      order: ``[N]`` or ``None``. When given, ``features`` is ``[N, G, H]`` in the caller's row
        order and row ``order[i]`` becomes row ``i`` (the split order) inside the program, so
        the reordering, the transposition and the standardisation are one pass over memory.

    Returns:
      ``(prediction [G, J, N], log-probability of the label [G, J, N], steps [G, J])`` over
      all rows, after standardising each layer with its training rows' statistics.
    """
    def layer(x):
        x = standardize(x, n_train, whiten=spec.whiten)
        x_tr, x_val = x[:n_train], x[n_train:n_train + n_val]
        pre = preconditioner(x_tr) if spec.optimizer == "lbfgs" else None

        def job(t, n, key):
            y = labels[t]
            params, steps, _ = train_probe(x_tr, y[:n_train], n, x_val,
                                           y[n_train:n_train + n_val], key, spec=spec,
                                           probe=probe, kind=kind, n_out=n_out, precond=pre)
            pred, logp = predict(params, x, y, kind)
            return pred, logp, steps
        return jax.vmap(job)(task, n_rows, keys)

    if order is not None:
        features = jnp.take(features, order, axis=0).transpose(1, 0, 2)
    if spec.layer_batch is None:
        return jax.vmap(layer)(features)
    return jax.lax.map(layer, features, batch_size=spec.layer_batch)
