"""Labelled 2-D grids (sites × positions, layers × tokens, categories × layers) as a terminal
table, an HTML table and a matplotlib figure — the views of the intervention results.

Signed grids use the library's diverging scale symmetric around zero; non-negative grids
(probabilities, effects that cannot be negative) a sequential scale. Every label is
HTML-escaped; NaN cells are left blank.
"""
from __future__ import annotations

import html
import math
from typing import Optional, Sequence

import numpy as np

from ._common import display_token, diverging_rgb, scale_max

__all__ = ["grid_text", "grid_html", "grid_figure"]


def _sequential_rgb(value: float, vmin: float, vmax: float) -> Optional[tuple]:
    if value is None or not math.isfinite(value):
        return None
    t = 0.0 if vmax <= vmin else max(0.0, min(1.0, (value - vmin) / (vmax - vmin)))
    end = (178, 24, 43)
    return tuple(int(round(255 + (c - 255) * t)) for c in end)


def _signed(values: np.ndarray) -> bool:
    v = values[np.isfinite(values)]
    return bool(v.size and v.min() < 0)


def _check(values, rows, cols):
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape != (len(rows), len(cols)):
        raise ValueError(f"values of shape {values.shape} do not match {len(rows)} row and "
                         f"{len(cols)} column labels.")
    return values


def grid_text(values, rows: Sequence[str], cols: Sequence[str], *, title: str = "",
              digits: int = 2, col_width: int = 7) -> str:
    """A plain-text table (rows labelled on the left, columns on top); NaN shown as ``·``."""
    values = _check(values, rows, cols)
    rw = max([len(display_token(str(r), 24)) for r in rows] + [4])
    head = " " * rw + " " + "".join(display_token(str(c), col_width - 1).rjust(col_width)
                                    for c in cols)
    lines = [title] if title else []
    lines.append(head)
    for r, row in zip(rows, values):
        cells = "".join(("·" if not math.isfinite(v) else f"{v:.{digits}f}").rjust(col_width)
                        for v in row)
        lines.append(display_token(str(r), 24).ljust(rw) + " " + cells)
    return "\n".join(lines)


def grid_html(values, rows: Sequence[str], cols: Sequence[str], *, title: str = "",
              digits: int = 2, signed: Optional[bool] = None, full_page: bool = True) -> str:
    """An HTML table coloured by value (diverging if ``signed``, default: any value < 0)."""
    from .html import CSP, _CSS
    values = _check(values, rows, cols)
    signed = _signed(values) if signed is None else signed
    vmax = scale_max(values)
    finite = values[np.isfinite(values)]
    vmin = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    out = [f"<h2>{html.escape(title)}</h2>" if title else "",
           '<div class="ja-wrap"><table class="ja-heat"><thead><tr><th></th>']
    out += [f'<th scope="col">{html.escape(display_token(str(c), 16))}</th>' for c in cols]
    out.append("</tr></thead><tbody>")
    for r, row in zip(rows, values):
        out.append(f'<tr><th scope="row">{html.escape(display_token(str(r), 24))}</th>')
        for v in row:
            rgb = diverging_rgb(v, vmax) if signed else _sequential_rgb(v, min(vmin, 0.0), hi)
            if rgb is None:
                out.append('<td class="ja-na"></td>')
            else:
                fg = "#fff" if sum(rgb) < 380 else "#111"
                out.append(f'<td style="background:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};'
                           f'color:{fg}" title="{v:.6g}">{v:.{digits}f}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    body = f'<div class="ja-root">{"".join(out)}</div>'
    if not full_page:
        return f"<style>{_CSS}</style>{body}"
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><meta http-equiv='
            f'"Content-Security-Policy" content="{CSP}"><title>{html.escape(title or "jaxattr")}'
            f"</title><style>{_CSS}</style></head><body>{body}</body></html>")


def grid_figure(values, rows: Sequence[str], cols: Sequence[str], *, title: str = "",
                signed: Optional[bool] = None, xlabel: str = "", ylabel: str = "",
                figsize: Optional[tuple] = None, cbar_label: str = ""):
    """A matplotlib heatmap (``RdBu_r`` symmetric around 0 if signed, else ``Purples``)."""
    from matplotlib.figure import Figure
    values = _check(values, rows, cols)
    signed = _signed(values) if signed is None else signed
    if figsize is None:
        figsize = (max(4.0, 1.5 + 0.45 * len(cols)), max(2.5, 1.2 + 0.3 * len(rows)))
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(values)
    if signed:
        vmax = scale_max(values)
        im = ax.imshow(masked, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto",
                       interpolation="nearest")
    else:
        im = ax.imshow(masked, cmap="Purples", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), [display_token(str(c), 14) for c in cols], rotation=60,
                  ha="right")
    ax.set_yticks(range(len(rows)), [display_token(str(r), 24) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar_label)
    return fig
