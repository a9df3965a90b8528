"""Views of a :class:`~jaxattr.lens.LensTrajectory`: the prediction-trajectory heatmap.

Rows are layers (the input stream at the bottom, the model's output at the top, as the
tuned-lens paper draws them), columns positions; each cell shows the row's top-1 token and is
coloured by one statistic (``"prob"``: top-1 probability, ``"entropy"`` or ``"kl"`` to the
final row, all non-negative, so a sequential scale). Hovering a cell (HTML) lists the top-k
tokens with their probabilities. Every token is HTML-escaped.
"""
from __future__ import annotations

import html as _html
from typing import Optional

import numpy as np

from ._common import display_token
from .html import CSP

__all__ = ["lens_text", "lens_html", "lens_figure", "COLOR_BY"]

#: What a cell's colour can show, with its label.
COLOR_BY = {"prob": "top-1 probability", "entropy": "entropy (nats)",
            "kl": "KL(final ‖ layer) (nats)"}


def _values(traj, i: int, color_by: str) -> np.ndarray:
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by must be one of {sorted(COLOR_BY)}, got {color_by!r}.")
    s = traj.stats[i]
    return s["top_probs"][..., 0] if color_by == "prob" else s[color_by]


def _scale(values: np.ndarray, color_by: str) -> float:
    if color_by == "prob":
        return 1.0
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _rgb(v: float, vmax: float) -> tuple:
    """White (0) to a deep blue (vmax)."""
    t = 0.0 if not np.isfinite(v) else min(max(v / vmax, 0.0), 1.0)
    return tuple(int(round(255 + t * (c - 255))) for c in (8, 69, 148))


def lens_text(traj, i: int = 0, *, color_by: str = "prob", max_token_width: int = 8,
              max_positions: Optional[int] = None) -> str:
    """Compact terminal table: one line per row (output first), one column per position,
    each cell the top-1 token and its value of ``color_by``."""
    vals = _values(traj, i, color_by)
    top = traj.top_tokens(i)[..., 0]
    toks = traj.tokens[i]
    n = len(toks) if max_positions is None else min(len(toks), max_positions)
    labels = traj.row_labels()
    lab_w = max(len(l) for l in labels + ["layer"])
    width = max_token_width + 1
    digits = "{:.2f}"
    lines = [f"{traj.kind} lens · cells: top-1 token / {COLOR_BY[color_by]}",
             "layer".ljust(lab_w) + " | " + " ".join(
                 display_token(t, max_token_width).ljust(width) for t in toks[:n])]
    lines.append("-" * len(lines[-1]))
    for r in reversed(range(traj.n_rows)):
        cells = [(display_token(top[r, p], max_token_width - 5) + " "
                  + digits.format(vals[r, p])).ljust(width) for p in range(n)]
        lines.append(labels[r].ljust(lab_w) + " | " + " ".join(cells))
    if n < len(toks):
        lines.append(f"… {len(toks) - n} more positions")
    return "\n".join(lines) + "\n"


def _esc(s) -> str:
    return _html.escape(str(s), quote=True)


def lens_html(traj, i: int = 0, *, color_by: str = "prob", full_page: bool = True,
              title: Optional[str] = None, max_token_width: int = 10) -> str:
    """The heatmap as HTML: rows = layers (output on top), columns = positions; the cell
    text is the top-1 token, its colour ``color_by``; ``title`` lists the top-k on hover."""
    vals = _values(traj, i, color_by)
    vmax = _scale(vals, color_by)
    top = traj.top_tokens(i)
    probs = traj.stats[i]["top_probs"]
    s = traj.stats[i]
    labels = traj.row_labels()
    head = "".join(f"<th>{_esc(display_token(t, max_token_width))}</th>"
                   for t in traj.tokens[i])
    rows = []
    for r in reversed(range(traj.n_rows)):
        cells = []
        for p in range(len(traj.tokens[i])):
            rgb = _rgb(vals[r, p], vmax)
            fg = "#fff" if sum(rgb) < 380 else "#111"
            tip = "\n".join(f"{display_token(t)}  {q:.3f}" for t, q in zip(top[r, p], probs[r, p]))
            tip += (f"\nentropy {s['entropy'][r, p]:.3f} · KL {s['kl'][r, p]:.3f}"
                    + ("" if traj.targets[i][p] < 0 else
                       f" · target p {s['target_prob'][r, p]:.3f} rank {s['target_rank'][r, p]}"))
            cells.append(f'<td style="background:rgb{rgb};color:{fg}" title="{_esc(tip)}">'
                         f"{_esc(display_token(top[r, p, 0], max_token_width))}</td>")
        rows.append(f'<tr><th scope="row">{_esc(labels[r])}</th>{"".join(cells)}</tr>')
    name = title or f"{traj.kind.capitalize()} lens"
    body = (f'<div class="jl-root"><h2>{_esc(name)}</h2><p class="jl-meta">cell: top-1 token '
            f'· colour: {_esc(COLOR_BY[color_by])} (0 – {vmax:.3g}) · hover: top-{top.shape[-1]}'
            '</p><div style="overflow-x:auto"><table class="jl-heat"><thead><tr><th>layer</th>'
            f'{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div></div>')
    css = ("<style>.jl-root{font-family:system-ui,sans-serif}.jl-meta{color:#555;font-size:.85em}"
           ".jl-heat{border-collapse:collapse;font-family:ui-monospace,monospace;font-size:.8em}"
           ".jl-heat th,.jl-heat td{border:1px solid #e3e3e3;padding:2px 5px;white-space:pre}"
           "</style>")
    if not full_page:
        return css + body
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><meta http-equiv="Content-'
            f'Security-Policy" content="{CSP}"><title>{_esc(name)}</title>{css}</head>'
            f"<body>{body}</body></html>")


def lens_figure(traj, i: int = 0, *, color_by: str = "prob", annotate: bool = True,
                max_token_width: int = 8, ax=None):
    """Matplotlib heatmap of sequence ``i`` (output row on top); returns the figure."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("lens figures need matplotlib: pip install matplotlib") from e
    vals = _values(traj, i, color_by)
    top = traj.top_tokens(i)[..., 0]
    n_pos = len(traj.tokens[i])
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * n_pos + 1.5),
                                        max(2.5, 0.4 * traj.n_rows + 1.0)))
    else:
        fig = ax.figure
    image = ax.imshow(vals, origin="lower", aspect="auto", cmap="Blues", vmin=0.0,
                      vmax=_scale(vals, color_by))
    ax.set_yticks(range(traj.n_rows), traj.row_labels())
    ax.set_xticks(range(n_pos), [display_token(t, max_token_width) for t in traj.tokens[i]],
                  rotation=60, ha="right")
    ax.set_ylabel("layer")
    if annotate:
        vmax = _scale(vals, color_by)
        for r in range(traj.n_rows):
            for p in range(n_pos):
                dark = np.isfinite(vals[r, p]) and vals[r, p] / vmax > 0.55
                ax.text(p, r, display_token(top[r, p], max_token_width), ha="center",
                        va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=COLOR_BY[color_by])
    ax.set_title(f"{traj.kind.capitalize()} lens")
    fig.tight_layout()
    return fig
