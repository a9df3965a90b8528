"""Attributing a whole dataset: batched, incremental, resumable.

Results are appended to a JSON-lines file as each batch finishes (one line per input row,
flushed and fsynced), so an interrupted run loses at most the batch in flight; rerunning the
same command skips rows already in the file and finishes it with every row exactly once. Rows
that cannot be attributed (missing field, empty text, a forced output that does not start with
its prompt, too long for the model) are written as ``{"index": i, "error": ...}`` lines and
reported, never silently dropped.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import Iterator, Optional

from .encoding import InputError

__all__ = ["read_rows", "completed_rows", "attribute_dataset"]


def read_rows(path: str, *, input_field: Optional[str] = None,
              generated_field: Optional[str] = None) -> Iterator[dict]:
    """Yield ``{"index", "input", "generated"?, "error"?}`` for each row of a ``.jsonl``,
    ``.csv`` or ``.txt`` file (``.txt``: one input per line, fields ignored)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv", ".txt"):
        raise ValueError(f"unsupported input file {path!r}: use .jsonl, .csv or .txt")
    if ext != ".txt" and not input_field:
        raise ValueError("--input-field is required for .jsonl and .csv files")
    with open(path, encoding="utf-8", newline="" if ext == ".csv" else None) as f:
        if ext == ".txt":
            for i, line in enumerate(f):
                yield {"index": i, "input": line.rstrip("\n")}
            return
        records = csv.DictReader(f) if ext == ".csv" else f
        for i, rec in enumerate(records):
            row = {"index": i}
            if ext == ".jsonl":
                try:
                    rec = json.loads(rec)
                except json.JSONDecodeError as e:
                    row["error"] = f"line {i + 1} is not valid JSON: {e}"
                    yield row
                    continue
                if not isinstance(rec, dict):
                    row["error"] = f"line {i + 1} is not a JSON object"
                    yield row
                    continue
            missing = [k for k in (input_field, generated_field) if k and rec.get(k) is None]
            if missing:
                row["error"] = f"row {i} has no field(s) {missing}"
            else:
                row["input"] = str(rec[input_field])
                if generated_field:
                    row["generated"] = str(rec[generated_field])
            yield row


def completed_rows(path: str) -> set:
    """Indices already written to ``path``; a partial last line (an interrupted write) is cut
    off so appending continues on a clean line."""
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
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def _append(f, records):
    for rec in records:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


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

    Returns counts: ``{"done": rows written this run, "skipped": already in the file,
    "errors": error rows written this run, "total": rows in the input}``.
    """
    log = sys.stderr if log is None else log
    rows = list(read_rows(input_file, input_field=input_field, generated_field=generated_field))
    done = completed_rows(output)
    todo = [r for r in rows if r["index"] not in done]
    counts = {"done": 0, "skipped": len(rows) - len(todo), "errors": 0, "total": len(rows)}
    bar = None
    if show_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="Attributing", unit="row")
    with open(output, "a", encoding="utf-8") as f:
        errors, good = [], []
        for r in todo:  # validate on the host first: a bad row never spoils a batch
            if "error" not in r:
                try:
                    if "generated" in r:
                        model.encode(r["input"], r["generated"])
                    elif not r["input"].strip():
                        raise InputError("input text is empty")
                except (InputError, ValueError) as e:
                    r["error"] = str(e)
            (errors if "error" in r else good).append(r)
        for r in errors:
            print(f"row {r['index']}: skipped: {r['error']}", file=log)
        _append(f, [{"index": r["index"], "error": r["error"]} for r in errors])
        counts["errors"] = len(errors)
        if bar is not None:
            bar.update(len(errors))
        for b, start in enumerate(range(0, len(good), batch_size)):
            if max_batches is not None and b >= max_batches:
                break
            chunk = good[start:start + batch_size]
            records = _attribute_chunk(model, chunk, batch_size, attribute_kwargs, log)
            _append(f, records)
            counts["done"] += sum("result" in r for r in records)
            counts["errors"] += sum("error" in r for r in records)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return counts


def _attribute_chunk(model, chunk, batch_size, kwargs, log) -> list:
    gen = [r.get("generated") for r in chunk]
    try:
        out = model.attribute([r["input"] for r in chunk],
                              None if any(g is None for g in gen) else gen,
                              batch_size=batch_size, show_progress=False, **kwargs)
        return [_result_record(r, s, out.info) for r, s in zip(chunk, out.sequence_attributions)]
    except (InputError, ValueError) as e:
        if len(chunk) == 1:
            print(f"row {chunk[0]['index']}: skipped: {e}", file=log)
            return [{"index": chunk[0]["index"], "error": str(e)}]
        recs = []
        for r in chunk:  # isolate the bad row
            recs += _attribute_chunk(model, [r], batch_size, kwargs, log)
        return recs
