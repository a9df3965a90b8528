"""The result of :func:`jaxattr.probing.fit`: per-layer scores as a frozen pytree, a table, a
figure, and save / load (plain JSON)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from flax import struct

from .. import views
from ..npz_store import ResultFileError, atomic_write, check_header

__all__ = ["ProbeResult", "load", "FORMAT", "FORMAT_VERSION"]

FORMAT = "jaxattr.probing"
FORMAT_VERSION = 1
_ARRAYS = ("accuracy", "accuracy_seeds", "ci_low", "ci_high", "control_accuracy",
           "selectivity", "online_codelength", "compression", "control_online_codelength",
           "control_compression", "steps")
_STATIC = ("layers", "kind", "probe", "metric", "classes", "control", "n_train", "n_val",
           "n_test", "seeds", "chance", "uniform_codelength", "spec")


@struct.dataclass
class ProbeResult:
    """Per-layer probing scores (``G`` layers or sites, ``S`` seeds).

    Arrays (numpy, ``float64``; ``None`` where not computed):

    - ``accuracy`` ``[G]``: held-out score averaged over seeds -- accuracy for
      classification, R² for regression (``metric`` says which);
    - ``accuracy_seeds`` ``[G, S]``; ``ci_low`` / ``ci_high`` ``[G]``: 95% interval (Wilson
      for accuracy, percentile bootstrap for R²);
    - ``control_accuracy`` ``[G]``: the same probe on the control task; ``selectivity``
      ``[G]`` = ``accuracy - control_accuracy`` (Hewitt & Liang, 2019);
    - ``online_codelength`` / ``compression`` ``[G]`` (``mdl=True``): online code length in
      bits and ``uniform_codelength / online_codelength`` (Voita & Titov, 2020), with
      ``control_online_codelength`` / ``control_compression`` for the control task;
    - ``steps`` ``[G]``: optimiser steps of the main probes before early stopping (mean over
      seeds).

    Static: ``layers`` (names), ``kind`` (``"classification"`` / ``"regression"``),
    ``probe``, ``metric``, ``classes``, ``control``, split sizes ``n_train`` / ``n_val`` /
    ``n_test``, ``seeds``, ``chance`` (majority-class share of the test split; 0 for R²),
    ``uniform_codelength`` (bits) and ``spec`` (the training options as ``(name, value)``
    pairs).
    """
    accuracy: np.ndarray
    accuracy_seeds: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    control_accuracy: Optional[np.ndarray]
    selectivity: Optional[np.ndarray]
    online_codelength: Optional[np.ndarray]
    compression: Optional[np.ndarray]
    control_online_codelength: Optional[np.ndarray]
    control_compression: Optional[np.ndarray]
    steps: np.ndarray
    layers: tuple = struct.field(pytree_node=False)
    kind: str = struct.field(pytree_node=False)
    probe: str = struct.field(pytree_node=False)
    metric: str = struct.field(pytree_node=False)
    classes: tuple = struct.field(pytree_node=False)
    control: Optional[str] = struct.field(pytree_node=False)
    n_train: int = struct.field(pytree_node=False)
    n_val: int = struct.field(pytree_node=False)
    n_test: int = struct.field(pytree_node=False)
    seeds: int = struct.field(pytree_node=False)
    chance: float = struct.field(pytree_node=False)
    uniform_codelength: Optional[float] = struct.field(pytree_node=False)
    spec: tuple = struct.field(pytree_node=False)

    @property
    def best_layer(self) -> str:
        """The layer with the highest held-out score."""
        return self.layers[int(np.argmax(self.accuracy))]

    def columns(self) -> dict:
        """The table as ``{column: [G] values}`` (layer names first; absent scores left out)."""
        cols = {"layer": list(self.layers), self.metric: self.accuracy,
                "ci_low": self.ci_low, "ci_high": self.ci_high}
        for name in ("control_accuracy", "selectivity", "online_codelength", "compression",
                     "control_compression"):
            v = getattr(self, name)
            if v is not None:
                cols["control_" + self.metric if name == "control_accuracy" else name] = v
        return cols

    def table(self, *, digits: int = 3) -> str:
        """A plain-text table, one row per layer."""
        return views.dispatch("probe_table", self, digits=digits)

    def to_dataframe(self):
        """The table as a ``pandas.DataFrame`` (needs pandas)."""
        import pandas as pd
        return pd.DataFrame(self.columns())

    def figure(self, **kwargs):
        """A matplotlib figure of score / control / selectivity (and compression) by layer
        (:func:`jaxattr.render.probing.probe_figure`)."""
        return views.dispatch("probe_figure", self, **kwargs)

    def __str__(self) -> str:
        return self.table()

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the result as JSON (exact round trip through :func:`load`)."""
        def enc(v):
            if v is None:
                return None
            a = np.asarray(v, np.float64)
            return {"shape": list(a.shape),
                    "data": [None if not np.isfinite(x) else float(x) for x in a.ravel()]}
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "arrays": {k: enc(getattr(self, k)) for k in _ARRAYS},
               "static": {k: getattr(self, k) for k in _STATIC}}
        doc["static"]["spec"] = [list(p) for p in self.spec]
        data = json.dumps(doc, indent=1).encode("utf-8")
        return atomic_write(path, data)


def _tuple(v):
    return tuple(_tuple(x) for x in v) if isinstance(v, list) else v


def load(path: Union[str, os.PathLike]) -> ProbeResult:
    """Read a :class:`ProbeResult` written by :meth:`ProbeResult.save`."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultFileError(f"{path} is not a JSON probing result: {e}") from None
    check_header(doc, path=path, format=FORMAT, version=FORMAT_VERSION, what="probing result")

    def dec(v):
        if v is None:
            return None
        return np.array([np.nan if x is None else x for x in v["data"]],
                        np.float64).reshape(v["shape"])
    static = dict(doc["static"])
    static["layers"] = tuple(static["layers"])
    static["classes"] = tuple(static["classes"])
    static["spec"] = tuple((k, _tuple(v)) for k, v in static["spec"])
    return ProbeResult(**{k: dec(doc["arrays"][k]) for k in _ARRAYS}, **static)
