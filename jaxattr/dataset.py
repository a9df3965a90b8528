"""Attributing a whole dataset: batched, incremental, resumable.

Results are appended to a JSON-lines file as each batch finishes (one line per input row,
flushed and fsynced), so an interrupted run loses at most the batch in flight; rerunning the
same command skips rows already in the file and finishes it with every row exactly once. Rows
that cannot be attributed (missing field, empty text, a forced output that does not start with
its prompt, too long for the model) are written as ``{"index": i, "error": ...}`` lines and
reported, never silently dropped.

A mistake in the run's own options (an unknown method, ``n_steps=0``, a missing column) is the
run's error, raised before anything is written, never an error line per row. The run's
identity (the input file's hash, model, fields and attribution options) is written next to the
output (``<output>.run.json``); resuming onto the output of a different run is refused.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from typing import Iterator, Optional

from .encoding import InputError
from .npz_store import atomic_write

__all__ = ["read_rows", "completed_rows", "attribute_dataset", "run_identity", "RunMismatchError",
           "write_chunks"]


class RunMismatchError(ValueError):
    """The output file holds the rows of another run (other input, model or options)."""


def _bad_utf8(text: str) -> Optional[str]:
    """A description of the first undecodable byte in ``text`` read with
    ``errors="surrogateescape"`` (``None`` when the text is valid UTF-8)."""
    for j, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return f"byte 0x{ord(ch) - 0xDC00:02x} at character {j}"
    return None


def read_rows(path: str, *, input_field: Optional[str] = None,
              generated_field: Optional[str] = None) -> Iterator[dict]:
    """Yield ``{"index", "input", "generated"?, "error"?}`` for each row of a ``.jsonl``,
    ``.csv`` or ``.txt`` file (``.txt``: one input per line, fields ignored).

    Each row is decoded on its own: a row that is not valid UTF-8 (or not JSON) becomes that
    row's ``error``. A field missing from a CSV header (or from every JSON row) is the run's
    error: ``ValueError`` naming the field and the fields the file has.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv", ".txt"):
        raise ValueError(f"unsupported input file {path!r}: use .jsonl, .csv or .txt")
    if ext != ".txt" and not input_field:
        raise ValueError("--input-field is required for .jsonl and .csv files")
    fields = [k for k in (input_field, generated_field) if k]
    with open(path, encoding="utf-8", errors="surrogateescape",
              newline="" if ext == ".csv" else None) as f:
        if ext == ".txt":
            for i, line in enumerate(f):
                bad = _bad_utf8(line)
                yield ({"index": i, "error": f"line {i + 1} is not valid UTF-8 ({bad})"} if bad
                       else {"index": i, "input": line.rstrip("\n")})
            return
        if ext == ".csv":
            records = csv.DictReader(f)
            header = records.fieldnames or []
            missing = [k for k in fields if k not in header]
            if missing:
                raise ValueError(f"{path}: no column(s) {missing} in the CSV header; its "
                                 f"columns are {header}. Pass --input-field / "
                                 "--generated-field with one of them.")
        else:
            records = f
        seen_field = False
        pending = []
        for i, rec in enumerate(records):
            row = {"index": i}
            if ext == ".jsonl":
                bad = _bad_utf8(rec)
                if bad:
                    row["error"] = f"line {i + 1} is not valid UTF-8 ({bad})"
                else:
                    try:
                        rec = json.loads(rec)
                        if not isinstance(rec, dict):
                            row["error"] = f"line {i + 1} is not a JSON object"
                    except json.JSONDecodeError as e:
                        row["error"] = f"line {i + 1} is not valid JSON: {e}"
            else:
                bad = next((b for b in map(_bad_utf8, (v for v in rec.values()
                                                       if isinstance(v, str))) if b), None)
                if bad:
                    row["error"] = f"row {i} is not valid UTF-8 ({bad})"
            if "error" not in row:
                absent = [k for k in fields if rec.get(k) is None]
                seen_field = seen_field or input_field not in absent
                if absent:
                    row["error"] = f"row {i} has no field(s) {absent}"
                else:
                    row["input"] = str(rec[input_field])
                    if generated_field:
                        row["generated"] = str(rec[generated_field])
            if ext == ".jsonl" and not seen_field:
                pending.append(row)  # held until some row shows the field exists
                continue
            yield from pending
            pending = []
            yield row
        if pending and not seen_field:
            raise ValueError(f"{path}: no row has the field {input_field!r}; pass "
                             "--input-field with a field the rows have.")
        yield from pending


def completed_rows(path: str, *, repair: bool = True) -> set:
    """Indices already written to ``path``. With ``repair`` (default) a partial last line (an
    interrupted write) is cut off so appending continues on a clean line; ``repair=False``
    only reads (safe while another process is still writing the file)."""
    done: set = set()
    if not os.path.exists(path):
        return done
    good_end = 0
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl]
        try:
            done.add(int(json.loads(line)["index"]))
        except (ValueError, KeyError, TypeError):
            break
        pos = good_end = nl + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_identity(model, input_file: str, *, input_field=None, generated_field=None,
                 **attribute_kwargs) -> dict:
    """What makes two runs' rows interchangeable: the input file's SHA-256, the model, the
    fields read and the attribution options (not the batch size, which does not change a
    result). Written to ``<output>.run.json``."""
    from . import __version__
    opts = json.loads(json.dumps(attribute_kwargs, sort_keys=True, default=repr))
    return {"input_sha256": _file_sha256(input_file), "model": getattr(model, "name", None),
            "input_field": input_field, "generated_field": generated_field,
            "options": opts, "jaxattr_version": __version__}


_COMPARED = ("input_sha256", "model", "input_field", "generated_field", "options")


def _check_run(output: str, identity: dict, has_rows: bool) -> None:
    """Refuse to append to ``output`` when it holds rows of another run; write the identity
    sidecar for a fresh run."""
    sidecar = output + ".run.json"
    how = (f"Use another --output, or delete {output} and {sidecar} to start this run afresh.")
    if os.path.exists(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise RunMismatchError(f"{sidecar} (this output's run identity) is unreadable "
                                   f"({e}). {how}") from None
        if has_rows:
            diff = [k for k in _COMPARED if old.get(k) != identity.get(k)]
            if diff:
                shown = "; ".join(f"{k}: {old.get(k)!r} then, {identity.get(k)!r} now"
                                  for k in diff)
                raise RunMismatchError(f"{output} holds rows of a different run ({shown}); "
                                       f"resuming would mix them. {how}")
            return
    elif has_rows:
        raise RunMismatchError(f"{output} already holds rows but no {sidecar} says which run "
                               f"wrote them, so resuming could mix two runs. {how}")
    atomic_write(sidecar, json.dumps(identity, indent=1, sort_keys=True).encode("utf-8"))


def _append(f, records):
    for rec in records:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_chunks(output: str, errors: list, chunks: list, run_chunk, *,
                 first: Optional[list] = None, total: int, desc: str,
                 show_progress: bool, log) -> dict:
    """The resumable writing loop shared by the dataset commands: append the host-side
    ``errors`` (rows ``{"index", "error"}``) as error lines, then ``run_chunk(chunk)`` (a list
    of records, ``{"index", "result"}`` or ``{"index", "error"}``) for each of ``chunks``,
    appending and fsyncing each chunk's lines as soon as it is done (a kill loses at most the
    chunk in flight; :func:`completed_rows` drops a cut last line). ``first``: the records of
    ``chunks[0]`` when the caller already computed them (to fail on a bad option before
    writing). A ``tqdm`` bar of ``total`` rows when ``show_progress``.

    Returns ``{"done": result lines written, "errors": error lines written}``."""
    counts = {"done": 0, "errors": len(errors)}
    bar = None
    if show_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=desc, unit="row")
    with open(output, "a", encoding="utf-8") as f:
        for r in errors:
            print(f"row {r['index']}: skipped: {r['error']}", file=log)
        _append(f, [{"index": r["index"], "error": r["error"]} for r in errors])
        if bar is not None:
            bar.update(len(errors))
        for b, chunk in enumerate(chunks):
            records = first if (b == 0 and first is not None) else run_chunk(chunk)
            _append(f, records)
            counts["done"] += sum("result" in r for r in records)
            counts["errors"] += sum("error" in r for r in records)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return counts


def _result_record(row, seq, info) -> dict:
    from . import io
    from .results import AttributionOutput
    payload = json.loads(io.dumps(AttributionOutput([seq], info), indent=0))
    return {"index": row["index"], "input": row["input"],
            "generated": row.get("generated"), "result": payload}


def attribute_dataset(model, input_file: str, output: str, *, input_field: Optional[str] = None,
                      generated_field: Optional[str] = None, batch_size: int = 8,
                      show_progress: bool = True, max_batches: Optional[int] = None,
                      log=None, **attribute_kwargs) -> dict:
    """Attribute every row of ``input_file`` into the JSON-lines ``output`` (resumable).

    The run's options are checked before anything is written: a bad option (or a
    ``batch_size`` that is not a positive integer, a field the file lacks, an output written
    by another run) raises ``ValueError``/``TypeError`` and leaves ``output`` as it was. The
    first batch runs before any line is written, so an option the model rejects is caught
    there too. Bad rows become ``{"index": i, "error": ...}`` lines.

    Returns counts: ``{"done": rows written this run, "skipped": already in the file,
    "errors": error rows written this run, "total": rows in the input}``.
    """
    from .methods._common import count
    log = sys.stderr if log is None else log
    batch_size = count(batch_size, "batch_size (--batch-size)")
    if max_batches is not None:
        max_batches = count(max_batches, "max_batches", minimum=0)
    rows = list(read_rows(input_file, input_field=input_field, generated_field=generated_field))
    done = completed_rows(output)
    _check_run(output, run_identity(model, input_file, input_field=input_field,
                                    generated_field=generated_field, **attribute_kwargs),
               has_rows=bool(done))
    todo = [r for r in rows if r["index"] not in done]
    counts = {"done": 0, "skipped": len(rows) - len(todo), "errors": 0, "total": len(rows)}
    errors, good = [], []
    for r in todo:  # validate on the host first: a bad row never spoils a batch
        if "error" not in r:
            try:
                if "generated" in r:
                    model.encode(r["input"], r["generated"])
                elif not r["input"].strip():
                    raise InputError("input text is empty")
            except InputError as e:
                r["error"] = str(e)
        (errors if "error" in r else good).append(r)
    chunks = [good[i:i + batch_size] for i in range(0, len(good), batch_size)]
    if max_batches is not None:
        chunks = chunks[:max_batches]
    # The first batch runs before anything is written: an option error raises here.
    first = _attribute_chunk(model, chunks[0], batch_size, attribute_kwargs, log) if chunks \
        else []
    counts.update(write_chunks(
        output, errors, chunks,
        lambda chunk: _attribute_chunk(model, chunk, batch_size, attribute_kwargs, log),
        first=first, total=len(todo), desc="Attributing", show_progress=show_progress,
        log=log))
    return counts


def _attribute_chunk(model, chunk, batch_size, kwargs, log) -> list:
    """Records of one batch. A row's own problem (``InputError``) becomes that row's error
    line; any other error is the run's and propagates."""
    gen = [r.get("generated") for r in chunk]
    try:
        out = model.attribute([r["input"] for r in chunk],
                              None if any(g is None for g in gen) else gen,
                              batch_size=batch_size, show_progress=False, **kwargs)
        return [_result_record(r, s, out.info) for r, s in zip(chunk, out.sequence_attributions)]
    except InputError as e:
        if len(chunk) == 1:
            print(f"row {chunk[0]['index']}: skipped: {e}", file=log)
            return [{"index": chunk[0]["index"], "error": str(e)}]
        recs = []
        for r in chunk:  # isolate the bad row
            recs += _attribute_chunk(model, [r], batch_size, kwargs, log)
        return recs
