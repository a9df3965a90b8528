"""Rendering of attribution results: terminal text, HTML, and matplotlib figures.

Computation code never imports this package, and neither do the results: the package
(``jaxattr/__init__.py``) names these renderers in :mod:`jaxattr.views`, and
``out.to_html()`` / ``out.show()`` dispatch through that registry, which imports this
package on first use.
"""
from __future__ import annotations

import sys

from .html import CSP, HtmlReport, save_html, to_html
from .text import to_text, use_color

__all__ = ["to_text", "to_html", "save_html", "show", "in_notebook", "use_color", "CSP",
           "HtmlReport", "to_figure", "save_figure", "lens_show", "context_show"]


def in_notebook() -> bool:
    """True inside a Jupyter/IPython kernel (notebook, lab, Colab, VS Code)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # pragma: no cover - IPython internals
        return False
    return shell is not None and (type(shell).__name__ in ("ZMQInteractiveShell", "Shell")
                                  or "IPKernelApp" in getattr(shell, "config", {}))


def show(x, *, notebook: bool | None = None, file=None, **kwargs) -> None:
    """Display ``x``: an HTML view in a notebook, a heatmap table in the terminal.

    Args:
      x: an :class:`~jaxattr.results.AttributionOutput` or
        :class:`~jaxattr.results.SequenceAttribution`.
      notebook: force the notebook (``True``) or terminal (``False``) path; default: detected.
      file: text stream for the terminal path (default stdout; colour when it is a TTY).
      **kwargs: passed to :func:`to_html` or :func:`to_text`.
    """
    if notebook is None:
        notebook = in_notebook()
    if notebook:
        from IPython.display import HTML, display
        display(HTML(to_html(x, full_page=False, **kwargs)))
        return
    stream = sys.stdout if file is None else file
    kwargs.setdefault("color", use_color(stream))
    stream.write(to_text(x, **kwargs))
    stream.flush()


def to_figure(x, **kwargs):
    """Matplotlib heatmap (see :func:`jaxattr.render.figure.to_figure`)."""
    from .figure import to_figure as _to_figure
    return _to_figure(x, **kwargs)


def save_figure(x, path, **kwargs):
    """Write the heatmap figure as PNG/SVG/PDF (see :func:`jaxattr.render.figure.save_figure`)."""
    from .figure import save_figure as _save_figure
    return _save_figure(x, path, **kwargs)


def lens_show(traj, i: int = 0, **kwargs) -> None:
    """A lens trajectory: an HTML view in a notebook, the terminal table otherwise."""
    if in_notebook():
        from IPython.display import HTML, display
        display(HTML(traj.to_html(i, full_page=False, **kwargs)))
    else:
        print(traj.to_text(i, **kwargs))


def context_show(out, *, file=None, color=None) -> None:
    """A context attribution: the terminal view (colour when ``file`` is a terminal)."""
    stream = sys.stdout if file is None else file
    stream.write(out.to_text(color=use_color(stream) if color is None else color))
    stream.flush()
