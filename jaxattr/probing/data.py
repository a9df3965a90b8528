"""Checking and arranging a probing data set: features to ``[G, N, H]``, labels to classes or
values, the random split, and Hewitt & Liang's control-task labels."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from ..encoding import InputError

__all__ = ["stack_features", "encode_labels", "split_order", "control_labels", "aligned_empty",
           "ALIGNMENT"]

#: Byte alignment at which JAX's CPU backend uses a NumPy array's memory in place
#: (``jax.device_put`` of a C-contiguous array whose data address is a multiple of it makes
#: no copy); NumPy's own allocations of large arrays are only 16-byte aligned.
ALIGNMENT = 64


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts at a multiple of
    :data:`ALIGNMENT` bytes, so that JAX on CPU reads it without copying it (for the
    ``[10k, 13, 768]`` features of a GPT-2-sized probe that saves copying 381 MiB, ~0.3 s).
    ``.npy`` files opened with ``mmap_mode`` are aligned the same way."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def stack_features(features, layer_names: Optional[Sequence[str]] = None):
    """``features`` as one ``float32`` array ``[G, N, H]`` and its ``G`` layer names.

    Accepts ``[N, G, H]`` (layers on axis 1), ``[N, H]`` (one layer) or a mapping
    ``{site: [N, H_site]}`` (widths may differ: narrower sites are zero-padded, which changes
    no probe since standardised constant features are 0). Raises :class:`InputError` for other
    shapes, unequal lengths, or NaN / infinite values.
    """
    if isinstance(features, Mapping):
        if not features:
            raise InputError("features is an empty mapping; give {site: [N, H]} arrays.")
        names = [str(k) for k in features]
        arrays = [np.asarray(v, np.float32) for v in features.values()]
        for name, a in zip(names, arrays):
            if a.ndim != 2:
                raise InputError(f"features[{name!r}] has shape {a.shape}; each site needs "
                                 f"[N, H] (one row per example).")
        ns = {a.shape[0] for a in arrays}
        if len(ns) != 1:
            raise InputError(f"features sites have different numbers of rows "
                             f"{dict(zip(names, [a.shape[0] for a in arrays]))}; every site "
                             f"needs one row per example.")
        h = max(a.shape[1] for a in arrays)
        x = aligned_empty((len(arrays), arrays[0].shape[0], h))
        for i, a in enumerate(arrays):
            x[i, :, :a.shape[1]] = a
            x[i, :, a.shape[1]:] = 0.0
        if layer_names is not None:
            raise InputError("layer_names is taken from the keys of a features mapping; "
                             "drop layer_names=.")
    else:
        a = np.asarray(features, np.float32)
        if a.ndim == 2:
            a = a[:, None, :]
        if a.ndim != 3:
            raise InputError(f"features has shape {a.shape}; give [N, n_layers, H], [N, H] or "
                             f"a mapping {{site: [N, H]}}.")
        x = a.transpose(1, 0, 2)      # a view: the caller's reordering copies it once
        names = ([str(i) for i in range(x.shape[0])] if layer_names is None
                 else [str(n) for n in layer_names])
        if len(names) != x.shape[0]:
            raise InputError(f"layer_names has {len(names)} names for {x.shape[0]} layers.")
    # a float64 sum of float32 values is finite exactly when every value is (no overflow is
    # possible), and it reads the features once without a boolean copy of them
    bad = ~np.isfinite(x.sum(axis=(1, 2), dtype=np.float64))
    if bad.any():
        which = [names[i] for i in np.flatnonzero(bad)]
        rows = int((~np.isfinite(x[bad])).any(-1).any(0).sum())
        raise InputError(f"features contain NaN or infinite values in layer(s) {which} "
                         f"({rows} example(s)); drop or repair those examples first.")
    return x, tuple(names)


def encode_labels(labels, n: int, kind: str):
    """``(values, classes, kind)``: class indices ``int32 [N]`` and the sorted class values
    (classification), or ``float32 [N]`` values and ``()`` (regression). ``kind="auto"``
    picks regression for floating-point labels, classification otherwise."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InputError(f"labels has shape {y.shape}; give one label per example, [N].")
    if y.shape[0] != n:
        raise InputError(f"labels has {y.shape[0]} entries but features have {n} examples; "
                         f"give one label per feature row.")
    if kind == "auto":
        kind = "regression" if y.dtype.kind == "f" else "classification"
    if kind not in ("classification", "regression"):
        raise InputError(f"task={kind!r}; choose 'auto', 'classification' or 'regression'.")
    if kind == "regression":
        v = y.astype(np.float64)
        if not np.isfinite(v).all():
            raise InputError(f"labels contain {int((~np.isfinite(v)).sum())} NaN or infinite "
                             f"value(s); a regression probe needs finite targets.")
        if np.ptp(v) == 0:
            raise InputError("labels are constant; a regression probe needs varying targets.")
        return v.astype(np.float32), (), kind
    classes, idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"labels have a single class ({classes[0]!r} for all {n} examples); a "
                         f"classifier needs at least two classes.")
    return idx.astype(np.int32), tuple(c.item() if hasattr(c, "item") else c
                                       for c in classes), kind


def split_order(n: int, *, val_fraction: float, test_fraction: float, seed: int):
    """A random permutation of ``n`` rows ordered train | validation | test, and the split
    sizes ``(n_train, n_val, n_test)``."""
    n_val = int(round(val_fraction * n))
    n_test = int(round(test_fraction * n))
    n_train = n - n_val - n_test
    if min(n_train, n_val, n_test) < 2:
        raise InputError(f"{n} examples are too few to split into train/validation/test "
                         f"({n_train}/{n_val}/{n_test}); give more examples.")
    order = np.random.default_rng(seed).permutation(n)
    return order, (n_train, n_val, n_test)


def control_labels(types, labels: np.ndarray, *, seed: int) -> np.ndarray:
    """Hewitt & Liang's control task: each distinct type gets one label drawn from the
    empirical distribution of ``labels``; every example takes its type's label.

    Args:
      types: ``[N]`` hashable type of each example (a word, a token id).
      labels: ``[N]`` encoded task labels.
    """
    t = np.asarray(types)
    if t.ndim != 1 or t.shape[0] != labels.shape[0]:
        raise InputError(f"types has shape {t.shape}; give one type per example ([N] with "
                         f"N = {labels.shape[0]}).")
    uniq, inv = np.unique(t, return_inverse=True)
    rng = np.random.default_rng(seed + 7919)
    per_type = rng.choice(labels, size=len(uniq), replace=True)
    return per_type[inv].astype(labels.dtype)
