"""Cached neighbour lists of a vocabulary's embeddings (for discretized integrated gradients).

The k-nearest-neighbour graph of a vocabulary depends only on its embedding table and ``k``;
it is computed on the device (:func:`jaxattr.methods.monotonic_paths.knn_graph`) once and
kept in memory, keyed by a SHA-256 of the table's bytes, shape, dtype and the options. With a
cache directory it is also stored as a plain ``.npz`` (no pickle: loaded with
``allow_pickle=False``, written atomically), so another process skips the computation.
Inseq pickles a scikit-learn graph under a name made of the model's name only.

Cache directory: ``$JAXATTR_CACHE_DIR/dig_knn`` when that variable is set (empty or ``0``:
none), else ``~/.cache/jaxattr/dig_knn`` once :func:`jaxattr.enable_compilation_cache` has
been called (the CLI calls it); otherwise memory only.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Optional

import jax
import numpy as np

from .xla_safety import safe_jit
from . import _cache
from .methods.monotonic_paths import knn_graph

__all__ = ["cached_knn_graph", "knn_cache_dir", "table_digest"]

_FORMAT = 1  # bump when knn_graph's output changes
_MEMORY: dict = {}  # digest -> indices, the most recent _MEMORY_SIZE tables
_MEMORY_SIZE = 4
_knn_jit = safe_jit(knn_graph, static_argnames=("n_neighbors", "row_batch", "refine"))


def knn_cache_dir() -> Optional[str]:
    """Where neighbour lists are stored on disk (``None``: memory only)."""
    value = os.environ.get("JAXATTR_CACHE_DIR")
    if value is not None:
        return None if value.strip() in ("", "0") else os.path.join(value, "dig_knn")
    if _cache._DONE:
        base = _cache.cache_dir()
        return None if base is None else os.path.join(os.path.dirname(base), "dig_knn")
    return None


def table_digest(table: np.ndarray, **options) -> str:
    """SHA-256 hex digest of ``table``'s bytes, shape, dtype and ``options``."""
    h = hashlib.sha256()
    h.update(f"knn-v{_FORMAT}|{table.shape}|{table.dtype.str}|{sorted(options.items())}"
             .encode())
    h.update(np.ascontiguousarray(table).tobytes())
    return h.hexdigest()


def cached_knn_graph(vocabulary, n_neighbors: int = 50, *,
                     cache_dir: Optional[str] = "auto") -> jax.Array:
    """Neighbour lists ``int32 [V, n_neighbors]`` (nearest first) of ``vocabulary[V, H]``.

    ``cache_dir="auto"``: :func:`knn_cache_dir`; ``None``: memory only; a path: that
    directory. A file that does not match the expected shape is recomputed and replaced.
    """
    table = np.asarray(jax.device_get(vocabulary))
    key = table_digest(table, n_neighbors=int(n_neighbors))
    hit = _MEMORY.get(key)
    if hit is not None:
        return hit
    directory = knn_cache_dir() if cache_dir == "auto" else cache_dir
    path = os.path.join(directory, f"{key}.npz") if directory else None
    expected = (table.shape[0], int(n_neighbors))
    indices = None
    if path and os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                if z["indices"].shape == expected and z["indices"].dtype == np.int32:
                    indices = z["indices"]
        except (OSError, ValueError, KeyError):
            indices = None
    if indices is None:
        indices = np.asarray(_knn_jit(table, n_neighbors=int(n_neighbors))[0])
        if path:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, indices=indices)
            os.replace(tmp, path)
    out = jax.numpy.asarray(indices)
    _MEMORY[key] = out
    while len(_MEMORY) > _MEMORY_SIZE:
        _MEMORY.pop(next(iter(_MEMORY)))
    return out
