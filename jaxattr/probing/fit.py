"""``fit``: probe every layer for a property, with control task and MDL, in one program."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..encoding import InputError
from . import data, scores
from .result import ProbeResult
from .spec import TrainSpec
from .train import PROBES, run_probes

__all__ = ["fit"]


def _device_features(x: np.ndarray, order: np.ndarray) -> tuple:
    """``(features, order)`` for :func:`run_probes`: the ``[N, G, H]`` array the caller gave
    (``x [G, N, H]`` is a view of it) with the split order, reordered inside the program
    (NumPy's fancy indexing of the strided view took ~1 s for 381 MiB); or, for a mapping
    input (already ``[G, N, H]`` and contiguous), the reordered array and ``None``.

    A C-contiguous float32 array at a 64-byte aligned address (:func:`.data.aligned_empty`,
    :meth:`Features.array`, a memory-mapped ``.npy``) becomes a JAX array without a copy; it
    is only read, and only while :func:`fit` runs."""
    rows_first = x.transpose(1, 0, 2)
    if rows_first.flags["C_CONTIGUOUS"]:
        return jax.device_put(rows_first), jnp.asarray(order)
    ordered = data.aligned_empty((x.shape[0], len(order)) + x.shape[2:], x.dtype)
    np.take(x, order, axis=1, out=ordered)
    return jax.device_put(ordered), None


def fit(features, labels, *, probe: str = "linear", control: Optional[str] = None,
        types: Optional[Sequence] = None, mdl: bool = False, seeds: int = 1,
        task: str = "auto", spec: TrainSpec = TrainSpec(),
        layer_names: Optional[Sequence[str]] = None) -> ProbeResult:
    """Train diagnostic classifiers (or regressors) on every layer and score them held out.

    Every layer × seed × (task, control) × MDL block is one job of a single jitted, vmapped
    training program (:func:`jaxattr.probing.train.run_probes`). Features are standardised
    with the training split's statistics; probes train with AdamW (full batch or minibatches) and stop early on
    a validation split; scores are on a test split.

    Args:
      features: ``[N, n_layers, H]``, ``[N, H]``, or a mapping ``{site: [N, H]}`` (e.g.
        :func:`jaxattr.probing.collect_features`); finite values.
      labels: ``[N]`` classes (any hashable values) or, for regression, floats.
      probe: ``"linear"`` or ``"mlp"`` (hidden widths ``spec.hidden``).
      control: ``None`` or ``"type"``: also train on Hewitt & Liang's control task, where every
        distinct ``types`` value gets a random label (drawn from the label distribution), and
        report ``control_accuracy`` and ``selectivity``.
      types: ``[N]`` type of each example (word, token id) for ``control="type"``.
      mdl: also compute the online code length and compression (classification only) over
        the blocks ``spec.mdl_fractions`` of the training split.
      seeds: initialisations per probe; scores are averaged over seeds.
      task: ``"auto"`` (float labels: regression; else classification),
        ``"classification"`` or ``"regression"`` (scored with R²).
      spec: training and split options (:class:`~jaxattr.probing.TrainSpec`).
      layer_names: names of the ``n_layers`` layers of an array input.

    Returns:
      A :class:`~jaxattr.probing.ProbeResult`.
    """
    if probe not in PROBES:
        raise InputError(f"probe={probe!r}; choose one of {PROBES}.")
    if control not in (None, "type"):
        raise InputError(f"control={control!r}; choose None or 'type' (a random label per "
                         f"word type, with types=).")
    if control == "type" and types is None:
        raise InputError("control='type' needs types= (one type per example: the word or "
                         "token id whose random label defines the control task).")
    if int(seeds) < 1:
        raise InputError(f"seeds={seeds}; give a positive number of initialisations.")
    seeds = int(seeds)
    x, names = data.stack_features(features, layer_names)
    n = x.shape[1]
    y, classes, kind = data.encode_labels(labels, n, task)
    if mdl and kind != "classification":
        raise InputError("mdl=True needs a classification task (the online code counts bits "
                         "of class labels); drop mdl for regression.")
    order, (n_train, n_val, n_test) = data.split_order(
        n, val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
        seed=spec.split_seed)
    label_sets = [y]
    if control == "type":
        label_sets.append(data.control_labels(types, y, seed=spec.split_seed))
    ys = np.stack(label_sets)[:, order]
    if kind == "regression":     # standardise targets with the training rows' statistics
        mu = ys[:, :n_train].mean(1, keepdims=True)
        sd = ys[:, :n_train].std(1, keepdims=True)
        ys = (ys - mu) / np.where(sd > 0, sd, 1.0)
    ends = scores.block_ends(n_train, spec.mdl_fractions) if mdl else [n_train]
    # jobs: label set t, seed s, training prefix (the full split, then MDL prefixes)
    prefixes = [n_train] + ends[:-1]
    jobs = [(t, s, p) for t in range(len(label_sets)) for s in range(seeds) for p in prefixes]
    root = jax.random.PRNGKey(spec.split_seed)
    keys = jnp.stack([jax.random.fold_in(root, s) for _, s, _ in jobs])
    n_out = len(classes) if kind == "classification" else 1
    feats, in_program_order = _device_features(x, order)
    pred, logp, steps = run_probes(
        feats, jnp.asarray(ys), jnp.asarray([t for t, _, _ in jobs]),
        jnp.asarray([p for _, _, p in jobs]), keys, n_train=n_train, n_val=n_val,
        spec=spec, probe=probe, kind=kind, n_out=n_out, order=in_program_order)
    pred, logp, steps = (np.asarray(a) for a in (pred, logp, steps))
    n_pre = len(prefixes)
    shape = (len(names), len(label_sets), seeds, n_pre)
    pred = pred.reshape(shape + (n,))
    logp = logp.reshape(shape + (n,))
    steps = steps.reshape(shape)
    test = slice(n_train + n_val, n)
    y_test = ys[:, test]                                            # [T, n_test]

    def score(t):
        p = pred[:, t, :, 0, test]                                  # [G, S, n_test]
        if kind == "classification":
            return (p == y_test[t]).mean(-1)
        return scores.r2_score(y_test[t].astype(np.float64), p.astype(np.float64))
    acc_seeds = score(0)
    acc = acc_seeds.mean(-1)
    if kind == "classification":
        lo, hi = scores.wilson_interval(acc, n_test)
        chance = float(np.bincount(y_test[0].astype(np.int64)).max() / n_test)
        metric = "accuracy"
    else:
        lo, hi = scores.r2_interval(y_test[0].astype(np.float64),
                                    pred[:, 0, :, 0, test].astype(np.float64))
        chance, metric = 0.0, "r2"
    ctrl = score(1).mean(-1) if control else None
    codelen = comp = ctrl_codelen = ctrl_comp = uniform = None
    if mdl:
        train_logp = logp[..., 1:, :n_train]                        # [G, T, S, n_pre-1, n_tr]
        lengths = scores.online_codelength(train_logp, ends, n_out).mean(2)   # [G, T]
        uniform = float(n_train * np.log2(n_out))
        codelen, comp = lengths[:, 0], uniform / lengths[:, 0]
        if control:
            ctrl_codelen, ctrl_comp = lengths[:, 1], uniform / lengths[:, 1]
    return ProbeResult(
        accuracy=acc, accuracy_seeds=acc_seeds, ci_low=np.asarray(lo), ci_high=np.asarray(hi),
        control_accuracy=ctrl, selectivity=None if ctrl is None else acc - ctrl,
        online_codelength=codelen, compression=comp, control_online_codelength=ctrl_codelen,
        control_compression=ctrl_comp, steps=steps[:, 0, :, 0].mean(-1).astype(np.float64),
        layers=names, kind=kind, probe=probe, metric=metric, classes=classes,
        control=control, n_train=n_train, n_val=n_val, n_test=n_test, seeds=seeds,
        chance=chance, uniform_codelength=uniform,
        spec=tuple(dataclasses.asdict(spec).items()))
