"""``FaithfulnessResult``: per-step faithfulness values as a pytree, with views and save/load."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from flax import struct

from ..npz_store import ResultFileError, load_npz, save_npz
from .rationale import DIRECTIONS

__all__ = ["FaithfulnessResult", "load_faithfulness", "SummaryMethods"]

_FORMAT = "jaxattr.faithfulness"
_VERSION = 1
_HEADER = "header"
_GROUPS = ("values", "bin_values", "curves")


def _direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better."""
    from .plausibility import PLAUSIBILITY_METRICS
    return {**DIRECTIONS, **PLAUSIBILITY_METRICS}.get(metric, 1)


class SummaryMethods:
    """Per-sequence means and a text table over ``values`` ``{metric: [N, T]}`` and
    ``step_mask`` ``[N, T]`` (shared by the faithfulness and plausibility results)."""

    @property
    def metrics(self) -> list:
        return list(self.values)

    def per_sequence(self) -> dict:
        """``{metric: [N]}``: the mean over each sequence's steps where the metric is defined
        (NaN for a sequence with none)."""
        out = {}
        for m, v in self.values.items():
            v = np.where(self.step_mask, np.asarray(v, np.float64), np.nan)
            ok = ~np.isnan(v)
            s = np.where(ok, v, 0.0).sum(1)
            c = ok.sum(1)
            out[m] = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        return out

    def mean(self) -> dict:
        """``{metric: float}``: mean of the per-sequence means (sequences where defined)."""
        return {m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                for m, v in self.per_sequence().items()}

    def to_table(self, *, digits: int = 4) -> str:
        """Plain-text table: per metric, the mean of per-sequence means, its standard error
        and the number of sequences (↑ higher is better, ↓ lower is better)."""
        per = self.per_sequence()
        lines = [f"{'metric':<26}{'mean':>10}{'s.e.':>10}{'n':>6}"]
        for m, v in per.items():
            v = v[np.isfinite(v)]
            arrow = "↑" if _direction(m) > 0 else "↓"
            se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
            mean = v.mean() if len(v) else float("nan")
            lines.append(f"{m + ' ' + arrow:<26}{mean:>10.{digits}f}{se:>10.{digits}f}"
                         f"{len(v):>6}")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_table()


@struct.dataclass
class FaithfulnessResult(SummaryMethods):
    """Faithfulness of one attribution output (``N`` sequences, ``T`` steps, ``K`` bins).

    Attributes:
      values: ``{metric: [N, T]}`` per-step values (NaN at padding steps and where a metric is
        undefined, e.g. a step with no candidate token).
      bin_values: ``{metric: [N, T, K]}`` per-bin values of the AOPC metrics (NaN where the
        bin's rationale is empty).
      curves: ``{"deletion" | "insertion": [N, T, K + 2]}`` the score at fractions
        ``curve_x`` ``[N, T, K + 2]`` (0, the bins' ``k / n``, 1).
      step_mask: ``[N, T]`` bool, real steps.
      info: options of the run (static; not a pytree leaf).
    """
    values: dict
    bin_values: dict
    curves: dict
    curve_x: np.ndarray
    step_mask: np.ndarray
    info: dict = struct.field(pytree_node=False, default_factory=dict)

    @classmethod
    def from_steps(cls, items, step_values: list, n_steps: Sequence[int], spec,
                   info: dict) -> "FaithfulnessResult":
        """Assemble per-step metric dicts (one per step item) into padded arrays."""
        N, T, K = len(n_steps), max(n_steps, default=0), len(spec.bins)
        mask = np.zeros((N, T), bool)
        for i, n in enumerate(n_steps):
            mask[i, :n] = True
        values = {m: np.full((N, T), np.nan) for m in spec.metrics}
        names_b = sorted({k for v in step_values for k in v["bins"]})
        names_c = sorted({k for v in step_values for k in v["curves"]})
        bins = {m: np.full((N, T, K), np.nan) for m in names_b}
        curves = {m: np.full((N, T, K + 2), np.nan) for m in names_c}
        cx = np.full((N, T, K + 2), np.nan)
        for item, v in zip(items, step_values):
            i, t = item.seq, item.step
            for m, x in v["values"].items():
                values[m][i, t] = x
            for m, x in v["bins"].items():
                bins[m][i, t] = x
            for m, x in v["curves"].items():
                curves[m][i, t] = x
            cx[i, t] = v["curve_x"]
        return cls(values=values, bin_values=bins, curves=curves, curve_x=cx,
                   step_mask=mask, info=dict(info))

    def mean_curve(self, name: str = "deletion") -> tuple:
        """``(x[K+2], y[K+2])``: the ``name`` curve averaged over every defined step, against the
        nominal fractions (0, bins, 1) for fraction bins, else the mean fraction."""
        if name not in self.curves:
            raise KeyError(f"no {name!r} curve; computed: {sorted(self.curves)} (add "
                           f"{name!r} to metrics).")
        y = np.asarray(self.curves[name])[self.step_mask]
        x = np.asarray(self.curve_x)[self.step_mask]
        ok = ~np.isnan(y).any(-1)
        bins = self.info.get("bins", [])
        if bins and all(isinstance(b, float) for b in bins):
            xs = np.array([0.0, *bins, 1.0])
        else:
            xs = x[ok].mean(0)
        return xs, y[ok].mean(0)

    # -- views (to_table, per_sequence, mean: SummaryMethods) -------------------------------
    def to_figure(self, *, figsize: tuple = (5.0, 3.5), title: Optional[str] = None):
        """Matplotlib figure of the mean deletion and insertion curves (needs matplotlib and
        ``"deletion"`` / ``"insertion"`` in the metrics)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("Figures need matplotlib: pip install matplotlib") from None
        if not self.curves:
            raise ValueError("no curves to draw: evaluate with metrics including 'deletion' "
                             "and/or 'insertion'.")
        fig = Figure(figsize=figsize)
        ax = fig.add_subplot(1, 1, 1)
        for name in sorted(self.curves):
            x, y = self.mean_curve(name)
            ax.plot(x, y, marker="o", label=f"{name} (area {self.mean().get(name, np.nan):.3f})")
        ax.set_xlabel("fraction of candidate tokens erased (deletion) / kept (insertion)")
        ax.set_ylabel(self.info.get("attributed_fn", "score"))
        ax.set_title(title or f"{self.info.get('method') or 'attribution'}: "
                              f"{self.info.get('erase', '')} erasure")
        ax.legend()
        return fig

    # -- save / load --------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write a ``.npz`` file atomically (arrays plus the info as a JSON header; no
        pickle; :func:`jaxattr.npz_store.save_npz`)."""
        arrays = {"curve_x": np.asarray(self.curve_x), "step_mask": np.asarray(self.step_mask)}
        for group in _GROUPS:
            for k, v in getattr(self, group).items():
                arrays[f"{group}/{k}"] = np.asarray(v)
        save_npz(path, arrays, {"format": _FORMAT, "format_version": _VERSION,
                                "info": self.info}, header_key=_HEADER)

    @classmethod
    def load(cls, path) -> "FaithfulnessResult":
        """Read a file written by :meth:`save` (raises :class:`~jaxattr.ResultFileError`
        naming the file when it is not one)."""
        header, arrays = load_npz(path, format=_FORMAT, version=_VERSION,
                                  what="faithfulness", header_key=_HEADER)
        groups = {g: {} for g in _GROUPS}
        for name, a in arrays.items():
            if "/" in name:
                g, k = name.split("/", 1)
                if g not in groups:
                    raise ResultFileError(f"{os.fspath(path)}: unknown array group {g!r}.")
                groups[g][k] = a
        missing = [k for k in ("curve_x", "step_mask") if k not in arrays]
        if missing:
            raise ResultFileError(f"{os.fspath(path)}: missing arrays {missing}.")
        return cls(**groups, curve_x=arrays["curve_x"], step_mask=arrays["step_mask"],
                   info=header.get("info", {}))


def load_faithfulness(path) -> FaithfulnessResult:
    """Read a :class:`FaithfulnessResult` saved with :meth:`FaithfulnessResult.save`."""
    return FaithfulnessResult.load(path)
