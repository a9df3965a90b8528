"""Aggregation of attributions: small composable functions over results.

Every function is pure (it returns a new object) and takes the result as its first argument
and options as keywords, so steps chain in any order::

    from jaxattr import aggregate as agg
    seq = agg.normalize(agg.reduce_hidden(agg.merge_words(seq), how="sum"))
    # or, with the methods of the results:
    seq = out[0].merge_words().reduce_hidden(how="sum").normalize()

What each function accepts:

==========================  ====================  =================  ====================
function                    SequenceAttribution   AttributionOutput  BatchAttribution
                            (host view, numpy)    (every sequence)   (pytree; jit-safe)
==========================  ====================  =================  ====================
:func:`reduce_hidden`       yes                   yes                yes
:func:`normalize`           yes                   yes                yes
:func:`rescale`             yes                   yes                yes
:func:`difference`          yes                   yes (pairwise)     yes
:func:`merge_words`         yes                   yes                no (needs tokens)
:func:`merge_spans`         yes                   yes                no (needs tokens)
:func:`slice_tokens`        yes                   yes                no (needs tokens)
==========================  ====================  =================  ====================

Shapes (host view): ``source_attributions[len(source), n_steps, (H)]``,
``target_attributions[len(target), n_steps, (H)]`` with NaN where the row token is not an input
of the step, ``step_scores[name][n_steps]``. The hidden axis ``H`` is gone after
:func:`reduce_hidden`. Every function that works along rows or columns also works while the
hidden axis is still there (it is treated elementwise).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import views as _views

__all__ = [
    # hidden-axis reductions (arrays)
    "vnorm", "hidden_sum", "hidden_mean", "absmax", "REDUCTIONS", "default_aggregator",
    "SIGNED_METHODS",
    # span reductions and step-score reductions
    "SPAN_REDUCTIONS", "STEP_SCORE_REDUCTIONS", "step_score_reduction",
    # composable operations on results
    "reduce_hidden", "normalize", "rescale", "merge_words", "merge_spans", "merge_groups",
    "difference", "slice_tokens",
    # word boundaries
    "word_groups", "detect_scheme", "SCHEMES",
    # legacy helpers
    "normalize_columns", "aggregate_sequence",
]


def _xp(a):
    """``numpy`` for numpy arrays, ``jax.numpy`` otherwise."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return np
    import jax.numpy as jnp
    return jnp


# --------------------------------------------------------------------------- hidden axis
def vnorm(a):
    """L2 norm over the last (hidden) axis: ``[..., H] -> [...]``. NaN stays NaN."""
    xp = _xp(a)
    return xp.sqrt(xp.sum(a * a, axis=-1))


def hidden_sum(a):
    """Sum over the hidden axis: ``[..., H] -> [...]``."""
    return a.sum(-1)


def hidden_mean(a):
    """Mean over the hidden axis: ``[..., H] -> [...]``."""
    return a.mean(-1)


def absmax(a):
    """The signed value of largest magnitude over the hidden axis: ``[..., H] -> [...]``.
    NaN entries are ignored; an all-NaN vector gives NaN."""
    xp = _xp(a)
    mag = xp.where(xp.isnan(a), -xp.inf, xp.abs(a))
    idx = xp.argmax(mag, axis=-1)
    return xp.take_along_axis(a, idx[..., None], axis=-1)[..., 0]


REDUCTIONS: dict[str, Callable] = {
    "vnorm": vnorm, "sum": hidden_sum, "mean": hidden_mean, "absmax": absmax,
}


# --------------------------------------------------------------------------- span reductions
def _nan_absmax(a: np.ndarray, axis: int) -> np.ndarray:
    mag = np.where(np.isnan(a), -np.inf, np.abs(a))
    idx = np.expand_dims(np.argmax(mag, axis=axis), axis)
    return np.take_along_axis(a, idx, axis=axis).squeeze(axis)


def _all_nan(a: np.ndarray, axis: int) -> np.ndarray:
    return np.isnan(a).all(axis=axis)


def _nan_sum(a, axis):
    return np.where(_all_nan(a, axis), np.nan, np.nansum(a, axis=axis))


def _nan_prod(a, axis):
    return np.where(_all_nan(a, axis), np.nan, np.nanprod(a, axis=axis))


def _nan_max(a, axis):
    return np.where(_all_nan(a, axis), np.nan, np.max(np.where(np.isnan(a), -np.inf, a), axis))


def _nan_min(a, axis):
    return np.where(_all_nan(a, axis), np.nan, np.min(np.where(np.isnan(a), np.inf, a), axis))


def _first(a, axis):
    return np.take(a, 0, axis=axis)


def _last(a, axis):
    return np.take(a, -1, axis=axis)


#: Reductions over the tokens of a merged span: ``fn(values, axis) -> reduced``; NaN entries
#: (tokens that do not exist for that step) are ignored, all-NaN gives NaN.
SPAN_REDUCTIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "absmax": _nan_absmax, "sum": _nan_sum, "mean": None,  # mean: sum / count (see _merge_axis)
    "max": _nan_max, "min": _nan_min, "prod": _nan_prod, "first": _first, "last": _last,
}

#: How each step score combines over the generated tokens of a merged span. Probabilities
#: multiply (the probability of the whole word); log-probabilities, entropies and other
#: information quantities add up; scores without a natural composition are averaged.
STEP_SCORE_REDUCTIONS: dict[str, str] = {
    "probability": "prod", "perplexity": "prod", "contrast_prob": "prod",
    "logprob": "sum", "entropy": "sum", "crossentropy": "sum", "surprisal": "sum",
    "kl_divergence": "sum", "pcxmi": "sum", "contrast_logprob": "sum",
    "logit": "mean", "contrast_logits": "mean", "contrast_logits_diff": "mean",
    "contrast_prob_diff": "mean",
}


def step_score_reduction(name: str, override: Union[None, str, Callable, dict] = None):
    """The reduction used to merge step score ``name`` over a span.

    ``override`` is a reduction name or function for every score, or a dict ``{name: how}``.
    Unknown names fall back to ``"mean"``.
    """
    how: Any = None
    if isinstance(override, dict):
        how = override.get(name)
    elif override is not None:
        how = override
    if how is None:
        how = STEP_SCORE_REDUCTIONS.get(name, "mean")
    return how


def _merge_axis(a: np.ndarray, groups: Sequence[tuple], axis: int, how) -> np.ndarray:
    """Reduce ``a`` over each ``(start, end)`` group along ``axis``."""
    if a.shape[axis] == 0 or len(groups) == 0:
        shape = list(a.shape)
        shape[axis] = len(groups)
        return np.full(shape, np.nan, a.dtype)
    if all(e - s == 1 for s, e in groups):
        return np.take(a, [s for s, _ in groups], axis=axis)
    parts = []
    for s, e in groups:
        block = np.take(a, range(s, e), axis=axis)
        if how == "mean":
            count = np.sum(~np.isnan(block), axis=axis)
            total = np.nansum(block, axis=axis)
            with np.errstate(invalid="ignore", divide="ignore"):
                parts.append(np.where(count == 0, np.nan, total / np.maximum(count, 1)))
        elif callable(how):
            parts.append(np.asarray(how(block, axis)))
        else:
            parts.append(SPAN_REDUCTIONS[how](block, axis))
    return np.stack(parts, axis=axis).astype(a.dtype, copy=False)


def _check_how(how, table, what):
    if callable(how) or how in table:
        return how
    raise ValueError(f"Unknown {what} {how!r}; choose one of {sorted(table)} or pass a function.")


# --------------------------------------------------------------------------- dispatch
def _kind(x) -> str:
    from .results import AttributionOutput, BatchAttribution, SequenceAttribution
    if isinstance(x, SequenceAttribution):
        return "seq"
    if isinstance(x, AttributionOutput):
        return "out"
    if isinstance(x, BatchAttribution):
        return "batch"
    raise TypeError(f"Expected a SequenceAttribution, AttributionOutput or BatchAttribution, "
                    f"got {type(x).__name__}.")


def _over_output(out, seq_fn, batch_fn=None, record: Optional[str] = None):
    from .results import AttributionOutput
    info = dict(out.info)
    if record:
        info["aggregations"] = list(info.get("aggregations", [])) + [record]
    batches = [batch_fn(b) for b in out.batches] if batch_fn is not None else []
    return AttributionOutput([seq_fn(s) for s in out.sequence_attributions], info, batches)


def _describe(name, **kwargs) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()
                     if v is not None and not callable(v))
    return f"{name}({args})"


def _tokens_only(name):
    return TypeError(f"{name} needs token strings: apply it to the host view "
                     "(an AttributionOutput or a SequenceAttribution), not to a BatchAttribution.")


# --------------------------------------------------------------------------- reduce / scale
def _resolve_reduction(how):
    fn = how if callable(how) else REDUCTIONS.get(how)
    if fn is None:
        raise ValueError(f"Unknown aggregator {how!r}; choose one of {sorted(REDUCTIONS)} "
                         "or pass a function [..., H] -> [...].")
    return fn


def reduce_hidden(x, how: Union[str, Callable] = "vnorm"):
    """Reduce the hidden axis of the attributions.

    Args:
      x: a result. Host view: ``[R, T, H] -> [R, T]`` (already 2-D arrays pass through).
        ``BatchAttribution``: ``[B, S, T, H] -> [B, S, T]`` (``jit``-safe). Several trailing
        axes (attention's ``[layers, heads]``) are reduced together.
      how: ``"vnorm"`` (L2 norm, default), ``"sum"``, ``"mean"``, ``"absmax"`` or a function
        ``[..., H] -> [...]``.
    """
    base = _resolve_reduction(how)
    kind = _kind(x)
    keep = 3 if kind == "batch" else 2  # leading axes: ([B,] rows, cols)

    def fn(a):  # several trailing axes (attention: [layers, heads]) are reduced together
        return base(a.reshape(a.shape[:keep] + (-1,)) if a.ndim > keep + 1 else a)

    if kind == "out":
        return _over_output(x, lambda s: reduce_hidden(s, how),
                            lambda b: reduce_hidden(b, how), _describe("reduce_hidden", how=how))
    if kind == "batch":
        red = lambda a: a if a is None or a.ndim == 3 else fn(a)  # noqa: E731
        return x.replace(source_attributions=red(x.source_attributions),
                         target_attributions=red(x.target_attributions))
    red = lambda a: a if a is None or a.ndim == 2 else np.asarray(fn(a))  # noqa: E731
    return dataclasses.replace(x, source_attributions=red(x.source_attributions),
                               target_attributions=red(x.target_attributions))


def _batch_parts(b):
    """Attributions of a batch with invalid entries zeroed; column axis is 2."""
    parts = []
    if b.source_attributions is not None:
        m = b.source_mask if b.source_mask is not None else None
        a = b.source_attributions
        if m is not None:
            m = m[:, :, None]
            a = a * m.reshape(m.shape + (1,) * (a.ndim - 3)).astype(a.dtype)
        parts.append(a)
    else:
        parts.append(None)
    if b.target_attributions is not None:
        a = b.target_attributions
        m = b.target_row_mask
        parts.append(a * m.reshape(m.shape + (1,) * (a.ndim - 3)).astype(a.dtype))
    else:
        parts.append(None)
    return parts


def _column_stat(parts, stat, col_axis):
    """Per-column statistic over every axis but ``col_axis`` (and the leading batch axis for
    batches): ``stat`` is ``"sum"`` (of abs) or ``"max"`` (of abs). NaN ignored."""
    total = None
    for p in parts:
        if p is None:
            continue
        xp = _xp(p)
        mag = xp.abs(p)
        if xp is np:
            mag = np.where(np.isnan(mag), 0.0, mag)
        axes = tuple(i for i in range(p.ndim) if i != col_axis and not (col_axis == 2 and i == 0))
        v = mag.sum(axis=axes) if stat == "sum" else mag.max(axis=axes, initial=0.0)
        total = v if total is None else (total + v if stat == "sum" else xp.maximum(total, v))
    return total


def _scale_columns(x, stat: str, name: str):
    kind = _kind(x)
    if kind == "out":
        return _over_output(x, lambda s: _scale_columns(s, stat, name),
                            lambda b: _scale_columns(b, stat, name), f"{name}()")
    if kind == "batch":
        src, tgt = _batch_parts(x)
        total = _column_stat([src, tgt], stat, 2)            # [B, T]
        if total is None:
            return x
        xp = _xp(total)
        total = xp.where(total == 0, 1.0, total)

        def div(a):
            if a is None:
                return None
            return a / total.reshape(total.shape[:1] + (1,) + total.shape[1:]
                                     + (1,) * (a.ndim - 3)).astype(a.dtype)
        return x.replace(source_attributions=div(src), target_attributions=div(tgt))
    parts = [x.source_attributions, x.target_attributions]
    total = _column_stat(parts, stat, 1)                        # [T]
    if total is None:
        return x
    total = np.where(total == 0, 1.0, total)

    def div(a):
        if a is None:
            return None
        return (a / total.reshape((1, -1) + (1,) * (a.ndim - 2))).astype(a.dtype, copy=False)
    return dataclasses.replace(x, source_attributions=div(parts[0]),
                               target_attributions=div(parts[1]))


def normalize(x):
    """Scale every generated column so that the absolute values of its source and target
    attributions (and hidden entries, if any) sum to 1. NaN entries are ignored; an all-zero
    column stays zero. Accepts every result type (``BatchAttribution``: ``jit``-safe)."""
    return _scale_columns(x, "sum", "normalize")


def rescale(x):
    """Scale every generated column so that its entry of largest magnitude (over source and
    target attributions) is ±1: values end in ``[-1, 1]`` and signs are kept. Accepts every
    result type."""
    return _scale_columns(x, "max", "rescale")


_normalize = normalize


def normalize_columns(*parts):
    """Scale every column so that the absolute values of all ``parts`` (e.g. source and target
    attributions ``[R_i, T]``) sum to 1 jointly, NaN ignored. ``None`` parts pass through."""
    total = _column_stat(parts, "sum", 1)
    if total is None:
        return parts
    total = np.where(total == 0, 1.0, total)
    return tuple(None if p is None else p / total.reshape((1, -1) + (1,) * (p.ndim - 2))
                 for p in parts)


# Methods whose attribution is a signed share of s(x) - s(baseline) (completeness), and
# contrastive targets, whose sign says "for the output" or "for the alternative".
SIGNED_METHODS = frozenset({"integrated_gradients", "layer_integrated_gradients",
                            "gradient_shap", "occlusion", "sequential_integrated_gradients",
                            "deeplift", "layer_deeplift"})


def default_aggregator(info: dict) -> str:
    """The reduction :meth:`AttributionOutput.aggregate` uses when given none, from a run's
    ``info``: ``"mean"`` (over layers and heads) for ``attention``; the signed ``"sum"`` where
    the sign is the point — integrated gradients, gradient SHAP, occlusion (each token's share
    of ``s(x) - s(baseline)``) and contrastive attributed functions (evidence for the output
    against the alternative) unless the method is the unsigned saliency; ``"vnorm"`` (L2, as
    in Inseq) otherwise."""
    method = info.get("method")
    if method in ("attention", "attention_rollout", "attention_flow", "value_zeroing", "alti"):
        return "mean"
    if method in SIGNED_METHODS:
        return "sum"
    from .targets import TARGETS, target_needs
    fn = TARGETS.get(info.get("attributed_fn"))
    contrastive = fn is not None and bool(target_needs(fn) & {"contrast", "contrast_logits"})
    unsigned = method in ("saliency", "layer_saliency", "smoothgrad", "smoothgrad_sq",
                          "vargrad") and (info.get("method_kwargs") or {}).get("abs", True)
    if contrastive and not unsigned:
        return "sum"
    return "vnorm"


def aggregate_sequence(seq, aggregator: Any = None, *, normalize: bool = True):
    """Reduce the hidden axis of a :class:`SequenceAttribution` and normalise columns.

    Args:
      seq: the sequence view; attributions ``[R, T, H]``.
      aggregator: ``"vnorm"``, ``"sum"``, ``"mean"``, ``"absmax"`` or a function
        ``[R, T, H] -> [R, T]``; default: the view's ``default_aggregator`` (``"mean"`` over
        layers and heads for attention weights), else ``"vnorm"``.
      normalize: make each column's absolute values sum to 1 over source and target rows.

    Returns:
      A new view with ``[R, T]`` attributions. Already-aggregated (2-D) views are only
      normalised.
    """
    out = reduce_hidden(seq, aggregator or getattr(seq, "default_aggregator", None) or "vnorm")
    return _normalize(out) if normalize else out


# --------------------------------------------------------------------------- word boundaries
SCHEMES = ("bytelevel", "sentencepiece", "wordpiece", "none")

#: Tokens taken as special when no tokenizer says otherwise: ``<s>``, ``</s>``, ``<pad>``,
#: ``<unk>``, ``<mask>``, ``<bos>``, ``<eos>``, ``<|endoftext|>``-style, ``<extra_id_0>``,
#: ``[CLS]``-style, and language tags (``__en__``, ``>>fr<<``, ``en_XX``).
_SPECIAL_RE = re.compile(
    r"^(</?s>|<(pad|unk|mask|bos|eos|sep|cls|eot|eod)>|<\|[^|<>\s]+\|>|<extra_id_\d+>"
    r"|<(start|end)_of_[a-z_]+>|\[[A-Z][A-Z_]*\]|__[a-z]{2,3}(_[A-Za-z]+)?__|>>[a-z_]+<<"
    r"|[a-z]{2}_[A-Z]{2})$")
_BYTELEVEL_SPACE = ("Ġ", "Ċ", "ĉ")          # byte-level space, newline, tab
_BYTELEVEL_BREAK_AFTER = ("Ċ", "ĉ")


def detect_scheme(tokens: Sequence[str] = (), tokenizer: Any = None) -> str:
    """Which word-boundary convention the tokens follow.

    Returns ``"bytelevel"`` (GPT-2 style ``Ġword``), ``"sentencepiece"`` (``▁word``),
    ``"wordpiece"`` (``word ##piece``) or ``"none"`` (no marker found: every token is a word).
    A tokenizer, when given, decides from its pre-tokenizer/decoder/model; otherwise the
    markers in ``tokens`` do.
    """
    if tokenizer is not None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            names = " ".join(type(getattr(backend, a, None)).__name__
                             for a in ("model", "decoder", "pre_tokenizer"))
            text = names + " " + repr(getattr(backend, "pre_tokenizer", ""))
            if "WordPiece" in text:
                return "wordpiece"
            if "ByteLevel" in text:
                return "bytelevel"
            if "Metaspace" in text:
                return "sentencepiece"
        if "SentencePiece" in repr(type(tokenizer).__mro__) or hasattr(tokenizer, "sp_model"):
            return "sentencepiece"
    toks = [t for t in tokens if not _SPECIAL_RE.match(t)]
    if any(t.startswith("##") and len(t) > 2 for t in toks):
        return "wordpiece"
    if any("▁" in t for t in toks):
        return "sentencepiece"
    if any(t.startswith(_BYTELEVEL_SPACE) for t in toks):
        return "bytelevel"
    return "none"


def word_groups(tokens: Sequence[str], *, scheme: str = "auto", tokenizer: Any = None,
                special_tokens: Optional[Sequence[str]] = None,
                boundaries: Sequence[int] = ()) -> list[tuple[int, int]]:
    """Split ``tokens`` into words: a list of half-open ``(start, end)`` index ranges that
    cover every token in order.

    A token starts a new word when it is the first one, when it carries the scheme's word
    marker (``Ġ``/``Ċ`` byte-level, ``▁`` sentencepiece, anything but ``##…`` for WordPiece),
    when it or the previous token is a special token (each special token is a word of its
    own; ``<s>``, ``</s>``, ``<pad>``, ``<|endoftext|>``, ``[CLS]`` … or the tokenizer's own),
    after a byte-level newline or tab, and at every index in ``boundaries``.

    Args:
      tokens: token strings.
      scheme: ``"auto"`` (from ``tokenizer``, else from the markers), or one of
        :data:`SCHEMES`.
      tokenizer: a Hugging Face tokenizer (optional): decides the scheme and special tokens.
      special_tokens: explicit special tokens (default: the tokenizer's, else a pattern).
      boundaries: indices where a word must start (e.g. where the generation begins).
    """
    if scheme == "auto":
        scheme = detect_scheme(tokens, tokenizer)
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown word scheme {scheme!r}; choose 'auto' or one of {SCHEMES}.")
    if special_tokens is None and tokenizer is not None:
        special_tokens = list(getattr(tokenizer, "all_special_tokens", []) or [])
    specials = set(special_tokens) if special_tokens is not None else None
    forced = set(boundaries)

    def is_special(t):
        return t in specials if specials is not None else bool(_SPECIAL_RE.match(t))

    starts = []
    for i, tok in enumerate(tokens):
        if i == 0 or i in forced or is_special(tok) or is_special(tokens[i - 1]):
            starts.append(i)
        elif scheme == "bytelevel":
            if tok.startswith(_BYTELEVEL_SPACE) or tokens[i - 1].endswith(_BYTELEVEL_BREAK_AFTER):
                starts.append(i)
        elif scheme == "sentencepiece":
            if tok.startswith("▁"):
                starts.append(i)
        elif scheme == "wordpiece":
            if not tok.startswith("##"):
                starts.append(i)
        else:
            starts.append(i)
    ends = starts[1:] + [len(tokens)]
    return list(zip(starts, ends))


def _join(tokens: Sequence[str], scheme: str) -> str:
    if scheme == "wordpiece":
        return tokens[0] + "".join(t[2:] if t.startswith("##") else t for t in tokens[1:])
    if scheme == "bytelevel":
        return bytelevel_to_text("".join(tokens))
    return "".join(tokens)


def _byte_alphabet() -> dict:
    """Byte-level BPE's alphabet (GPT-2, RoBERTa, …): ``{character: byte}``. Printable
    Latin-1 bytes stand for themselves; the others (controls, space, 0x7f-0xa0, 0xad) are
    shifted to ``chr(256 + k)`` in byte order, which is why a space shows as ``Ġ``."""
    printable = [b for b in range(256)
                 if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    shifted = [b for b in range(256) if b not in set(printable)]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + k): b for k, b in enumerate(shifted)})
    return table


_BYTE_OF = _byte_alphabet()
_MARKER_OF = {" ": "Ġ", "\n": "Ċ", "\t": "ĉ"}


def bytelevel_to_text(word: str) -> str:
    """A byte-level token (or merged word) as the text it encodes, keeping the ``Ġ``/``Ċ``/
    ``ĉ`` markers: ``"ĠHÃ©llo"`` -> ``"ĠHéllo"``. Returned unchanged when it is not a whole
    UTF-8 sequence (e.g. a character split across words) or not byte-level at all."""
    if all(ord(ch) < 0x80 or ch in _BYTELEVEL_SPACE for ch in word):
        return word
    try:
        raw = bytes(_BYTE_OF[ch] for ch in word)
        text = raw.decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return word
    return "".join(_MARKER_OF.get(ch, ch) for ch in text)


# --------------------------------------------------------------------------- merging
def _complete_groups(spans, n: int, what: str) -> list[tuple[int, int]]:
    """Validate spans (half-open, sorted, disjoint) and fill the gaps with single tokens."""
    pairs = []
    for span in spans:
        if (not isinstance(span, (tuple, list)) or len(span) != 2
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                           for v in span)):
            raise ValueError(f"{what}_spans must be a list of (start, end) pairs of integers, "
                             f"e.g. [(1, 4)]; got the item {span!r}.")
        pairs.append((int(span[0]), int(span[1])))
    spans = sorted(pairs)
    out, pos = [], 0
    for s, e in spans:
        if s < 0:
            s += n
        if e < 0:
            e += n
        if not 0 <= s < e <= n:
            raise ValueError(f"{what} span ({s}, {e}) is empty or outside 0..{n}.")
        if s < pos:
            raise ValueError(f"{what} spans overlap at ({s}, {e}).")
        out.extend((i, i + 1) for i in range(pos, s))
        out.append((s, e))
        pos = e
    out.extend((i, i + 1) for i in range(pos, n))
    return out


def merge_groups(seq, *, source_groups=None, target_groups=None,
                 how: Union[str, Callable] = "absmax", step_scores_how=None,
                 scheme: str = "none"):
    """Merge contiguous token groups of a host view: the core of :func:`merge_words` and
    :func:`merge_spans`.

    Args:
      seq: a :class:`~jaxattr.results.SequenceAttribution`.
      source_groups, target_groups: half-open ``(start, end)`` ranges covering every token
        in order (``None``: unchanged). A target group may not cross ``attr_pos_start`` or
        ``attr_pos_end`` (the boundaries of the generated columns).
      how: reduction over the rows and columns of a group: ``"absmax"`` (default, Inseq's:
        the signed value of largest magnitude), ``"sum"``, ``"mean"``, ``"max"``, ``"min"``,
        or a function ``fn(values, axis) -> reduced`` applied along rows then columns.
        NaN entries (tokens not yet generated) are ignored.
      step_scores_how: reduction of step scores over merged columns (see
        :func:`step_score_reduction`).
      scheme: how token strings are joined (``"wordpiece"`` drops the ``##`` markers).

    Returns:
      A new view; merged ids become ``None`` (tokens no longer map one-to-one to ids).
    """
    _check_how(how, SPAN_REDUCTIONS, "span reduction")
    src_attr, tgt_attr, source, target = (seq.source_attributions, seq.target_attributions,
                                          seq.source, seq.target)
    step_scores, start, end = dict(seq.step_scores), seq.attr_pos_start, seq.attr_pos_end
    source_ids, target_ids = seq.source_ids, seq.target_ids
    if source_groups is not None and seq.source is not None:
        source_groups = [tuple(g) for g in source_groups]
        _check_cover(source_groups, len(seq.source), "source")
        if src_attr is not None:
            src_attr = _merge_axis(src_attr, source_groups, 0, how)
        source = [_join(seq.source[s:e], scheme) for s, e in source_groups]
        if any(e - s > 1 for s, e in source_groups):
            source_ids = None
    if target_groups is not None:
        target_groups = [tuple(g) for g in target_groups]
        _check_cover(target_groups, len(seq.target), "target")
        for s, e in target_groups:
            for b in (start, end):
                if s < b < e:
                    raise ValueError(
                        f"target group ({s}, {e}) crosses position {b}, a boundary of the "
                        f"attributed tokens target[{start}:{end}]; split it there.")
        col_groups = [(s - start, e - start) for s, e in target_groups if start <= s and e <= end]
        if tgt_attr is not None:
            tgt_attr = _merge_axis(tgt_attr, target_groups, 0, how)
            tgt_attr = _merge_axis(tgt_attr, col_groups, 1, how)
        if src_attr is not None:
            src_attr = _merge_axis(src_attr, col_groups, 1, how)
        step_scores = {k: _merge_axis(np.asarray(v), col_groups, 0,
                                      _check_how(step_score_reduction(k, step_scores_how),
                                                 SPAN_REDUCTIONS, "step score reduction"))
                       for k, v in step_scores.items()}
        new_index = {s: i for i, (s, _) in enumerate(target_groups)}
        start = new_index.get(start, len(target_groups))
        end = new_index.get(end, len(target_groups))
        target = [_join(seq.target[s:e], scheme) for s, e in target_groups]
        if any(e - s > 1 for s, e in target_groups):
            target_ids = None
        if getattr(seq, "foil_tokens", None) is not None:
            foils = seq.foil_tokens
            seq = dataclasses.replace(seq, foil_tokens=[
                None if all(f is None for f in foils[a:b])
                else _join([t if f is None else f for f, t in
                            zip(foils[a:b], seq.generated[a:b])], scheme)
                for a, b in col_groups])
    return dataclasses.replace(seq, source=source, target=target, source_attributions=src_attr,
                               target_attributions=tgt_attr, step_scores=step_scores,
                               attr_pos_start=start, attr_pos_end=end, source_ids=source_ids,
                               target_ids=target_ids)


def _check_cover(groups, n, what):
    pos = 0
    for s, e in groups:
        if s != pos or e <= s:
            raise ValueError(f"{what} groups must be contiguous, non-empty and cover 0..{n} "
                             f"in order; got {groups}.")
        pos = e
    if pos != n:
        raise ValueError(f"{what} groups cover 0..{pos} but there are {n} tokens.")


def merge_words(x, *, tokenizer: Any = None, scheme: str = "auto",
                how: Union[str, Callable] = "absmax", step_scores_how=None,
                special_tokens: Optional[Sequence[str]] = None):
    """Merge subword tokens into words on source and target (rows and generated columns).

    Word boundaries follow the tokenizer's convention (see :func:`word_groups`): byte-level
    ``Ġ``, sentencepiece ``▁`` or WordPiece ``##``. Target words are split where the
    attributed tokens begin and end (``attr_pos_start``/``attr_pos_end``). Merged tokens are
    the concatenated pieces (WordPiece markers dropped; byte-level pieces decoded to the text
    they encode, ``HÃ©llo`` -> ``Héllo``, word markers ``Ġ`` kept).

    Args:
      x: a :class:`SequenceAttribution` or :class:`AttributionOutput`.
      tokenizer: optional tokenizer that fixes the scheme and the special tokens.
      scheme: ``"auto"`` or one of :data:`SCHEMES`.
      how: reduction of attributions over a word's rows and columns (see :func:`merge_groups`).
      step_scores_how: reduction of step scores (default per score:
        :data:`STEP_SCORE_REDUCTIONS`, e.g. product of probabilities, sum of entropies).
      special_tokens: explicit special tokens.

    Returns:
      The same kind of result with ``[words, generated words, (H)]`` attributions.
    """
    kind = _kind(x)
    kw = dict(tokenizer=tokenizer, scheme=scheme, how=how, step_scores_how=step_scores_how,
              special_tokens=special_tokens)
    if kind == "out":
        return _over_output(x, lambda s: merge_words(s, **kw), None,
                            _describe("merge_words", scheme=scheme, how=how))
    if kind == "batch":
        raise _tokens_only("merge_words")
    sch = scheme
    if sch == "auto":
        sch = detect_scheme(list(x.source or []) + list(x.target), tokenizer)
    opts = dict(scheme=sch, tokenizer=tokenizer, special_tokens=special_tokens)
    src_groups = word_groups(x.source, **opts) if x.source is not None else None
    tgt_groups = word_groups(x.target, boundaries=(x.attr_pos_start, x.attr_pos_end), **opts)
    return merge_groups(x, source_groups=src_groups, target_groups=tgt_groups, how=how,
                        step_scores_how=step_scores_how, scheme=sch)


def merge_spans(x, *, source_spans: Sequence[tuple] = (), target_spans: Sequence[tuple] = (),
                how: Union[str, Callable] = "absmax", step_scores_how=None):
    """Merge contiguous spans of tokens into one token each (Inseq's contiguous-span merge).

    Args:
      x: a :class:`SequenceAttribution` or :class:`AttributionOutput`.
      source_spans, target_spans: half-open ``(start, end)`` token ranges (negative indices
        count from the end); disjoint. Tokens outside every span stay as they are. A target
        span may not cross the start or end of the attributed tokens.
      how: reduction over rows and columns of a span (default ``"absmax"``).
      step_scores_how: reduction of step scores over merged generated tokens.
    """
    kind = _kind(x)
    kw = dict(source_spans=source_spans, target_spans=target_spans, how=how,
              step_scores_how=step_scores_how)
    if kind == "out":
        return _over_output(x, lambda s: merge_spans(s, **kw), None,
                            _describe("merge_spans", source_spans=list(source_spans),
                                      target_spans=list(target_spans), how=how))
    if kind == "batch":
        raise _tokens_only("merge_spans")
    if source_spans and x.source is None:
        raise ValueError("source_spans given but this result has no source (decoder-only).")
    src = _complete_groups(source_spans, len(x.source), "source") if source_spans else None
    tgt = _complete_groups(target_spans, len(x.target), "target") if target_spans else None
    return merge_groups(x, source_groups=src, target_groups=tgt, how=how,
                        step_scores_how=step_scores_how)


# --------------------------------------------------------------------------- pairs / slices
def _pair_tokens(a, b):
    if a is None:
        return None
    return [ta if ta == tb else f"{ta} → {tb}" for ta, tb in zip(a, b)]


def _shape(a):
    return None if a is None else tuple(a.shape)


def difference(a, b):
    """``a - b`` for two results of matching shapes (minimal pairs: the same input with one
    word changed). Attributions and shared step scores are subtracted; tokens that differ are
    shown as ``"a → b"``.

    Accepts two :class:`SequenceAttribution`, two :class:`AttributionOutput` (pairwise, same
    length) or two :class:`BatchAttribution` (``jit``-safe; masks taken from ``a``).
    Aggregate both the same way first to compare aggregated scores.
    """
    kind = _kind(a)
    if _kind(b) != kind:
        raise TypeError(f"difference needs two results of the same kind, got "
                        f"{type(a).__name__} and {type(b).__name__}.")
    if kind == "out":
        from .results import AttributionOutput
        if len(a) != len(b):
            raise ValueError(f"difference needs outputs with as many sequences: {len(a)} vs "
                             f"{len(b)}.")
        info = dict(a.info)
        info["aggregations"] = list(info.get("aggregations", [])) + ["difference()"]
        info["difference_of"] = [dict(a.info), dict(b.info)]
        batches = ([difference(x, y) for x, y in zip(a.batches, b.batches)]
                   if len(a.batches) == len(b.batches) and all(
                       _shape(x.source_attributions) == _shape(y.source_attributions)
                       and _shape(x.target_attributions) == _shape(y.target_attributions)
                       for x, y in zip(a.batches, b.batches)) else [])
        return AttributionOutput([difference(x, y) for x, y in zip(a, b)], info, batches)
    for field in ("source_attributions", "target_attributions"):
        sa, sb = _shape(getattr(a, field)), _shape(getattr(b, field))
        if sa != sb:
            raise ValueError(f"difference needs matching shapes: {field} {sa} vs {sb}.")
    shared = [k for k in a.step_scores if k in b.step_scores]
    scores = {k: a.step_scores[k] - b.step_scores[k] for k in shared}
    sub = lambda p, q: None if p is None else p - q  # noqa: E731
    if kind == "batch":
        return a.replace(source_attributions=sub(a.source_attributions, b.source_attributions),
                         target_attributions=sub(a.target_attributions, b.target_attributions),
                         step_scores=scores)
    if (a.attr_pos_start, a.attr_pos_end) != (b.attr_pos_start, b.attr_pos_end):
        raise ValueError("difference needs the same attributed positions: "
                         f"{a.attr_pos_start}:{a.attr_pos_end} vs "
                         f"{b.attr_pos_start}:{b.attr_pos_end}.")
    return dataclasses.replace(
        a, source=_pair_tokens(a.source, b.source), target=_pair_tokens(a.target, b.target),
        source_attributions=sub(a.source_attributions, b.source_attributions),
        target_attributions=sub(a.target_attributions, b.target_attributions),
        step_scores=scores,
        source_ids=a.source_ids if a.source == b.source else None,
        target_ids=a.target_ids if a.target == b.target else None)


def _as_range(sel, n: int, what: str) -> tuple[int, int]:
    if isinstance(sel, slice):
        if sel.step not in (None, 1):
            raise ValueError(f"{what} slice must have step 1.")
        s, e, _ = sel.indices(n)
    else:
        s, e = sel
        s, e, _ = slice(s, e).indices(n)
    if e <= s:
        raise ValueError(f"{what} selection {sel!r} is empty for {n} tokens.")
    return s, e


def slice_tokens(x, *, source=None, target=None):
    """Keep a contiguous range of positions.

    Args:
      x: a :class:`SequenceAttribution` or :class:`AttributionOutput`.
      source: ``(start, end)`` or a ``slice`` of source rows to keep.
      target: ``(start, end)`` or a ``slice`` of target positions to keep: target rows in the
        range, and the generated columns whose tokens are in the range (step scores follow).
    """
    kind = _kind(x)
    if kind == "out":
        return _over_output(x, lambda s: slice_tokens(s, source=source, target=target), None,
                            _describe("slice_tokens", source=source, target=target))
    if kind == "batch":
        raise _tokens_only("slice_tokens")
    seq = x
    if source is not None:
        if seq.source is None:
            raise ValueError("source selection given but this result has no source.")
        s, e = _as_range(source, len(seq.source), "source")
        seq = dataclasses.replace(
            seq, source=seq.source[s:e],
            source_attributions=None if seq.source_attributions is None
            else seq.source_attributions[s:e],
            source_ids=None if seq.source_ids is None else seq.source_ids[s:e])
    if target is not None:
        s, e = _as_range(target, len(seq.target), "target")
        cs, ce = max(seq.attr_pos_start, s), min(seq.attr_pos_end, e)
        if ce <= cs:
            raise ValueError(f"target selection {s}:{e} contains no attributed token "
                             f"(those are {seq.attr_pos_start}:{seq.attr_pos_end}).")
        cols = slice(cs - seq.attr_pos_start, ce - seq.attr_pos_start)
        seq = dataclasses.replace(
            seq, target=seq.target[s:e],
            target_attributions=None if seq.target_attributions is None
            else seq.target_attributions[s:e, cols],
            source_attributions=None if seq.source_attributions is None
            else seq.source_attributions[:, cols],
            step_scores={k: np.asarray(v)[cols] for k, v in seq.step_scores.items()},
            foil_tokens=(None if getattr(seq, "foil_tokens", None) is None
                         else list(seq.foil_tokens)[cols]),
            attr_pos_start=cs - s, attr_pos_end=ce - s,
            target_ids=None if seq.target_ids is None else seq.target_ids[s:e])
    return seq


# Result objects reach these through the view registry (jaxattr.results imports nothing above it).
for _name, _fn in (("reduce_hidden", reduce_hidden), ("normalize", normalize),
                   ("rescale", rescale), ("merge_words", merge_words),
                   ("merge_spans", merge_spans), ("slice_tokens", slice_tokens),
                   ("difference", difference), ("aggregate_sequence", aggregate_sequence)):
    _views.provide(_name, _fn)
