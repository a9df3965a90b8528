"""Table and figure of a :class:`~jaxattr.probing.ProbeResult` (score, control, selectivity
and compression by layer)."""
from __future__ import annotations

import numpy as np

__all__ = ["probe_table", "probe_figure"]


def probe_table(res, *, digits: int = 3) -> str:
    """Plain-text table: one row per layer, columns from ``res.columns()``; the score column
    shows its 95% interval."""
    cols = res.columns()
    lo, hi = cols.pop("ci_low"), cols.pop("ci_high")
    header = list(cols)
    rows = []
    for i, name in enumerate(cols["layer"]):
        row = [str(name)]
        for key in header[1:]:
            v = float(cols[key][i])
            cell = f"{v:.{digits}f}"
            if key == res.metric:
                cell += f" [{float(lo[i]):.{digits}f}, {float(hi[i]):.{digits}f}]"
            row.append(cell)
        rows.append(row)
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if j else c.ljust(w)   # noqa: E731
                                   for j, (c, w) in enumerate(zip(cells, widths)))
    head = (f"{res.probe} probe, {res.kind}, {res.n_train}/{res.n_val}/{res.n_test} "
            f"train/val/test, {res.seeds} seed(s); chance {res.chance:.{digits}f}")
    if res.uniform_codelength is not None:
        head += f"; uniform code {res.uniform_codelength:.1f} bits"
    return "\n".join([head, line(header), *(line(r) for r in rows)]) + "\n"


def probe_figure(res, *, figsize=None, title=None):
    """Score with its interval, control score and selectivity by layer; a second panel with
    compression when MDL was computed. Returns a :class:`matplotlib.figure.Figure`."""
    from .figure import _require_matplotlib
    Figure = _require_matplotlib()
    x = np.arange(len(res.layers))
    panels = 2 if res.compression is not None else 1
    fig = Figure(figsize=figsize or (max(5.0, 0.5 * len(x) + 2), 3.2 * panels),
                 layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    ax.fill_between(x, res.ci_low, res.ci_high, alpha=0.2, color="C0")
    ax.plot(x, res.accuracy, "o-", color="C0", label=res.metric)
    if res.control_accuracy is not None:
        ax.plot(x, res.control_accuracy, "s--", color="C1", label="control " + res.metric)
        ax.plot(x, res.selectivity, "^-", color="C2", label="selectivity")
    if res.kind == "classification":
        ax.axhline(res.chance, color="#888", lw=0.8, ls=":", label="majority class")
    ax.set_ylabel(res.metric)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or f"{res.probe} probe by layer", loc="left", fontsize=10)
    if panels == 2:
        axes[1].plot(x, res.compression, "o-", color="C3", label="compression")
        if res.control_compression is not None:
            axes[1].plot(x, res.control_compression, "s--", color="C4",
                         label="control compression")
        axes[1].set_yscale("log")
        axes[1].set_ylabel("compression (×, log)")
        axes[1].legend(fontsize=7, loc="best")
    axes[-1].set_xticks(x, list(res.layers), rotation=45, ha="right")
    axes[-1].set_xlabel("layer")
    return fig
