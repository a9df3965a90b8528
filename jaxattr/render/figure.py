"""Heatmap figures through matplotlib (optional dependency).

Uses :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, no GUI backend), so it
works headless and inside servers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ._common import display_token, prepared, scale_max, sequences_of

__all__ = ["to_figure", "save_figure"]


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("Figures need matplotlib: pip install matplotlib") from None
    return Figure


def to_figure(x, *, index: int = 0, cmap: str = "RdBu_r", annotate: Optional[bool] = None,
              digits: int = 2, max_token_width: int = 16, aggregate: bool = True,
              figsize: Optional[tuple] = None, title: Optional[str] = None):
    """A heatmap of one sequence: rows = source then target tokens, columns = generated
    tokens, colour scale symmetric around 0, NaN (not yet generated) left blank; step scores
    are written under the columns.

    Args:
      x: an :class:`~jaxattr.results.AttributionOutput` (``index`` picks the sequence) or a
        :class:`~jaxattr.results.SequenceAttribution`.
      cmap: a diverging matplotlib colormap.
      annotate: write values in cells (default: when the table has at most 400 cells).
      digits: decimals of annotations.
      figsize: inches (default: from the table size).
      title: axes title (default ``"Sequence {index}"``).

    Returns:
      A :class:`matplotlib.figure.Figure`.
    """
    Figure = _require_matplotlib()
    seqs = dict(sequences_of(x, aggregate))
    if index not in seqs:
        raise IndexError(f"no sequence {index}; there are {len(seqs)}.")
    seq = prepared(seqs[index], aggregate)
    parts = [a for a in (seq.source_attributions, seq.target_attributions) if a is not None]
    labels = (list(seq.source or []) if seq.source_attributions is not None else []) + \
             (list(seq.target) if seq.target_attributions is not None else [])
    n_cols = len(seq.generated)
    mat = np.concatenate(parts, axis=0) if parts else np.zeros((0, n_cols))
    vmax = scale_max(*parts)
    n_rows = mat.shape[0]
    if annotate is None:
        annotate = n_rows * n_cols <= 400
    if figsize is None:
        figsize = (max(4.0, 1.2 + 0.55 * n_cols), max(2.5, 1.2 + 0.32 * n_rows))
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(mat)
    import matplotlib
    colormap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    im = ax.imshow(masked, cmap=colormap.with_extremes(bad="#f3f3f3"), vmin=-vmax, vmax=vmax,
                   aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_cols),
                  [display_token(t, max_token_width) for t in seq.generated], rotation=60,
                  ha="left", rotation_mode="anchor")
    ax.xaxis.tick_top()
    ax.set_yticks(range(n_rows), [display_token(t, max_token_width) for t in labels])
    if seq.source_attributions is not None and seq.target_attributions is not None:
        ax.axhline(len(seq.source) - 0.5, color="#333", linewidth=1.2)
    if annotate:
        for r in range(n_rows):
            for c in range(n_cols):
                v = mat[r, c]
                if np.isfinite(v):
                    ax.text(c, r, f"{v:.{digits}f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(v) > 0.6 * vmax else "#111")
    if seq.step_scores:
        lines = [f"{name}: " + "  ".join(f"{float(v):.3g}" for v in np.asarray(vals))
                 for name, vals in seq.step_scores.items()]
        ax.set_xlabel("\n".join(lines), fontsize=7, loc="left")
    ax.set_title(title if title is not None else f"Sequence {index}", loc="left", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="attribution")
    return fig


def save_figure(x, path: Union[str, os.PathLike], *, dpi: int = 150, **kwargs) -> Path:
    """Write :func:`to_figure` to ``path``; the format follows the suffix (``.png``, ``.svg``,
    ``.pdf``). Returns the path."""
    fig = to_figure(x, **kwargs)
    fig.savefig(path, dpi=dpi)
    return Path(path)
