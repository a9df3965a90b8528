"""HTML rendering: one self-contained page (or notebook fragment) per result.

For each sequence the page shows

- a *token view*: the input and generated tokens as running text; selecting (click, or arrow
  keys) a generated token colours every input token by its attribution to that token;
- a *heatmap table*: rows = attributed tokens (source, then target), columns = generated
  tokens, step scores as extra rows; exact values on hover (``title``).

Everything is inline (CSS only, no script, no font, no image) and a Content-Security-Policy
``default-src 'none'`` forbids any request, so the file opens offline and leaks nothing. The
selection works with hidden radio buttons and CSS custom properties, so it also works in
notebooks that do not run scripts. Every token is HTML-escaped.
"""
from __future__ import annotations

import html as _html
import itertools
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ._common import (NEGATIVE_RGB, POSITIVE_RGB, diverging_rgb, display_token, format_value,
                      header_of, prepared, scale_max, sequences_of, value_format)

__all__ = ["to_html", "save_html", "CSP", "HtmlReport"]

#: The page's Content-Security-Policy: nothing may be fetched; only inline styles apply.
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_COUNTER = itertools.count()

_CSS = """
.ja-root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  color:#1b1b1b;background:#fff;line-height:1.4;padding:4px}
.ja-root h1{font-size:1.25em;margin:.2em 0 .4em}
.ja-root h2{font-size:1.05em;margin:1.2em 0 .3em}
.ja-meta{color:#555;font-size:.9em;margin:.1em 0 .6em}
.ja-hint{color:#555;font-size:.85em;margin:.2em 0}
.ja-tv{position:relative;margin:.4em 0 .8em}
.ja-r{position:absolute;opacity:0;width:1px;height:1px;margin:0;pointer-events:none}
.ja-toks{line-height:2.1}
.ja-lab{display:inline-block;color:#666;font-size:.8em;margin:0 .4em 0 0;min-width:4.5em}
.ja-t{display:inline-block;padding:0 .25em;margin:0 1px;border-radius:3px;
  font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:.9em;
  white-space:pre;border:1px solid #ddd}
.ja-g{cursor:pointer;border-color:#999;text-decoration:underline;
  text-decoration-thickness:2px;text-underline-offset:3px}
.ja-g:hover{border-color:#222}
.ja-heat{border-collapse:collapse;font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;
  font-size:.8em;margin:.3em 0}
.ja-heat th,.ja-heat td{border:1px solid #e3e3e3;padding:2px 5px;white-space:pre}
.ja-heat thead th{font-weight:600;vertical-align:bottom}
.ja-heat th[scope=row]{text-align:left;font-weight:normal}
.ja-heat td{text-align:right;min-width:3.2em}
.ja-sec th{text-align:left;background:#f5f5f5;color:#444;font-weight:600;font-family:
  system-ui,sans-serif}
.ja-na{background:#fafafa;color:#bbb}
.ja-score{color:#333;background:#fcfcf4}
.ja-legend{display:flex;align-items:center;gap:.5em;font-size:.8em;color:#555;margin:.2em 0}
.ja-bar{display:inline-block;width:12em;height:.9em;border:1px solid #ccc}
.ja-wrap{overflow-x:auto}
"""


def _rule_css(n_cols: int) -> str:
    """The CSS that makes radio ``j`` colour the tokens with their ``--vj`` value."""
    rules = []
    for j in range(n_cols):
        sel = f".ja-r{j}:checked~.ja-toks"
        rules.append(f"{sel} .ja-t{{background:var(--v{j},#fff);opacity:var(--o{j},1)}}"
                     f"{sel} .ja-g{j}{{outline:2px solid #111;outline-offset:1px;opacity:1}}"
                     f".ja-r{j}:focus-visible~.ja-toks .ja-g{j}{{outline-style:dashed}}")
    return "\n".join(rules)


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % rgb


def _fg(rgb) -> str:
    return "#fff" if sum(rgb) < 3 * 150 else "#111"


def _esc(s) -> str:
    return _html.escape(str(s), quote=True)


def _token_view(seq, uid: str, i: int, vmax: float, max_token_width: int) -> str:
    """Running text of the tokens; the generated ones (underlined) select a column."""
    n = len(seq.generated)
    name = f"{uid}-s{i}"
    parts = ['<div class="ja-tv">',
             '<p class="ja-hint">Select a generated token (underlined) to colour the input '
             'tokens by their attribution to it.</p>']
    for j in range(n):
        checked = " checked" if j == 0 else ""
        parts.append(f'<input type="radio" class="ja-r ja-r{j}" name="{name}" '
                     f'id="{name}-g{j}" aria-label="{_esc(display_token(seq.generated_labels[j]))}"'
                     f'{checked}>')
    parts.append('<div class="ja-toks">')

    def style(values, row_exists):
        decl = []
        for j in range(n):
            v = float(values[j]) if values is not None else float("nan")
            rgb = diverging_rgb(v, vmax)
            if rgb is not None:
                decl.append(f"--v{j}:{_hex(rgb)}")
            elif row_exists:
                decl.append(f"--o{j}:.35")
        return f' style="{";".join(decl)}"' if decl else ""

    if seq.source is not None:
        parts.append('<span class="ja-lab">source</span>')
        for r, tok in enumerate(seq.source):
            vals = seq.source_attributions[r] if seq.source_attributions is not None else None
            parts.append(f'<span class="ja-t ja-in" title="{_esc(tok)}"'
                         f'{style(vals, True)}>{_esc(display_token(tok, max_token_width))}</span>')
        parts.append("<br>")
    parts.append('<span class="ja-lab">target</span>')
    for r, tok in enumerate(seq.target):
        vals = seq.target_attributions[r] if seq.target_attributions is not None else None
        text = _esc(display_token(tok, max_token_width))
        j = r - seq.attr_pos_start
        if 0 <= j < n:
            label = seq.generated_labels[j]
            parts.append(f'<label for="{name}-g{j}" class="ja-t ja-g ja-g{j}" '
                         f'title="{_esc(label)} (step {j})"{style(vals, True)}>{text}</label>')
        else:
            parts.append(f'<span class="ja-t ja-in" title="{_esc(tok)}"'
                         f'{style(vals, True)}>{text}</span>')
    parts.append("</div></div>")
    return "".join(parts)


def _heatmap(seq, vmax: float, digits: int, max_token_width: int,
             start_out: bool = False) -> str:
    gen = seq.generated_labels  # "foil → token" for contrasted steps
    n = len(gen)
    kind = value_format(vmax, digits)
    out = ['<div class="ja-wrap"><table class="ja-heat">', "<thead><tr>",
           '<th class="ja-corner" scope="col"></th>']
    for j, tok in enumerate(gen):
        out.append(f'<th class="ja-col" scope="col" title="{_esc(tok)} (step {j}, position '
                   f'{seq.attr_pos_start + j})">{_esc(display_token(tok, max_token_width))}</th>')
    out.append("</tr></thead>")
    for section, toks, a in (("source", seq.source, seq.source_attributions),
                             ("target", seq.target, seq.target_attributions)):
        if a is None:
            continue
        out.append(f'<tbody class="ja-{section}"><tr class="ja-sec"><th colspan="{n + 1}" '
                   f'scope="rowgroup">{section}</th></tr>')
        for r, tok in enumerate(toks):
            out.append(f'<tr><th scope="row" class="ja-row" title="{_esc(tok)} (position {r})">'
                       f'{_esc(display_token(tok, max_token_width))}</th>')
            for j in range(n):
                v = float(a[r, j])
                rgb = diverging_rgb(v, vmax)
                if rgb is None:
                    out.append(f'<td class="ja-cell ja-na" title="{_esc(tok)} is not an input '
                               f'of step {j}"></td>')
                    continue
                out.append(f'<td class="ja-cell" style="background:{_hex(rgb)};color:'
                           f'{_fg(rgb)}" title="{_esc(tok)} → {_esc(gen[j])}: {v!r}">'
                           f'{format_value(v, digits, kind)}</td>')
            out.append("</tr>")
        out.append("</tbody>")
    if seq.step_scores:
        out.append(f'<tbody class="ja-steps"><tr class="ja-sec"><th colspan="{n + 1}" '
                   'scope="rowgroup">step scores</th></tr>')
        for name, vals in seq.step_scores.items():
            out.append(f'<tr><th scope="row" class="ja-row">{_esc(name)}</th>')
            for j, v in enumerate(np.asarray(vals)):
                out.append(f'<td class="ja-score" title="{_esc(name)} of {_esc(gen[j])}: '
                           f'{float(v)!r}">{format_value(float(v), digits, "g")}</td>')
            out.append("</tr>")
        out.append("</tbody>")
    out.append("</table></div>")
    out.append(_legend(vmax, digits, kind, sequential=_nonnegative(seq), start_out=start_out))
    return "".join(out)


def _legend(vmax: float, digits: int, kind: str, *, sequential: bool, start_out: bool) -> str:
    hi = _hex(POSITIVE_RGB)
    if sequential:
        lo_text, grad = format_value(0.0, digits, kind), f"#ffffff,{hi}"
        what = "sequential colour scale: every value is ≥ 0"
    else:
        lo_text, grad = format_value(-vmax, digits, kind), f"{_hex(NEGATIVE_RGB)},#ffffff,{hi}"
        what = "colour scale symmetric around 0"
    if start_out:
        what += "; the decoder start token's row is left out of the scale"
    return (f'<div class="ja-legend"><span>{lo_text}</span><span class="ja-bar" '
            f'style="background:linear-gradient(90deg,{grad})"></span>'
            f'<span>{format_value(vmax, digits, kind)}</span>'
            f'<span>({what}; exact values on hover)</span></div>')


def _nonnegative(seq) -> bool:
    """Every attribution of the view is ≥ 0 (NaN ignored): e.g. the L2 norm over hidden."""
    vals = [np.asarray(a) for a in (seq.source_attributions, seq.target_attributions)
            if a is not None]
    return all(not (a < 0).any() for a in vals)


def _scale(seq, include_decoder_start: bool) -> tuple:
    """``(vmax, start_out)``: the colour scale's magnitude, and whether the decoder start
    token's target row (encoder-decoder models, position 0) was left out of it."""
    tgt = seq.target_attributions
    start_out = (not include_decoder_start and seq.source is not None and tgt is not None
                 and len(tgt) > 1)
    return scale_max(seq.source_attributions, tgt[1:] if start_out else tgt), start_out


def to_html(x, *, full_page: bool = True, title: Optional[str] = None, digits: int = 3,
            max_token_width: int = 24, aggregate: bool = True, uid: Optional[str] = None,
            path: Union[str, os.PathLike, None] = None,
            include_decoder_start: bool = False) -> str:
    """Render attributions as HTML.

    Args:
      x: an :class:`~jaxattr.results.AttributionOutput`, a
        :class:`~jaxattr.results.SequenceAttribution` or a list of views. 3-D attributions are
        aggregated with the run's default (:func:`jaxattr.aggregate.default_aggregator`)
        first. Non-negative views get a sequential scale (white to red), signed ones a
        diverging scale symmetric around 0.
      full_page: a complete document with a ``Content-Security-Policy`` that blocks every
        request (default), or a ``<div>`` fragment for notebooks.
      title: page heading (default ``"jaxattr attributions"``).
      digits: decimals shown in cells (hover shows the exact value).
      max_token_width: longer tokens are cut with ``…`` (the hover title has them whole).
      aggregate: aggregate 3-D attributions (``False`` raises instead).
      uid: prefix of element ids (default: unique per call), so several renders can share a
        notebook page.
      path: also write the page to this file (UTF-8).
      include_decoder_start: let the decoder start token's row (encoder-decoder models) set
        the colour scale too. By default it is left out: attributions to that constant token
        are often the largest and would wash out every other colour (its cells still show
        their values, clipped to the scale's ends).

    Returns:
      The HTML text.
    """
    uid = uid or f"ja{os.getpid() % 10000}x{next(_COUNTER)}"
    title = "jaxattr attributions" if title is None else title
    seqs = [(i, prepared(s, aggregate)) for i, s in sequences_of(x, aggregate)]
    n_cols = max([len(s.generated) for _, s in seqs] + [0])
    body = [f'<div class="ja-root" id="{_esc(uid)}">', f"<h1>{_esc(title)}</h1>"]
    meta = header_of(x)
    if meta:
        body.append(f'<p class="ja-meta">{_esc(meta)}</p>')
    for i, seq in seqs:
        vmax, start_out = _scale(seq, include_decoder_start)
        body.append(f'<section class="ja-seq"><h2>Sequence {i}</h2>')
        if not seq.generated:
            body.append('<p class="ja-hint">(no attributed tokens)</p></section>')
            continue
        body.append(_token_view(seq, uid, i, vmax, max_token_width))
        body.append(_heatmap(seq, vmax, digits, max_token_width, start_out))
        body.append("</section>")
    body.append("</div>")
    css = f"<style>{_CSS}{_rule_css(n_cols)}</style>"
    return page(body, css, title=title, full_page=full_page, path=path)


def save_html(x, path: Union[str, os.PathLike], **kwargs) -> Path:
    """Write :func:`to_html` (a full page) to ``path``; returns the path."""
    to_html(x, path=path, **kwargs)
    return Path(path)


class HtmlReport:
    """A rendered HTML string that notebooks display (``_repr_html_``)."""

    def __init__(self, html: str):
        self.html = html

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def page(body, css: str, *, title: str, full_page: bool = True, path=None) -> str:
    """Join ``body`` lines under ``css`` into a self-contained page (this module's
    Content-Security-Policy: nothing fetched) or, without ``full_page``, a fragment; written to
    ``path`` when given."""
    if full_page:
        text = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
                '<meta name="viewport" content="width=device-width,initial-scale=1">'
                f"<title>{_esc(title)}</title>{css}</head>\n<body>\n"
                + "\n".join(body) + "\n</body></html>\n")
    else:
        text = css + "\n" + "\n".join(body)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
