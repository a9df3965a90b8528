"""One save / load for jaxattr's result files: arrays in an ``.npz`` plus a JSON header.

A low layer (numpy and the standard library only), so result classes may import it without
reaching :mod:`jaxattr.io`. It owns:

- :func:`atomic_write`: write through ``<name>.tmp`` then ``os.replace``; a failed write leaves
  neither a stray ``.tmp`` nor a half-written target;
- :func:`save_npz` / :func:`load_npz`: named arrays (any numeric / bool / fixed-width string
  dtype, any shape, empty included) plus a JSON header under one key; never pickle
  (``allow_pickle=False``);
- :func:`check_header`: the ``{"format": name, "format_version": n}`` contract;
- :class:`ResultFileError`: a file that cannot be read, with the file's name in the message.

The on-disk layout is the one the result classes wrote before this module existed (a 0-d unicode
array holding the JSON header, one ``.npy`` member per array), so their old files still load.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Union

import numpy as np

__all__ = ["ResultFileError", "atomic_write", "check_header", "save_npz", "load_npz"]

PathLike = Union[str, os.PathLike]


class ResultFileError(ValueError):
    """A results file that cannot be read: not JSON, truncated, or not in jaxattr's format."""


def atomic_write(path: PathLike, write: Union[bytes, Callable[[BinaryIO], Any]], *,
                 fsync: bool = True) -> Path:
    """Write ``<path>.tmp`` (``write`` is the bytes, or ``write(fh)`` fills the file opened for
    binary writing), flush it to disk (``fsync=True``: a crash after the rename cannot leave an
    empty file) and rename it onto ``path``. On any failure (including ``KeyboardInterrupt``)
    the ``.tmp`` is removed and ``path`` is left as it was. Returns ``Path(path)``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            if isinstance(write, (bytes, bytearray, memoryview)):
                fh.write(write)
            else:
                write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a stray .tmp behind
        raise
    return path


def check_header(header: Any, *, path: PathLike, format: str, version: int,
                 what: str) -> dict:
    """Check a decoded header: a dict with ``"format" == format`` and ``"format_version" <=
    version`` (a missing version counts as 0). Raises :class:`ResultFileError` naming ``path``
    and ``what`` (e.g. ``"intervention result"``). Returns the header."""
    if not isinstance(header, dict):
        raise ResultFileError(f"{os.fspath(path)}: not a jaxattr {what} file (the header is "
                              f"not a JSON object).")
    if header.get("format") != format:
        raise ResultFileError(f"{os.fspath(path)}: holds {header.get('format')!r}, not "
                              f"{format!r}; it is not a jaxattr {what} file.")
    found = header.get("format_version", 0)
    if not isinstance(found, int) or found > version:
        raise ResultFileError(f"{os.fspath(path)}: format_version {found!r} is newer than this "
                              f"jaxattr reads ({version}); upgrade jaxattr.")
    return header


def save_npz(path: PathLike, arrays: Mapping[str, np.ndarray], header: Mapping[str, Any], *,
             header_key: str = "__header__") -> Path:
    """Write ``arrays`` (``{name: array}``) and ``header`` (JSON-serialisable; stored as a 0-d
    string array under ``header_key``) to ``path`` atomically. Object arrays are refused (they
    would need pickle). Returns ``Path(path)``."""
    if header_key in arrays:
        raise ValueError(f"array name {header_key!r} is reserved for the header; rename it.")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise ValueError(f"array {k!r} has dtype object, which needs pickle; convert it "
                             f"to a numeric or string dtype first.")
    text = json.dumps(dict(header))
    return atomic_write(path, lambda fh: np.savez(fh, **{header_key: np.array(text)}, **arrays))


_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def load_npz(path: PathLike, *, format: str, version: int, what: str,
             header_key: str = "__header__") -> tuple[dict, dict]:
    """Read a file written by :func:`save_npz` and check its header (:func:`check_header`).

    Returns ``(header, arrays)`` with ``arrays`` ``{name: np.ndarray}`` (header key removed).
    Raises ``FileNotFoundError`` for a missing file and :class:`ResultFileError` naming the file
    for one that is not a zip of ``.npy`` members, is truncated, holds pickled objects, lacks
    the header or holds another format.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{name}: no such {what} file.")
    try:
        with np.load(name, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except _READ_ERRORS as e:
        raise ResultFileError(f"{name}: not a readable {what} file ({type(e).__name__}: {e})."
                              ) from None
    if header_key not in arrays:
        raise ResultFileError(f"{name}: not a jaxattr {what} file (no {header_key!r} header).")
    try:
        header = json.loads(str(arrays.pop(header_key)))
    except json.JSONDecodeError as e:
        raise ResultFileError(f"{name}: the {what} header is not JSON ({e}).") from None
    return check_header(header, path=name, format=format, version=version, what=what), arrays
