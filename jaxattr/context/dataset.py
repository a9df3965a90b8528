"""PECoRe over a JSON-lines dataset: batched, incremental, resumable (like
:func:`jaxattr.dataset.attribute_dataset`).

Each input line is a JSON object with ``input_current_text`` and optionally
``input_context_text``, ``output_current_text``, ``output_context_text``. Each output line is
``{"index": i, "result": AttributeContextOutput.to_dict()}`` or ``{"index": i, "error": ...}``;
rerunning the same command skips the rows already written.
"""
from __future__ import annotations

import json
import sys
from typing import Optional

from ..dataset import completed_rows, write_chunks
from ..encoding import InputError
from .pecore import attribute_context

__all__ = ["attribute_context_dataset", "ROW_FIELDS"]

ROW_FIELDS = ("input_current_text", "input_context_text", "output_current_text",
              "output_context_text")


def _read(path: str) -> list:
    if not path.lower().endswith(".jsonl"):
        raise InputError(f"unsupported input file {path!r}: attribute-context datasets are "
                         ".jsonl files with one JSON object per line.")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = {"index": i}
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                row["error"] = f"line {i + 1} is not a JSON object: {e}"
                rows.append(row)
                continue
            unknown = sorted(set(rec) - set(ROW_FIELDS))
            if unknown:
                row["error"] = f"row {i} has unknown fields {unknown}; use {list(ROW_FIELDS)}"
            elif not isinstance(rec.get("input_current_text"), str):
                row["error"] = f"row {i} has no input_current_text"
            else:
                row["fields"] = {k: rec.get(k) for k in ROW_FIELDS}
            rows.append(row)
    return rows


def attribute_context_dataset(model, input_file: str, output: str, *, batch_size: int = 8,
                              show_progress: bool = True, max_batches: Optional[int] = None,
                              log=None, **kwargs) -> dict:
    """Run :func:`jaxattr.attribute_context` on every row of ``input_file`` (``batch_size``
    rows per call) into the JSON-lines ``output``; ``kwargs`` are its shared options.

    Returns ``{"done", "skipped", "errors", "total"}`` row counts of this run.
    """
    log = sys.stderr if log is None else log
    rows = _read(input_file)
    done = completed_rows(output)
    todo = [r for r in rows if r["index"] not in done]
    counts = {"done": 0, "skipped": len(rows) - len(todo), "errors": 0, "total": len(rows)}
    errors = [r for r in todo if "error" in r]
    good = [r for r in todo if "error" not in r]
    chunks = [good[i:i + batch_size] for i in range(0, len(good), batch_size)]
    if max_batches is not None:
        chunks = chunks[:max_batches]
    counts.update(write_chunks(output, errors, chunks,
                               lambda chunk: _chunk(model, chunk, kwargs, log),
                               total=len(todo), desc="Context attribution",
                               show_progress=show_progress, log=log))
    return counts


def _chunk(model, chunk: list, kwargs: dict, log) -> list:
    fields = {k: [r["fields"][k] for r in chunk] for k in ROW_FIELDS}
    try:
        outs = attribute_context(model, fields.pop("input_current_text"), **fields, **kwargs)
        return [{"index": r["index"], "result": o.to_dict()} for r, o in zip(chunk, outs)]
    except (InputError, ValueError) as e:
        if len(chunk) == 1:
            print(f"row {chunk[0]['index']}: skipped: {e}", file=log)
            return [{"index": chunk[0]["index"], "error": str(e)}]
        return [rec for r in chunk for rec in _chunk(model, [r], kwargs, log)]
