"""Helpers shared by the renderers: which sequences to draw, display tokens, colour scale."""
from __future__ import annotations

import math
import unicodedata
from typing import Any, Optional

import numpy as np

__all__ = ["sequences_of", "prepared", "display_token", "scale_max", "diverging_rgb",
           "NEGATIVE_RGB", "POSITIVE_RGB", "NAN_MARK", "format_value", "value_format",
           "header_of"]

#: Colour of the most negative value (blue) and of the most positive value (red); 0 is white.
NEGATIVE_RGB = (33, 102, 172)
POSITIVE_RGB = (178, 24, 43)
NAN_MARK = "·"


def sequences_of(x, aggregate: bool = False) -> list:
    """``[(index, SequenceAttribution)]`` for an output, a single view or a list of views.

    ``aggregate``: an output whose views still have a hidden axis is aggregated with its
    default (:func:`jaxattr.aggregate.default_aggregator`, which knows the run's method and
    target) first."""
    from ..results import AttributionOutput, SequenceAttribution
    if isinstance(x, SequenceAttribution):
        return [(0, x)]
    if isinstance(x, AttributionOutput):
        if aggregate and any(a is not None and a.ndim == 3 for s in x.sequence_attributions
                             for a in (s.source_attributions, s.target_attributions)):
            x = x.aggregate()
        return list(enumerate(x.sequence_attributions))
    if isinstance(x, (list, tuple)) and all(isinstance(s, SequenceAttribution) for s in x):
        return list(enumerate(x))
    raise TypeError(f"Cannot render a {type(x).__name__}; pass an AttributionOutput or a "
                    "SequenceAttribution (BatchAttribution pytrees have no tokens).")


def prepared(seq, aggregate: bool = True):
    """The view with 2-D attributions: 3-D (or 4-D attention) ones are aggregated with the
    view's default (:meth:`~jaxattr.results.SequenceAttribution.aggregate`: L2 norm over the
    hidden axis, mean over attention's layers and heads; columns normalised) unless
    ``aggregate=False``, which then raises."""
    nd = [a.ndim for a in (seq.source_attributions, seq.target_attributions) if a is not None]
    if any(n >= 3 for n in nd):  # [rows, steps, hidden] or attention's [.., layers, heads]
        if not aggregate:
            raise ValueError("attributions still have a hidden axis: aggregate them first "
                             "(e.g. out.aggregate()) or pass aggregate=True.")
        return seq.aggregate()
    return seq


def display_token(tok: str, max_width: Optional[int] = None) -> str:
    """A token as shown to people: control characters escaped (``\\n``, ``\\t``, ``\\x00``),
    an empty token shown as ``''``, long tokens cut with ``…``."""
    out = []
    for ch in str(tok):
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    text = "".join(out) or "''"
    if max_width is not None and len(text) > max_width:
        text = text[:max(max_width - 1, 1)] + "…"
    return text


def scale_max(*arrays) -> float:
    """Largest magnitude over the arrays (NaN ignored); 1.0 when there is none or it is 0."""
    m = 0.0
    for a in arrays:
        if a is not None and np.size(a):
            v = np.nanmax(np.abs(np.where(np.isnan(a), 0.0, a)))
            m = max(m, float(v))
    return m if m > 0 and math.isfinite(m) else 1.0


def diverging_rgb(value: float, vmax: float) -> Optional[tuple]:
    """Colour of ``value`` on a scale symmetric around 0: white at 0, blue at ``-vmax``, red
    at ``+vmax`` (clipped beyond). NaN gives ``None``."""
    if value is None or not math.isfinite(value):
        return None
    t = max(-1.0, min(1.0, value / vmax))
    end = POSITIVE_RGB if t >= 0 else NEGATIVE_RGB
    a = abs(t)
    return tuple(int(round(255 + (c - 255) * a)) for c in end)


def value_format(vmax: float, digits: int) -> str:
    """Fixed-point when values are readable with ``digits`` decimals, else scientific."""
    return "f" if vmax >= 0.5 * 10 ** (-digits + 1) and vmax < 1e5 else "e"


def format_value(v: float, digits: int, kind: str = "f") -> str:
    if v is None or not math.isfinite(v):
        return NAN_MARK if v is None or math.isnan(v) else ("inf" if v > 0 else "-inf")
    return f"{v:.{digits}{kind}}"


def header_of(x) -> Optional[str]:
    """``"method → attributed_fn · model"`` from an output's info, if any."""
    info: Any = getattr(x, "info", None)
    if not info:
        return None
    # Every field may come from someone else's file: control characters (terminal escape
    # codes) are shown escaped, never passed to the terminal.
    shown = lambda v: display_token(str(v))  # noqa: E731
    parts = []
    if info.get("method"):
        parts.append(shown(info["method"]))
    if info.get("attributed_fn"):
        parts.append(f"of {shown(info['attributed_fn'])}")
    if info.get("model"):
        parts.append(f"· {shown(info['model'])}")
    if info.get("aggregations"):
        parts.append("· " + " → ".join(map(shown, info["aggregations"])))
    return " ".join(parts) or None
