"""Collecting probing features: a model's representations at sites for chosen tokens.

One forward per batch captures every requested site (``model.run_with_cache``); the chosen
tokens' rows are kept, so each example runs once whatever the number of sites. Tokens are
chosen

* by position: ``positions=3`` (every example), ``positions=[[1], [1, 4], ...]`` (per
  example; negative positions count from the last valid token);
* by a function of the token strings: ``select=lambda toks: toks.index("he")`` (an index or a
  list of indices);
* by word: ``words=[2, [0, 3], ...]`` (word indices of each text, as the tokenizer splits
  words), each word's subword rows pooled with ``pooling="first" | "last" | "mean"``.

With ``cache_dir`` the arrays are written there as ``.npy`` files and returned memory-mapped;
a second call with the same model, texts, sites and selection reads them back instead of
running the model (within a process the result is also remembered per model).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ..encoding import InputError
from .data import aligned_empty

__all__ = ["Features", "collect_features", "POOLINGS"]

POOLINGS = ("first", "last", "mean")
_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class Features:
    """Representations of the chosen tokens (``R`` rows: one per chosen token or word).

    Attributes:
      values: ``{site: [R, H]}`` float32 arrays (memory-mapped with ``cache_dir``).
      example: ``[R]`` index of the example each row comes from.
      position: ``[R]`` token position of each row (a word's first subword).
      tokens: the ``R`` token (or word) strings: natural ``types=`` for a control task.
    """
    values: Mapping[str, np.ndarray]
    example: np.ndarray
    position: np.ndarray
    tokens: tuple

    def __len__(self) -> int:
        return int(self.example.shape[0])

    @property
    def sites(self) -> tuple:
        """The site names, in collection order."""
        return tuple(self.values)

    def array(self, sites: Optional[Sequence[str]] = None) -> np.ndarray:
        """The sites stacked as ``[R, n_sites, H]`` float32 (all sites must share ``H``), 64-byte
        aligned so that :func:`~jaxattr.probing.fit` uses it in place (no copy)."""
        names = list(sites or self.values)
        first = np.asarray(self.values[names[0]])
        out = aligned_empty((first.shape[0], len(names)) + first.shape[1:])
        for j, s in enumerate(names):      # 64-byte aligned: fit() reads it without a copy
            out[:, j] = self.values[s]
        return out


def _side(model, names) -> str:
    from ..internals import parse_site
    stacks = {parse_site(n).stack for n in names}
    if len(stacks) > 1:
        raise InputError(f"sites {list(names)} mix encoder and decoder stacks; collect each "
                         f"side with its own call (positions differ) and merge the dicts.")
    return "source" if stacks == {"encoder"} else "target"


def _fingerprint(model) -> str:
    """Model identity for the disk cache: name, config and a checksum of parameters."""
    import jax
    h = hashlib.sha256(str(getattr(model, "name", type(model).__name__)).encode())
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        h.update(cfg.to_json_string().encode())
    params = getattr(getattr(model, "adapter", None), "params", None)
    for leaf in jax.tree.leaves(params)[:8]:
        h.update(np.asarray(leaf, np.float64).sum().tobytes())
    return h.hexdigest()


def _as_rows(sel, n_valid: int, what: str, i: int) -> list[int]:
    items = [sel] if isinstance(sel, (int, np.integer)) else list(sel)
    rows = []
    for p in items:
        p = int(p)
        q = p + n_valid if p < 0 else p
        if not 0 <= q < n_valid:
            raise InputError(f"{what} {p} of example {i} is outside its {n_valid} tokens.")
        rows.append(q)
    return rows


def _word_spans(tokenizer, text: str, ids: list, side: str, decoder_only: bool, i: int):
    """``{word index: [token positions]}`` of ``text`` inside the model's token ids."""
    enc = tokenizer(text) if (side == "source" or decoder_only) else tokenizer(text_target=text)
    ref = list(enc["input_ids"])
    wid = enc.word_ids()
    for o in range(len(ids) - len(ref) + 1):
        if ids[o:o + len(ref)] == ref:
            break
    else:
        raise InputError(f"example {i}: the tokenized text was not found in the model's "
                         f"tokens; words= needs the text the model ran on.")
    spans: dict = {}
    for j, w in enumerate(wid):
        if w is not None:
            spans.setdefault(w, []).append(o + j)
    return spans


def collect_features(model, input_texts: Union[str, Sequence[str]],
                     generated_texts: Optional[Union[str, Sequence[str]]] = None, *,
                     sites: Union[str, Sequence[str]] = ("blocks.*.resid_post",),
                     positions=None, select: Optional[Callable] = None, words=None,
                     pooling: str = "mean", batch_size: int = 32,
                     cache_dir: Optional[Union[str, os.PathLike]] = None,
                     show_progress: bool = True) -> Features:
    """Representations at ``sites`` of chosen tokens of a data set.

    Args:
      model: an :class:`~jaxattr.AttributionModel` (anything with ``run_with_cache``,
        ``sites()`` and ``tokenizer``).
      input_texts, generated_texts: as for ``model.run_with_cache``.
      sites: names or globs; all on one side (``encoder.`` sites read the source tokens,
        others the target / decoder-only text).
      positions / select / words: exactly one token choice (module docstring).
      pooling: how a word's subword rows become one row (``words=``).
      batch_size: examples per forward.
      cache_dir: keep the arrays on disk (memory-mapped) and reuse them on later calls.
      show_progress: a progress bar over batches.

    Returns:
      :class:`Features` with ``values[site]`` ``[R, H]``.
    """
    texts = [input_texts] if isinstance(input_texts, str) else list(input_texts)
    gens = (None if generated_texts is None else
            [generated_texts] if isinstance(generated_texts, str) else list(generated_texts))
    if gens is not None and len(gens) != len(texts):
        raise InputError(f"generated_texts has {len(gens)} entries for {len(texts)} inputs.")
    if sum(x is not None for x in (positions, select, words)) != 1:
        raise InputError("choose tokens with exactly one of positions=, select= or words=.")
    if pooling not in POOLINGS:
        raise InputError(f"pooling={pooling!r}; choose one of {POOLINGS}.")
    if int(batch_size) < 1:
        raise InputError(f"batch_size={batch_size}; give a positive number of examples.")
    from ..internals import resolve_sites
    names = tuple(resolve_sites(sites, model.sites()))
    side = _side(model, names)
    n = len(texts)
    for what, sel in (("positions", positions), ("words", words)):
        if sel is not None and not isinstance(sel, (int, np.integer)) and len(sel) != n:
            raise InputError(f"{what} has {len(sel)} entries for {n} examples; give one per "
                             f"example (or one int for all).")
    key_doc = json.dumps(dict(model=_fingerprint(model), texts=texts, gens=gens, sites=names,
                              positions=None if positions is None else np.asarray(
                                  positions, dtype=object).tolist(),
                              select=None if select is None else getattr(
                                  select, "__qualname__", repr(select)),
                              words=None if words is None else np.asarray(
                                  words, dtype=object).tolist(),
                              pooling=pooling), sort_keys=True, default=str)
    key = hashlib.sha256(key_doc.encode()).hexdigest()[:24]
    memo = _MEMO.setdefault(model, {}) if _weakrefable(model) else {}
    if key in memo:
        return memo[key]
    folder = None if cache_dir is None else Path(cache_dir) / f"features-{key}"
    if folder is not None and (folder / "meta.json").is_file():
        feats = _read(folder)
        memo[key] = feats
        return feats

    tok = model.tokenizer
    decoder_only = not getattr(model.config, "is_encoder_decoder", False)
    chunks: dict = {s: [] for s in names}
    example, position, strings = [], [], []
    starts = range(0, n, int(batch_size))
    if show_progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="Collecting features", unit="batch")
    for a in starts:
        b = min(a + int(batch_size), n)
        _, cache = model.run_with_cache(texts[a:b], None if gens is None else gens[a:b],
                                        sites=names)
        ids = np.asarray(cache.source_tokens if side == "source" else cache.tokens)
        mask = np.asarray(cache.source_mask if side == "source" else cache.mask)
        vals = {s: np.asarray(cache[s], np.float32) for s in names}
        for r in range(b - a):
            i = a + r
            valid = [int(t) for t, m in zip(ids[r], mask[r]) if m]
            toks = tok.convert_ids_to_tokens(valid)
            if words is not None:
                ws = words if isinstance(words, (int, np.integer)) else words[i]
                text = texts[i] if side == "source" or gens is None else gens[i]
                spans = _word_spans(tok, text, valid, side, decoder_only, i)
                groups = []
                for w in ([ws] if isinstance(ws, (int, np.integer)) else list(ws)):
                    w = int(w) + (len(spans) if int(w) < 0 else 0)
                    if w not in spans:
                        raise InputError(f"word {w} of example {i} does not exist; the text "
                                         f"has {len(spans)} words.")
                    groups.append(spans[w])
            else:
                sel = positions if select is None else select(list(toks))
                what = "position" if select is None else "select() index"
                if select is None and not isinstance(positions, (int, np.integer)):
                    sel = positions[i]
                groups = [[p] for p in _as_rows(sel, len(valid), what, i)]
            for g in groups:
                span = g[:1] if pooling == "first" else g[-1:] if pooling == "last" else g
                for s in names:
                    chunks[s].append(vals[s][r, span].mean(0))
                example.append(i)
                position.append(g[0])
                strings.append(tok.convert_tokens_to_string(toks[g[0]:g[-1] + 1]).strip()
                               if len(g) > 1 else toks[g[0]])
    values = {s: np.stack(chunks[s]) if chunks[s] else np.zeros((0, 0), np.float32)
              for s in names}
    feats = Features(values=values, example=np.asarray(example, np.int64),
                     position=np.asarray(position, np.int64), tokens=tuple(strings))
    if folder is not None:
        _write(folder, feats)
        feats = _read(folder)
    memo[key] = feats
    return feats


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def _write(folder: Path, feats: Features) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    files = {}
    for j, (s, v) in enumerate(feats.values.items()):
        mm = np.lib.format.open_memmap(tmp / f"site{j}.npy", mode="w+", dtype=np.float32,
                                       shape=v.shape)
        mm[...] = v
        mm.flush()
        files[s] = f"site{j}.npy"
    np.save(tmp / "example.npy", feats.example)
    np.save(tmp / "position.npy", feats.position)
    (tmp / "meta.json").write_text(json.dumps(dict(files=files, tokens=list(feats.tokens))),
                                   encoding="utf-8")
    os.replace(tmp, folder)


def _read(folder: Path) -> Features:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    values = {s: np.load(folder / f, mmap_mode="r") for s, f in meta["files"].items()}
    return Features(values=values, example=np.load(folder / "example.npy"),
                    position=np.load(folder / "position.npy"), tokens=tuple(meta["tokens"]))
