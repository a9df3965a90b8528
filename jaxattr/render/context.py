"""Views of PECoRe results (:class:`~jaxattr.context.AttributeContextOutput`).

- Terminal: the current output tokens with the context-sensitive ones marked (``*``) and their
  CTI scores, then, per selected token, the context tokens coloured by their contribution
  (a diverging scale symmetric around 0; plain text lists the values) with the salient ones
  (``|score| >= mean + λ·std``, ``attribution_std_threshold`` / ``attribution_topk``) marked.
- HTML: the same in the report style of :mod:`jaxattr.render.html` (inline CSS, no script, a
  Content-Security-Policy that forbids every request, every token escaped, exact values on
  hover).
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from ..context.selection import select_tokens
from ._common import diverging_rgb, display_token, scale_max
from .html import _CSS, _esc, _fg, _hex, page

__all__ = ["context_to_text", "context_to_html", "salient_cues"]

_EXTRA_CSS = """
.ja-cti{outline:2px solid #111;outline-offset:1px;font-weight:600}
.ja-cue{font-weight:700;border-color:#111}
.ja-sc{color:#555;font-size:.75em;margin-left:.15em}
.ja-cci{margin:.2em 0 .8em}
"""


def _option(info: Optional[dict], name: str, default):
    value = (info or {}).get(name, default)
    return default if value is None and default is not None else value


def salient_cues(out, i: int, side: str = "input") -> list:
    """Indices of the salient context tokens of ``out.cci_scores[i]`` on ``side``
    (``"input"`` / ``"output"``): ``|score| >= mean + λ·std`` with the run's
    ``attribution_std_threshold`` (λ) and ``attribution_topk``."""
    scores = getattr(out.cci_scores[i], f"{side}_context_scores")
    if not scores:
        return []
    toks = [str(j) for j in range(len(scores))]
    kept, _ = select_tokens(toks, scores,
                            std_threshold=_option(out.info, "attribution_std_threshold", 1.0),
                            topk=_option(out.info, "attribution_topk", None))
    return [j for j, _, _ in kept]


def _ansi(text: str, rgb) -> str:
    if rgb is None:
        return text
    return f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;" + \
        ("255;255;255" if sum(rgb) < 450 else "17;17;17") + f"m{text}\x1b[0m"


def _cti_line(out, color: bool, digits: int) -> list:
    selected = set(out.cti_idx)
    scores = np.asarray(out.cti_scores or [], np.float64)
    vmax = scale_max(scores)
    parts = []
    for j, tok in enumerate(out.output_current_tokens or []):
        shown = display_token(tok)
        if j in selected:
            shown = f"*{shown}*"
        if color:
            shown = _ansi(shown, diverging_rgb(float(scores[j]), vmax))
        parts.append(shown)
    values = " ".join(f"{display_token(t)}={s:.{digits}f}"
                      for t, s in zip(out.output_current_tokens or [], scores))
    return ["Output (current): " + " ".join(parts), f"CTI scores: {values}"]


def _context_line(tokens, scores, cues, color: bool, digits: int) -> str:
    vmax = scale_max(np.asarray(scores, np.float64))
    parts = []
    for j, (tok, s) in enumerate(zip(tokens, scores)):
        shown = display_token(tok) + ("*" if j in cues else "")
        if color:
            parts.append(_ansi(shown, diverging_rgb(float(s), vmax)))
        else:
            parts.append(f"{shown}({s:.{digits}g})")
    return " ".join(parts)


def context_to_text(out, *, color: bool = False, digits: int = 3) -> str:
    """The terminal view of one result (see the module docstring). ``color`` adds ANSI
    24-bit background colours; without it every value is printed next to its token."""
    lines = ["Context attribution (PECoRe)"]
    if out.input_context is not None:
        lines.append(f"Input context: {out.input_context}")
    if out.output_context is not None:
        lines.append(f"Output context: {out.output_context}")
    lines += _cti_line(out, color, digits)
    thr = out.cti_threshold
    lines.append(f"Context-sensitive tokens (*): {len(out.cci_scores)}"
                 + ("" if thr is None else f", threshold {float(thr):.{digits}g}"))
    for i, cci in enumerate(out.cci_scores):
        head = f"[{i}] {display_token(cci.cti_token)!s} (index {cci.cti_idx}, CTI " \
               f"{cci.cti_score:.{digits}g})"
        if cci.contrast_token is not None:
            head += f" vs contextless {display_token(cci.contrast_token)}"
        lines.append(head)
        for side, tokens in (("input", out.input_context_tokens),
                             ("output", out.output_context_tokens)):
            scores = getattr(cci, f"{side}_context_scores")
            if scores is not None and tokens:
                cues = set(salient_cues(out, i, side))
                lines.append(f"    {side} context: "
                             + _context_line(tokens, scores, cues, color, digits))
    return "\n".join(lines) + "\n"


def _span(tok, value: float, vmax: float, classes: str, title: str, extra: str = "") -> str:
    rgb = diverging_rgb(value, vmax)
    style = "" if rgb is None else f' style="background:{_hex(rgb)};color:{_fg(rgb)}"'
    return (f'<span class="ja-t {classes}" title="{_esc(title)}"{style}>'
            f"{_esc(display_token(tok, 32))}{extra}</span>")


def context_to_html(out, *, full_page: bool = True, title: Optional[str] = None,
                    digits: int = 3, path: Union[str, os.PathLike, None] = None) -> str:
    """The HTML view of one result: output tokens coloured by CTI score (context-sensitive
    ones outlined, ``ja-cti``), then one block per selected token with the context tokens
    coloured by their CCI score (salient ones bold, ``ja-cue``). ``full_page=False`` gives a
    notebook fragment; ``path`` also writes the page."""
    title = "jaxattr context attribution (PECoRe)" if title is None else title
    selected = set(out.cti_idx)
    cti = np.asarray(out.cti_scores or [], np.float64)
    vmax = scale_max(cti)
    body = ['<div class="ja-root">', f"<h1>{_esc(title)}</h1>"]
    meta = []
    if out.info:
        for key in ("model_name_or_path", "attribution_method", "attributed_fn",
                    "context_sensitivity_metric"):
            if out.info.get(key) is not None:
                meta.append(f"{key}: {out.info[key]}")
    if out.cti_threshold is not None:
        meta.append(f"CTI threshold: {float(out.cti_threshold):.{digits}g}")
    if meta:
        body.append(f'<p class="ja-meta">{_esc(" · ".join(meta))}</p>')
    for label, text in (("Input context", out.input_context),
                        ("Output context", out.output_context)):
        if text is not None:
            body.append(f'<p class="ja-meta">{label}: {_esc(text)}</p>')
    body.append('<h2>Output tokens (CTI)</h2><div class="ja-toks">'
                '<span class="ja-lab">output</span>')
    for j, tok in enumerate(out.output_current_tokens or []):
        cls = "ja-out ja-cti" if j in selected else "ja-out"
        body.append(_span(tok, float(cti[j]), vmax, cls, f"{tok}: {cti[j]:.6g}"))
    body.append("</div>")
    body.append("<h2>Contextual cues (CCI)</h2>")
    if not out.cci_scores:
        body.append('<p class="ja-hint">No token passed the CTI threshold.</p>')
    for i, cci in enumerate(out.cci_scores):
        head = (f"{display_token(cci.cti_token)} (index {cci.cti_idx}, CTI "
                f"{cci.cti_score:.{digits}g})")
        if cci.contrast_token is not None:
            head += f" vs contextless {display_token(cci.contrast_token)}"
        body.append(f'<section class="ja-cci"><p class="ja-hint ja-head">{_esc(head)}</p>')
        for side, tokens in (("input", out.input_context_tokens),
                             ("output", out.output_context_tokens)):
            scores = getattr(cci, f"{side}_context_scores")
            if scores is None or not tokens:
                continue
            cues = set(salient_cues(out, i, side))
            cmax = scale_max(np.asarray(scores, np.float64))
            body.append(f'<div class="ja-toks"><span class="ja-lab">{side}</span>')
            for k, (tok, s) in enumerate(zip(tokens, scores)):
                cls = "ja-ctx ja-cue" if k in cues else "ja-ctx"
                body.append(_span(tok, float(s), cmax, cls,
                                  f"{tok} → {cci.cti_token}: {s:.6g}"))
            body.append("</div>")
        body.append("</section>")
    body.append("</div>")
    css = f"<style>{_CSS}{_EXTRA_CSS}</style>"
    return page(body, css, title=title, full_page=full_page, path=path)
