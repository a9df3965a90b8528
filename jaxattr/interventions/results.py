"""Results of the interventions: frozen containers of arrays (numpy, host side) with views and
an exact save / load (``.npz`` with a JSON header; no pickle)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from .. import views

__all__ = ["PatchingResult", "TraceResult", "TraceAverage", "MediationResult", "load_result"]


def _grid_text(*args, **kwargs) -> str:
    return views.resolve("grid_text", "an intervention result")(*args, **kwargs)


def _grid_html(*args, **kwargs) -> str:
    return views.resolve("grid_html", "an intervention result")(*args, **kwargs)


def _grid_figure(*args, **kwargs):
    return views.resolve("grid_figure", "an intervention result")(*args, **kwargs)


_FORMAT = "jaxattr.interventions"
_VERSION = 1


def _tokens_label(tokens, positions):
    return [f"{p}:{tokens[p]}" if p < len(tokens) else str(p) for p in positions]


class _Saved:
    """Save / load for frozen dataclasses whose fields are numpy arrays or JSON values."""

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write an ``.npz`` file (arrays + a JSON header; exact round trip with
        :func:`load_result`)."""
        arrays, meta = {}, {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                arrays[f.name] = v
            else:
                meta[f.name] = v
        header = {"format": _FORMAT, "format_version": _VERSION, "kind": type(self).__name__,
                  "meta": meta}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, __header__=np.array(json.dumps(header)), **arrays)
        os.replace(tmp, path)
        return path


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def load_result(path: Union[str, os.PathLike]):
    """Read a result written by ``.save(path)`` of any intervention result."""
    from ..io import ResultFileError
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ResultFileError(f"{path}: not an intervention result file ({e}).") from None
    if "__header__" not in arrays:
        raise ResultFileError(f"{path}: not an intervention result file (no header).")
    header = json.loads(str(arrays.pop("__header__")))
    if header.get("format") != _FORMAT:
        raise ResultFileError(f"{path}: holds {header.get('format')!r}, not {_FORMAT!r}.")
    if header.get("format_version", 0) > _VERSION:
        raise ResultFileError(f"{path}: format_version {header['format_version']} is newer "
                              f"than this jaxattr reads ({_VERSION}); upgrade jaxattr.")
    cls = {c.__name__: c for c in (PatchingResult, TraceResult, TraceAverage,
                                   MediationResult)}.get(header.get("kind"))
    if cls is None:
        raise ResultFileError(f"{path}: unknown result kind {header.get('kind')!r}.")
    meta = {k: (v if k == "info" else _tuplify(v)) for k, v in header["meta"].items()}
    return cls(**arrays, **meta)


@dataclasses.dataclass(frozen=True)
class PatchingResult(_Saved):
    """Activation patching over a grid of cells.

    Attributes:
      scores: ``[B, n_sites, n_positions]`` (``[..., heads]`` for head sites): the metric after
        patching each cell (estimated to first order by the attribution methods); NaN at
        positions past a pair's length.
      clean, corrupted: ``[B]`` the metric of the unpatched clean and corrupted runs.
      sites: site names (rows, in layer order); positions: patched positions (a single ``0``
        when all positions were patched together).
      clean_tokens, corrupted_tokens: token strings of each pair.
      info: method, direction, metric, model.
    """
    scores: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    sites: tuple
    positions: tuple
    clean_tokens: tuple
    corrupted_tokens: tuple
    info: dict

    def normalized(self) -> np.ndarray:
        """``(M − M_corr) / (M_clean − M_corr)``, same shape as ``scores``: 1 = clean behaviour,
        0 = corrupted behaviour."""
        shape = (-1,) + (1,) * (self.scores.ndim - 1)
        c = self.clean.astype(np.float64).reshape(shape)
        k = self.corrupted.astype(np.float64).reshape(shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            return ((self.scores - k) / (c - k)).astype(np.float32)

    def _grid(self, index, normalized):
        g = (self.normalized() if normalized else self.scores)[index]
        if g.ndim == 3:                             # heads: rows = site × head
            rows = [f"{s}.h{h}" for s in self.sites for h in range(g.shape[2])]
            g = g.transpose(0, 2, 1).reshape(len(rows), g.shape[1])
        else:
            rows = list(self.sites)
        pos = self.positions if self.info.get("positions") != "together" else ()
        cols = _tokens_label(self.clean_tokens[index], pos) if pos else ["all positions"]
        return g, rows, cols

    def to_text(self, index: int = 0, *, normalized: bool = True, digits: int = 2) -> str:
        """Terminal table of pair ``index`` (sites × positions)."""
        g, rows, cols = self._grid(index, normalized)
        title = (f"activation patching ({self.info.get('method')}, {self.info.get('direction')},"
                 f" {self.info.get('metric')}{', normalised' if normalized else ''}): clean "
                 f"{self.clean[index]:.4g}, corrupted {self.corrupted[index]:.4g}")
        return _grid_text(g, rows, cols, title=title, digits=digits)

    def to_html(self, index: int = 0, *, normalized: bool = True, **kwargs) -> str:
        """HTML heatmap of pair ``index``."""
        g, rows, cols = self._grid(index, normalized)
        return _grid_html(g, rows, cols, title="activation patching", **kwargs)

    def figure(self, index: int = 0, *, normalized: bool = True, **kwargs):
        """Matplotlib heatmap of pair ``index``."""
        g, rows, cols = self._grid(index, normalized)
        return _grid_figure(g, rows, cols, title="activation patching", xlabel="position",
                           ylabel="site", **kwargs)

    def __str__(self) -> str:
        return self.to_text()


@dataclasses.dataclass(frozen=True)
class TraceResult(_Saved):
    """Causal tracing of one prompt (Meng et al., 2022).

    Attributes:
      scores: ``[L_tokens, n_layers]`` mean p(answer) over the noisy samples when position
        ``t`` of layer ``l`` (or the window of MLP / attention outputs around ``l``) is
        restored to its clean value.
      low_score: p(answer) of the noisy run with nothing restored; high_score: of the clean run.
      subject_range: ``(start, stop)`` token span of the subject; tokens: the prompt's tokens;
      answer: the answer token string; info: kind, window, noise, samples, model.
    """
    scores: np.ndarray
    low_score: float
    high_score: float
    subject_range: tuple
    tokens: tuple
    answer: str
    info: dict

    @property
    def indirect_effect(self) -> np.ndarray:
        """``scores − low_score``: how much restoring each cell recovers."""
        return self.scores - self.low_score

    def _grid(self):
        s0, s1 = self.subject_range
        rows = [f"{t}*" if s0 <= i < s1 else t for i, t in enumerate(self.tokens)]
        cols = [str(l) for l in range(self.scores.shape[1])]
        return self.scores, rows, cols

    def _title(self):
        kind = self.info.get("kind") or "hidden state"
        return (f"causal trace ({kind}): p({self.answer!r}) clean {self.high_score:.3f}, "
                f"noisy {self.low_score:.3f}; * = subject")

    def to_text(self, *, digits: int = 2) -> str:
        """Terminal table (tokens × layers)."""
        g, rows, cols = self._grid()
        return _grid_text(g, rows, cols, title=self._title(), digits=digits, col_width=6)

    def to_html(self, **kwargs) -> str:
        """HTML heatmap (tokens × layers)."""
        g, rows, cols = self._grid()
        return _grid_html(g, rows, cols, title=self._title(), signed=False, **kwargs)

    def figure(self, **kwargs):
        """ROME-style matplotlib heatmap (tokens × layers)."""
        g, rows, cols = self._grid()
        return _grid_figure(g, rows, cols, title=self._title(), signed=False, xlabel="layer",
                           cbar_label="p(answer)", **kwargs)

    def __str__(self) -> str:
        return self.to_text()


@dataclasses.dataclass(frozen=True)
class TraceAverage(_Saved):
    """Causal traces averaged over a dataset by ROME's position categories.

    Attributes:
      mean: ``[6, n_layers]`` average indirect effect (score − low score) per category;
      sem: its standard error (``1.96 · sem`` is the 95% interval); count: ``[6]`` prompts per
      category; categories: names; low, high: ``[N]`` each prompt's noisy / clean p(answer);
      info: kind, window, noise, samples, model.
    """
    mean: np.ndarray
    sem: np.ndarray
    count: np.ndarray
    low: np.ndarray
    high: np.ndarray
    categories: tuple
    info: dict

    def _grid(self):
        rows = [f"{c} (n={n})" for c, n in zip(self.categories, self.count.tolist())]
        return self.mean, rows, [str(l) for l in range(self.mean.shape[1])]

    def _title(self):
        return (f"average indirect effect ({self.info.get('kind') or 'hidden state'}) over "
                f"{len(self.low)} prompts")

    def to_text(self, *, digits: int = 3) -> str:
        """Terminal table (categories × layers)."""
        g, rows, cols = self._grid()
        return _grid_text(g, rows, cols, title=self._title(), digits=digits, col_width=7)

    def to_html(self, **kwargs) -> str:
        g, rows, cols = self._grid()
        return _grid_html(g, rows, cols, title=self._title(), **kwargs)

    def figure(self, **kwargs):
        g, rows, cols = self._grid()
        return _grid_figure(g, rows, cols, title=self._title(), xlabel="layer",
                           cbar_label="average indirect effect", **kwargs)

    def __str__(self) -> str:
        return self.to_text()


@dataclasses.dataclass(frozen=True)
class MediationResult(_Saved):
    """Causal mediation analysis (Vig et al., 2020) of an intervention on the input.

    Attributes:
      total_effect: ``[N]`` per example ``y(intervened) / y(original) − 1``.
      direct_effect, indirect_effect: ``[N, n_layers, n_units]`` natural direct / indirect
        effect of each mediator (unit = MLP neuron or attention head) at the mediated position.
      mediator: ``"mlp"`` or ``"heads"`` (or a site kind); info: model, response definition,
        units, scored positions, tokens.
      layers: the site of each row (``"decoder.blocks.1.head_out"``); response: ``[N, 2]``
        the response ``y`` of the original and the intervened input.
    """
    total_effect: np.ndarray
    direct_effect: np.ndarray
    indirect_effect: np.ndarray
    mediator: str
    info: dict
    layers: tuple = ()
    response: Any = None

    def _rows(self):
        n = self.indirect_effect.shape[1]
        return list(self.layers) if len(self.layers) == n else [str(l) for l in range(n)]

    def log_share(self, effect: str = "indirect") -> np.ndarray:
        """``[N, n_layers, n_units]`` ``log(1 + effect) / log(1 + TE)``: the share of the
        intervention's shift of ``log y`` that one mediator's swap reproduces — the readable
        scale when a confident model makes ``TE`` huge (1 = the unit alone carries the whole
        shift; ``effect`` is ``"indirect"`` or ``"direct"``)."""
        if effect not in ("indirect", "direct"):
            raise ValueError(f"effect must be 'indirect' or 'direct', got {effect!r}.")
        e = self.indirect_effect if effect == "indirect" else self.direct_effect
        te = np.log1p(self.total_effect.astype(np.float64))[:, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.log1p(e.astype(np.float64)) / te).astype(np.float32)

    def mean_indirect(self) -> np.ndarray:
        """``[n_layers, n_units]`` indirect effect averaged over examples."""
        return self.indirect_effect.mean(0)

    def top(self, k: int = 10) -> list:
        """The ``k`` mediators with the largest mean indirect effect:
        ``[(layer, unit, effect)]``."""
        m = self.mean_indirect()
        order = np.argsort(-m, axis=None)[:k]
        return [(int(i // m.shape[1]), int(i % m.shape[1]), float(m.flat[i])) for i in order]

    def sparsity(self, fraction: float = 0.5) -> float:
        """Share of all mediators needed to reach ``fraction`` of the summed positive mean
        indirect effect (small = a few units carry the effect)."""
        m = np.sort(np.clip(self.mean_indirect().ravel(), 0, None))[::-1]
        total = m.sum()
        if total <= 0:
            return float("nan")
        k = int(np.searchsorted(np.cumsum(m), fraction * total) + 1)
        return k / m.size

    def to_text(self, *, k: int = 10) -> str:
        lines = [f"causal mediation ({self.mediator}): mean total effect "
                 f"{self.total_effect.mean():.4f} over {len(self.total_effect)} examples",
                 f"top {k} mediators (layer, unit, mean indirect effect):"]
        rows = self._rows()
        lines += [f"  {rows[l]:>28s}  unit {u:4d}  {e:+.5f}" for l, u, e in self.top(k)]
        return "\n".join(lines)

    def figure(self, **kwargs):
        m = self.mean_indirect()
        return _grid_figure(m, self._rows(),
                           [str(u) for u in range(m.shape[1])], xlabel=self.mediator,
                           ylabel="layer", title="mean natural indirect effect",
                           cbar_label="indirect effect", **kwargs)

    def __str__(self) -> str:
        return self.to_text()
