"""Saving, loading and exporting attribution results.

The file format is plain JSON (UTF-8, optionally gzipped) that a person can read: metadata at
the top, then one object per sequence with its tokens and its arrays as nested lists. Numbers
are written in the shortest decimal form that reads back to the same float32 (or float16 /
float64) value, so ``save`` → ``load`` is exact. NaN is written ``null``; infinities
``"inf"``/``"-inf"``. No pickle is involved anywhere::

    {
      "format": "jaxattr.attributions",
      "format_version": 1,
      "jaxattr_version": "0.1.0",
      "info": {"model": "gpt2", "method": "saliency", ...},
      "sequence_attributions": [
        {"source": null, "target": ["The", "Ġcapital", ...],
         "attr_pos_start": 5, "attr_pos_end": 7, "source_ids": null, "target_ids": [...],
         "source_attributions": null,
         "target_attributions": {"dtype": "float32", "shape": [7, 2],
                                 "data": [[0.25, 0.125], [null, 0.5], ...]},
         "step_scores": {"probability": {"dtype": "float32", "shape": [2], "data": [...]}}}
      ]
    }
"""
from __future__ import annotations

import dataclasses
import gzip
import zlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np

from . import views as _views
# ResultFileError lives in the low-level npz_store (result classes raise it without importing
# io); re-exported here and as jaxattr.ResultFileError (one class).
from .npz_store import ResultFileError, atomic_write

__all__ = ["save", "load", "dumps", "loads", "ResultFileError", "FORMAT", "FORMAT_VERSION",
           "scores_dict", "to_dataframe"]

FORMAT = "jaxattr.attributions"
FORMAT_VERSION = 1
_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


# --------------------------------------------------------------------------- writing
def _fmt_values(flat: np.ndarray) -> list[str]:
    """Shortest decimal strings that read back to the same value in ``flat.dtype``."""
    if flat.dtype == np.float64:
        out = [repr(v) for v in flat.tolist()]
    else:
        out = [str(v) for v in flat]
    for i in np.flatnonzero(~np.isfinite(flat)).tolist():
        v = flat[i]
        out[i] = "null" if np.isnan(v) else ('"inf"' if v > 0 else '"-inf"')
    return out


def _fmt_array(a: np.ndarray, indent: str, step: str) -> str:
    """Nested-list JSON text of ``a``; the innermost lists sit on one line each."""
    strings = np.array(_fmt_values(a.reshape(-1)), dtype=object).reshape(a.shape)

    def rec(x, ind):
        if x.ndim == 0:
            return x.item()
        if x.ndim == 1:
            return "[" + ", ".join(x.tolist()) + "]"
        if x.shape[0] == 0:
            return "[]"
        inner = ind + step
        return "[\n" + ",\n".join(inner + rec(r, inner) for r in x) + "\n" + ind + "]"
    return rec(strings, indent)


class _Arrays(list):
    """Arrays collected while encoding; each is referenced by a unique placeholder string."""

    def __init__(self):
        super().__init__()
        self.nonce = secrets.token_hex(8)

    def placeholder(self, i: int) -> str:
        return f"\u0000{self.nonce}:{i}\u0000"

    def pattern(self):
        return re.compile(r'^([ \t]*)(.*?)"\\u0000' + self.nonce + r':(\d+)\\u0000"', re.M)


def _encode_array(a, dtype, arrays: list) -> dict:
    a = np.asarray(a)
    if dtype is None:
        dt = a.dtype if a.dtype in (np.float16, np.float32, np.float64) else np.dtype(np.float32)
    else:
        dt = np.dtype(_DTYPES[dtype])
    arrays.append(a.astype(dt))
    return {"dtype": dt.name, "shape": list(a.shape), "data": arrays.placeholder(len(arrays) - 1)}


def _jsonable(value: Any, arrays: list) -> Any:
    """Info values as JSON: tuples become lists, arrays become tagged arrays, other objects
    their ``repr``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, arrays) for v in value]
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if np.isfinite(v) else repr(v)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        arr = np.asarray(value)
        if arr.dtype.kind in "iub":
            return {"__array__": True, "dtype": arr.dtype.name, "shape": list(arr.shape),
                    "data": arr.tolist()}
        enc = _encode_array(arr, None, arrays)
        enc["__array__"] = True
        return enc
    return getattr(value, "__name__", None) or repr(value)


def _encode_sequence(seq, dtype, arrays) -> dict:
    arr = lambda a: None if a is None else _encode_array(a, dtype, arrays)  # noqa: E731
    ints = lambda ids: None if ids is None else [int(i) for i in ids]  # noqa: E731
    return {
        "source": None if seq.source is None else [str(t) for t in seq.source],
        "target": [str(t) for t in seq.target],
        "attr_pos_start": int(seq.attr_pos_start),
        "attr_pos_end": int(seq.attr_pos_end),
        "source_ids": ints(seq.source_ids),
        "target_ids": ints(seq.target_ids),
        "source_attributions": arr(seq.source_attributions),
        "target_attributions": arr(seq.target_attributions),
        "step_scores": {str(k): _encode_array(v, dtype, arrays)
                        for k, v in seq.step_scores.items()},
        **({"default_aggregator": seq.default_aggregator}
           if getattr(seq, "default_aggregator", None) else {}),
        **({"foil_tokens": [None if f is None else str(f) for f in seq.foil_tokens]}
           if getattr(seq, "foil_tokens", None) is not None else {}),
    }


def dumps(out, *, dtype: str | None = None, indent: int = 2) -> str:
    """The JSON text :func:`save` writes.

    Args:
      out: an :class:`~jaxattr.results.AttributionOutput` (or a list of
        :class:`~jaxattr.results.SequenceAttribution`).
      dtype: ``None`` keeps each array's float type (float32 from ``attribute``);
        ``"float16"`` halves the size (values rounded to float16), ``"float32"``,
        ``"float64"``.
      indent: spaces per nesting level.
    """
    from . import __version__
    from .results import AttributionOutput
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype must be None or one of {sorted(_DTYPES)}, got {dtype!r}.")
    if not isinstance(out, AttributionOutput):
        out = AttributionOutput(list(out), {})
    arrays = _Arrays()
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jaxattr_version": __version__,
        "info": _jsonable(out.info, arrays),
        "sequence_attributions": [_encode_sequence(s, dtype, arrays)
                                  for s in out.sequence_attributions],
    }
    text = json.dumps(doc, indent=indent, ensure_ascii=False)
    step = " " * indent

    def sub(m):
        ind, prefix, i = m.group(1), m.group(2), int(m.group(3))
        return ind + prefix + _fmt_array(arrays[i], ind, step)
    return arrays.pattern().sub(sub, text) + "\n"


def save(out, path: Union[str, os.PathLike], *, overwrite: bool = True,
         compress: bool | None = None, dtype: str | None = None, indent: int = 2) -> Path:
    """Write ``out`` to ``path`` as readable JSON (see the module docstring for the layout).

    Args:
      out: an :class:`~jaxattr.results.AttributionOutput`.
      path: destination file.
      overwrite: replace an existing file (``False`` raises ``FileExistsError``).
      compress: gzip the file; default: when ``path`` ends in ``.gz``.
      dtype: ``None`` (keep: float32 exact), ``"float16"``, ``"float32"`` or ``"float64"``.
        float16 files load as float32 arrays that hold the float16 values exactly.
      indent: spaces per nesting level.

    Returns:
      The path written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file path such as "
                                f"{path / 'attributions.json'}.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    data = dumps(out, dtype=dtype, indent=indent).encode("utf-8")
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, mtime=0)
    return atomic_write(path, data)


# --------------------------------------------------------------------------- reading
def _fail(where: str, message: str) -> ResultFileError:
    return ResultFileError(f"{where}: {message}")


def _decode_array(obj, where: str, *, ndim=None) -> np.ndarray:
    if not isinstance(obj, dict) or not {"dtype", "shape", "data"} <= set(obj):
        raise _fail(where, "expected an array object with 'dtype', 'shape' and 'data'.")
    if not isinstance(obj["dtype"], str) or obj["dtype"] not in _DTYPES:
        raise _fail(where, f"unknown dtype {obj['dtype']!r}.")
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise _fail(where, f"bad shape {shape!r}.")
    if ndim is not None and len(shape) not in ndim:
        raise _fail(where, f"expected {' or '.join(map(str, ndim))} dimensions, got "
                           f"shape {shape}.")
    try:
        a = np.array(obj["data"], dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise _fail(where, f"data is not a rectangular array of numbers ({e}).") from None
    if int(np.prod(shape)) == 0 and a.size == 0:
        a = a.reshape(shape)
    if list(a.shape) != shape:
        raise _fail(where, f"data has shape {list(a.shape)} but the file declares {shape}.")
    a = a.astype(_DTYPES[obj["dtype"]])      # the stored value, exactly
    return a.astype(np.float32) if a.dtype == np.float16 else a


def _decode_info(value, where: str = "info"):
    if isinstance(value, dict):
        if value.get("__array__"):
            if value.get("dtype") in _DTYPES:
                return _decode_array(value, where)
            try:
                return np.array(value["data"], dtype=value["dtype"]).reshape(value["shape"])
            except (KeyError, TypeError, ValueError) as e:
                raise _fail(where, f"bad array ({type(e).__name__}: {e}); expected 'dtype', "
                                   "'shape' and 'data' that fit together.") from None
        return {k: _decode_info(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_info(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _decode_sequence(obj, where: str):
    from .results import SequenceAttribution
    if not isinstance(obj, dict):
        raise _fail(where, "expected an object.")
    missing = [k for k in ("target", "attr_pos_start", "attr_pos_end") if k not in obj]
    if missing:
        raise _fail(where, f"missing key(s) {missing}.")
    source, target = obj.get("source"), obj["target"]
    for name, toks in (("source", source), ("target", target)):
        if toks is not None and (not isinstance(toks, list)
                                 or not all(isinstance(t, str) for t in toks)):
            raise _fail(f"{where}.{name}", "expected a list of token strings.")
    if target is None:
        raise _fail(f"{where}.target", "expected a list of token strings.")
    start, end = obj["attr_pos_start"], obj["attr_pos_end"]
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(target)):
        raise _fail(where, f"attr_pos_start/attr_pos_end {start}/{end} do not fit a target of "
                           f"{len(target)} tokens.")
    n_steps = end - start
    arrays = {}
    for name, rows in (("source_attributions", source), ("target_attributions", target)):
        if obj.get(name) is None:
            arrays[name] = None
            continue
        if rows is None:
            raise _fail(f"{where}.{name}", "attributions given without tokens.")
        a = _decode_array(obj[name], f"{where}.{name}", ndim=(2, 3, 4))  # 4: attention
        if a.shape[:2] != (len(rows), n_steps):
            raise _fail(f"{where}.{name}", f"shape {list(a.shape)} does not match "
                                           f"{len(rows)} tokens x {n_steps} steps.")
        arrays[name] = a
    scores = obj.get("step_scores") or {}
    if not isinstance(scores, dict):
        raise _fail(f"{where}.step_scores", "expected an object.")
    step_scores = {}
    for k, v in scores.items():
        a = _decode_array(v, f"{where}.step_scores.{k}", ndim=(1,))
        if a.shape != (n_steps,):
            raise _fail(f"{where}.step_scores.{k}", f"{a.shape[0]} values for {n_steps} steps.")
        step_scores[k] = a
    ids = {}
    for name in ("source_ids", "target_ids"):
        v = obj.get(name)
        if v is not None and (not isinstance(v, list) or not all(isinstance(i, int) for i in v)):
            raise _fail(f"{where}.{name}", "expected a list of integers.")
        ids[name] = v
    agg = obj.get("default_aggregator")
    if agg is not None and not isinstance(agg, str):
        raise _fail(f"{where}.default_aggregator", "expected a string.")
    foils = obj.get("foil_tokens")
    if foils is not None and (not isinstance(foils, list) or len(foils) != n_steps or not all(
            f is None or isinstance(f, str) for f in foils)):
        raise _fail(f"{where}.foil_tokens", f"expected {n_steps} token strings (or null).")
    return SequenceAttribution(source=source, target=target, step_scores=step_scores,
                               attr_pos_start=start, attr_pos_end=end, **arrays, **ids,
                               default_aggregator=agg, foil_tokens=foils)


def loads(text: Union[str, bytes], *, name: str = "<string>"):
    """Parse the JSON text written by :func:`dumps` into an
    :class:`~jaxattr.results.AttributionOutput`. Raises :class:`ResultFileError`."""
    from .results import AttributionOutput
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _fail(name, f"not UTF-8 text ({e}); is it a results file?") from None
    if not text.strip():
        raise _fail(name, "the file is empty.")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        hint = (" The file looks truncated." if e.pos >= len(text.rstrip()) - 1 else "")
        raise _fail(name, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}."
                          + hint) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _fail(name, f"not a jaxattr results file (no \"format\": \"{FORMAT}\").")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _fail(name, f"format_version {version!r} is not supported by this jaxattr "
                          f"(reads up to {FORMAT_VERSION}); upgrade jaxattr.")
    seqs = doc.get("sequence_attributions")
    if not isinstance(seqs, list):
        raise _fail(name, "missing list 'sequence_attributions'.")
    info = doc.get("info") or {}
    if not isinstance(info, dict):
        raise _fail(name, "'info' must be an object.")
    info = _decode_info(info, f"{name}: info")
    info.setdefault("jaxattr_version", doc.get("jaxattr_version"))
    views = [_decode_sequence(s, f"{name}: sequence_attributions[{i}]")
             for i, s in enumerate(seqs)]
    if info.get("method") == "attention":  # files written before views said so themselves
        views = [v if v.default_aggregator else dataclasses.replace(v, default_aggregator="mean")
                 for v in views]
    return AttributionOutput(views, info, [])


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"No results file at {path}.") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, gzip.BadGzipFile, zlib.error) as e:
            raise _fail(str(path), f"damaged or truncated gzip data ({e}).") from None
    return data


def load(path: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]]):
    """Read a file written by :func:`save` (gzipped or not) into an
    :class:`~jaxattr.results.AttributionOutput`. Several paths are read and merged in order
    (:meth:`~jaxattr.results.AttributionOutput.merge`).

    Raises:
      ResultFileError: the file is not JSON, is truncated or is not in jaxattr's format; the
        message says which file and what is wrong.
    """
    from .results import AttributionOutput
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        return loads(_read(p), name=str(p))
    if isinstance(path, (bytes, bytearray)) or not hasattr(path, "__iter__"):
        raise TypeError(f"load() takes a file path (str or os.PathLike) or a list of paths, got "
                        f"{type(path).__name__}; for JSON text use jaxattr.io.loads(text).")
    outs = [load(p) for p in path]
    return AttributionOutput.merge(outs)


# --------------------------------------------------------------------------- export
def _aggregated(seq, aggregate: bool):
    nd = [a.ndim for a in (seq.source_attributions, seq.target_attributions) if a is not None]
    if aggregate and any(n == 3 for n in nd):
        return seq.aggregate()
    if any(n == 3 for n in nd):
        raise ValueError("the attributions still have a hidden axis; aggregate first or pass "
                         "aggregate=True.")
    return seq


def scores_dict(seq, *, aggregate: bool = True) -> dict:
    """Scores of one sequence keyed by ``(position, token)``; see
    :meth:`~jaxattr.results.SequenceAttribution.get_scores_dict`."""
    seq = _aggregated(seq, aggregate)
    res = {"source_attributions": {}, "target_attributions": {}, "step_scores": {}}
    for j, pos in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        gen = (pos, seq.target[pos])
        if seq.source_attributions is not None:
            res["source_attributions"][gen] = {
                (i, t): float(seq.source_attributions[i, j]) for i, t in enumerate(seq.source)}
        if seq.target_attributions is not None:
            col = seq.target_attributions[:, j]
            res["target_attributions"][gen] = {
                (i, t): float(col[i]) for i, t in enumerate(seq.target) if not np.isnan(col[i])}
        res["step_scores"][gen] = {k: float(v[j]) for k, v in seq.step_scores.items()}
    return res


def to_dataframe(x, *, aggregate: bool = True):
    """Tidy ``pandas.DataFrame``: one row per attribution cell that exists, plus one row per
    step score.

    Columns: ``sequence``, ``kind`` (``"source"``, ``"target"`` or ``"step_score"``),
    ``row`` (token position; ``-1`` for step scores), ``row_token`` (the attributed token, or
    the step score's name), ``step`` (column index), ``position`` (target position of the
    generated token), ``generated_token``, ``value``.
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install pandas") from None
    from .results import AttributionOutput
    seqs = list(x.sequence_attributions) if isinstance(x, AttributionOutput) else [x]
    cols = {k: [] for k in ("sequence", "kind", "row", "row_token", "step", "position",
                            "generated_token", "value")}

    def add(n, kind, rows, toks, steps, vals, start, target):
        cols["sequence"] += [n] * len(vals)
        cols["kind"] += [kind] * len(vals)
        cols["row"] += list(rows)
        cols["row_token"] += list(toks)
        cols["step"] += list(steps)
        cols["position"] += [start + s for s in steps]
        cols["generated_token"] += [target[start + s] for s in steps]
        cols["value"] += list(vals)

    for n, seq in enumerate(seqs):
        seq = _aggregated(seq, aggregate)
        for kind, toks, a in (("source", seq.source, seq.source_attributions),
                              ("target", seq.target, seq.target_attributions)):
            if a is None:
                continue
            r, s = np.nonzero(~np.isnan(a))
            add(n, kind, r.tolist(), [toks[i] for i in r], s.tolist(), a[r, s].tolist(),
                seq.attr_pos_start, seq.target)
        for name, v in seq.step_scores.items():
            steps = list(range(len(v)))
            add(n, "step_score", [-1] * len(v), [name] * len(v), steps,
                np.asarray(v, np.float64).tolist(), seq.attr_pos_start, seq.target)
    df = pd.DataFrame(cols)
    return df.astype({"sequence": "int64", "row": "int64", "step": "int64",
                      "position": "int64", "value": "float64"})


# Result objects reach these through the view registry (jaxattr.results imports nothing above it).
for _name, _fn in (("save", save), ("scores_dict", scores_dict), ("to_dataframe", to_dataframe)):
    _views.provide(_name, _fn)
