"""Terminal rendering: one heatmap table per sequence.

Rows are the attributed tokens (source, then target), columns the generated tokens; step
scores are extra rows at the bottom. Tables wider than the terminal are split into pages of
columns. Colour (through ``rich``) is used on a terminal; plain aligned text otherwise.
"""
from __future__ import annotations

import io
import os
import shutil
import sys
import textwrap
from typing import Optional

import numpy as np

from ._common import (diverging_rgb, display_token, format_value, header_of, prepared,
                      scale_max, sequences_of, value_format)

__all__ = ["to_text", "use_color"]

_GAP = 2          # spaces between columns
_INDENT = "  "    # row labels are indented under their section name


def use_color(stream=None) -> bool:
    """Whether to colour output for ``stream`` (default stdout): a TTY, ``NO_COLOR`` unset,
    and ``rich`` importable. ``FORCE_COLOR`` forces it on."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def _terminal_width() -> int:
    return max(shutil.get_terminal_size((100, 24)).columns, 20)


class _Block:
    """The cells of one sequence: column headers and sections of labelled rows."""

    def __init__(self, seq, *, digits: int, max_token_width: int):
        self.columns = [display_token(t, max_token_width) for t in seq.generated_labels]
        vmax = scale_max(seq.source_attributions, seq.target_attributions)
        kind = value_format(vmax, digits)
        self.vmax = vmax
        self.sections = []          # (name, [(label, [cell str], [value or None])])
        for name, toks, a in (("source", seq.source, seq.source_attributions),
                              ("target", seq.target, seq.target_attributions)):
            if a is None:
                continue
            rows = []
            for tok, row in zip(toks, a):
                vals = [float(v) for v in row]
                rows.append((display_token(tok, max_token_width),
                             [format_value(v, digits, kind) for v in vals], vals))
            self.sections.append((name, rows))
        if seq.step_scores:
            rows = [(display_token(name, max_token_width),
                     [format_value(float(v), digits + 1, "g") for v in np.asarray(vals)], None)
                    for name, vals in seq.step_scores.items()]
            self.sections.append(("step scores", rows))
        n = len(self.columns)
        self.widths = [len(c) for c in self.columns]
        for _, rows in self.sections:
            for _, cells, _ in rows:
                for j in range(n):
                    self.widths[j] = max(self.widths[j], len(cells[j]))
        labels = [len(_INDENT) + len(lbl) for _, rows in self.sections for lbl, _, _ in rows]
        self.label_width = max([len(s) for s, _ in self.sections] + labels + [1])

    def pages(self, width: int) -> list[range]:
        """Column ranges that each fit in ``width`` characters (at least one column each)."""
        pages, start, used = [], 0, self.label_width
        for j, w in enumerate(self.widths):
            if j > start and used + _GAP + w > width:
                pages.append(range(start, j))
                start, used = j, self.label_width
            used += _GAP + w
        pages.append(range(start, len(self.widths)))
        return pages


def _plain_page(block: _Block, cols: range) -> list[str]:
    gap = " " * _GAP
    lines = [(" " * block.label_width + gap
              + gap.join(block.columns[j].rjust(block.widths[j]) for j in cols)).rstrip()]
    for name, rows in block.sections:
        lines.append(name)
        for label, cells, _ in rows:
            lines.append(((_INDENT + label).ljust(block.label_width) + gap
                          + gap.join(cells[j].rjust(block.widths[j]) for j in cols)).rstrip())
    return lines


def _rich_page(block: _Block, cols: range, console) -> str:
    from rich.table import Table
    from rich.text import Text
    from rich.style import Style
    from rich.color import Color

    table = Table(box=None, show_header=True, padding=(0, 0), collapse_padding=True,
                  show_edge=False, pad_edge=False)
    table.add_column(Text(""), no_wrap=True, min_width=block.label_width)
    for j in cols:
        table.add_column(Text(" " * _GAP + block.columns[j], style="bold"), justify="right",
                         no_wrap=True, min_width=block.widths[j] + _GAP)
    for name, rows in block.sections:
        table.add_row(Text(name, style="bold underline"), *[""] * len(cols))
        for label, cells, vals in rows:
            out = []
            for j in cols:
                rgb = diverging_rgb(vals[j], block.vmax) if vals is not None else None
                if rgb is None:
                    out.append(Text(" " * _GAP + cells[j], style="dim" if vals is not None else ""))
                    continue
                dark = sum(rgb) < 3 * 150
                style = Style(bgcolor=Color.from_rgb(*rgb),
                              color=Color.from_rgb(255, 255, 255) if dark
                              else Color.from_rgb(0, 0, 0))
                out.append(Text(" " * _GAP) + Text(cells[j], style=style))
            table.add_row(Text(_INDENT + label), *out)
    with console.capture() as cap:
        console.print(table)
    return cap.get().rstrip("\n")


def to_text(x, *, color: Optional[bool] = None, width: Optional[int] = None, digits: int = 2,
            max_token_width: int = 16, aggregate: bool = True, header: bool = True) -> str:
    """Render attributions as heatmap tables for a terminal.

    Args:
      x: an :class:`~jaxattr.results.AttributionOutput`, a
        :class:`~jaxattr.results.SequenceAttribution` or a list of views. 3-D attributions are
        aggregated with the default (L2 norm over hidden, columns normalised) first.
      color: colour cells on a diverging scale (blue < 0 < red, symmetric around 0) with
        ``rich``; default: only when stdout is a terminal (see :func:`use_color`).
      width: characters per line (default: the terminal's); wider tables are split into pages
        of generated-token columns.
      digits: decimals of attribution values (scientific notation when all values are too
        small for them); step scores use ``digits + 1`` significant digits.
      max_token_width: longer tokens are cut with ``…``.
      aggregate: aggregate 3-D attributions (``False`` raises instead).
      header: print a ``Sequence i`` title line (with the method from ``info``).

    Returns:
      The text (with ANSI colour codes when ``color``). Not-yet-generated target cells show
      ``·``.
    """
    for name, value, low in (("digits", digits, 0), ("max_token_width", max_token_width, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if color is None:
        color = use_color()
    if width is None:
        width = _terminal_width()
    console = None
    if color:
        try:
            from rich.console import Console
        except ImportError:
            color = False
        else:
            system = ("truecolor" if os.environ.get("COLORTERM") in ("truecolor", "24bit")
                      else "256")
            console = Console(file=io.StringIO(), width=max(width, 20), force_terminal=True,
                              color_system=system if not os.environ.get("FORCE_COLOR")
                              else "truecolor", highlight=False, emoji=False, markup=False,
                              legacy_windows=False)
    title = header_of(x)
    out: list[str] = []
    for i, seq in sequences_of(x, aggregate):
        seq = prepared(seq, aggregate)
        block = _Block(seq, digits=digits, max_token_width=max_token_width)
        if out:
            out.append("")
        if header:
            out.extend(textwrap.wrap(f"Sequence {i}" + (f" · {title}" if title else ""),
                                     width=width, subsequent_indent="  ", break_on_hyphens=False))
        if not block.columns:
            out.append("(no attributed tokens)")
            continue
        pages = block.pages(width)
        for p, cols in enumerate(pages):
            if len(pages) > 1:
                if p:
                    out.append("")
                span = (f"tokens {cols.start + 1}–{cols.stop}" if len(cols) > 1
                        else f"token {cols.start + 1}")
                out.append(f"[generated {span} of {len(block.columns)}]")
            if console is not None:
                out.append(_rich_page(block, cols, console))
            else:
                out.extend(_plain_page(block, cols))
    return "\n".join(out) + "\n"
