"""Saving and loading tuned lenses and training states, without pickle.

A lens is a ``.safetensors`` file (tensors ``weight`` ``[n_layers, H, H]`` and ``bias``
``[n_layers, H]``, string metadata such as the model name and the step). A training state
(lens, optimiser state, step) is a ``.msgpack`` file written with
``flax.serialization``; it is restored into the structure of a fresh state of the same
optimiser, so resuming needs the same optimiser settings.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import jax
import numpy as np
from flax import serialization

from ..npz_store import atomic_write
from .tuned import TunedLens

__all__ = ["save_lens", "load_lens", "lens_metadata", "save_state", "load_state"]

PathLike = Union[str, os.PathLike]


def save_lens(path: PathLike, lens: TunedLens, *, metadata: Optional[dict] = None) -> str:
    """Write ``lens`` as safetensors; ``metadata`` values are stored as strings.
    Returns the path."""
    from safetensors.numpy import save
    tensors = {"weight": np.asarray(jax.device_get(lens.weight)),
               "bias": np.asarray(jax.device_get(lens.bias))}
    meta = {"format": "jaxattr.TunedLens", "n_layers": str(lens.n_layers),
            "hidden": str(lens.hidden)}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    atomic_write(path, save(tensors, metadata=meta))
    return os.fspath(path)


def lens_metadata(path: PathLike) -> dict:
    """The string metadata stored with a lens file."""
    from safetensors import safe_open
    with safe_open(os.fspath(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def load_lens(path: PathLike, *, expect: Optional[tuple] = None) -> TunedLens:
    """Read a lens written by :func:`save_lens`.

    Args:
      expect: ``(n_layers, hidden)`` of the model it will read; a mismatch raises.
    """
    from safetensors.numpy import load_file
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tuned-lens file at {path!r}.")
    tensors = load_file(path)
    if set(tensors) != {"weight", "bias"}:
        raise ValueError(f"{path!r} is not a tuned-lens file: it holds tensors "
                         f"{sorted(tensors)}, expected 'weight' and 'bias'.")
    lens = TunedLens(weight=jax.numpy.asarray(tensors["weight"]),
                     bias=jax.numpy.asarray(tensors["bias"]))
    if expect is not None and (lens.n_layers, lens.hidden) != tuple(expect):
        raise ValueError(f"the lens in {path!r} has {lens.n_layers} layers of width "
                         f"{lens.hidden}; this model needs {expect[0]} layers of width "
                         f"{expect[1]}. Train a lens for this model.")
    return lens


def save_state(path: PathLike, state) -> str:
    """Write a :class:`~jaxattr.lens.train.TrainState` as msgpack. Returns the path."""
    atomic_write(path, serialization.to_bytes(jax.device_get(state)))
    return os.fspath(path)


def load_state(path: PathLike, template):
    """Restore a training state written by :func:`save_state` into the structure of
    ``template`` (a fresh state of the same lens shape and optimiser)."""
    with open(path, "rb") as f:
        data = f.read()
    problem = None
    try:
        state = serialization.from_bytes(template, data)
    except (ValueError, KeyError, TypeError) as e:
        problem = str(e)
    else:
        want = [np.shape(x) for x in jax.tree.leaves(template)]
        got = [np.shape(x) for x in jax.tree.leaves(state)]
        if jax.tree.structure(state) != jax.tree.structure(template) or want != got:
            problem = f"array shapes {got} where {want} were expected"
    if problem is not None:
        raise ValueError(f"the training state in {os.fspath(path)!r} does not match this "
                         f"lens and optimiser ({problem}); resume with the same model and "
                         "optimiser settings, or start a new checkpoint directory.")
    return state
