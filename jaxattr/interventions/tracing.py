"""Causal tracing (Meng et al., 2022, "Locating and Editing Factual Associations in GPT").

Corrupt the subject: add Gaussian noise to the attributed embeddings of the subject's tokens
(``samples`` draws). Then restore one state to its clean value — the output of block ``l`` at
position ``t`` (``kind=None``), or the MLP / attention outputs of a window of layers around
``l`` at ``t`` — and measure how much of the clean probability of the answer comes back. The
``[L_tokens, n_layers]`` grid is one compiled program: every cell is the same noisy forward
with a different restore mask, vmapped in chunks over cells and samples. A cell does not
recompute the layers below the one it restores: the noisy run is computed once, its states
cached, and the cells that first restore layer ``l`` restart from layer ``l``'s cached state
(:func:`jaxattr.interventions.engine.restarted_metrics`), so on average a cell runs about half
of the blocks.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ..xla_safety import safe_jit
from ..encoding import InputError
from .categories import CATEGORIES, category_average
from .engine import restart_groups, restarted_metrics
from .results import TraceAverage, TraceResult
from .runs import answer_ids, encode_prompts, require_decoder_only

__all__ = ["causal_trace", "attribution_trace", "average_traces", "subject_token_range",
           "trace_masks"]

_KINDS = {None: "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


def subject_token_range(model, prompt: str, subject) -> tuple:
    """``(start, stop)`` token span of ``subject`` in ``prompt`` (the first occurrence; tokens
    that overlap its characters). A ``(start, stop)`` pair is validated and returned."""
    n = len(encode_prompts(model, prompt, name="prompt").tokens[0])
    if isinstance(subject, (tuple, list)) and len(subject) == 2 and all(
            isinstance(v, (int, np.integer)) for v in subject):
        s0, s1 = int(subject[0]), int(subject[1])
        if not 0 <= s0 < s1 <= n:
            raise InputError(f"subject span {tuple(subject)} is outside the prompt's {n} tokens.")
        return s0, s1
    if not isinstance(subject, str) or not subject.strip():
        raise InputError(f"subject must be a non-empty string found in the prompt, or a token "
                         f"span (start, stop); got {subject!r}.")
    c0 = prompt.find(subject)
    if c0 < 0:
        raise InputError(f"subject {subject!r} does not occur in the prompt {prompt!r}; give the "
                         f"subject exactly as written in the prompt (case and spaces), or a "
                         f"token span (start, stop).")
    c1 = c0 + len(subject)
    tok = model.tokenizer
    if not getattr(tok, "is_fast", False):
        raise InputError("finding the subject needs a fast tokenizer (character offsets); give "
                         "the subject as a token span (start, stop) instead.")
    enc = tok(prompt, return_offsets_mapping=True)
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"][:n]) if b > a and a < c1
            and b > c0]
    if not hits:
        raise InputError(f"no token of the prompt covers the subject {subject!r}.")
    return hits[0], hits[-1] + 1


def trace_masks(n_layers: int, length: int, kind: Optional[str], window: int) -> np.ndarray:
    """``[n_layers (site), C, L]`` restore masks of the grid cells ``c = t * n_layers + l``:
    cell ``(t, l)`` restores site ``j`` at position ``t`` for ``j = l`` (``kind=None``) or for
    ``j`` in ROME's window ``[max(0, l − w//2), min(n, l − (−w//2)))``."""
    c = length * n_layers
    m = np.zeros((n_layers, c, length), np.float32)
    for t in range(length):
        for l in range(n_layers):
            cell = t * n_layers + l
            if kind is None:
                m[l, cell, t] = 1.0
            else:
                lo, hi = max(0, l - window // 2), min(n_layers, l - (-window // 2))
                m[lo:hi, cell, t] = 1.0
    return m


def _start_site(kind):
    """Where a group of cells whose first restored layer is ``l`` restarts: the block output
    itself for ``kind=None`` (blocks ``l+1..`` run), else the block's input (``l..`` run)."""
    def start(layer, used):
        return f"blocks.{layer}.resid_post" if kind is None else f"blocks.{layer}.resid_pre"
    return start


@partial(safe_jit, static_argnames=("sites", "groups", "chunk"))
def _trace(backend, ids, mask, noise, answer, group_masks, order, *, sites, groups, chunk):
    last = jnp.sum(mask, axis=1) - 1                      # [1]
    clean = backend.forward(target_ids=ids, target_mask=mask, positions=last[:, None],
                            capture=sites)
    p = lambda lg: jax.nn.softmax(lg.astype(jnp.float32), -1)[:, answer]   # noqa: E731
    high = p(clean["logits"][:, 0])[0]
    s = noise.shape[0]
    run = {"target_ids": jnp.repeat(ids, s, 0), "target_mask": jnp.repeat(mask, s, 0)}
    lasts = jnp.repeat(last, s, 0)
    base = {"embed": lambda e: e + noise.astype(e.dtype)}
    starts = tuple(dict.fromkeys(g[0] for g in groups))
    noised = backend.forward(**run, positions=lasts[:, None], patch=base, capture=starts)
    low = p(noised["logits"][:, 0]).mean()
    cells = restarted_metrics(backend, run, groups=groups, group_masks=group_masks,
                              order=order, sources=clean["captured"],
                              starts=noised["captured"], metric=p, positions=lasts,
                              chunk=chunk)
    return cells.mean(-1), low, high


def causal_trace(model, prompt: str, subject, *, answer=None, noise: Union[float, np.ndarray]
                 = 3.0, samples: int = 10, kind: Optional[str] = None, window: int = 10,
                 key: Optional[jax.Array] = None, chunk: int = 16) -> TraceResult:
    """Trace where the model recalls a fact about ``subject`` (one prompt).

    Args:
      model: a decoder-only :class:`~jaxattr.AttributionModel`.
      prompt: the prompt, e.g. ``"The Space Needle is located in the city of"``.
      subject: the subject as written in the prompt (``"The Space Needle"``) or its token span.
      answer: the answer token (``" Seattle"``); default: the model's top prediction.
      noise: a multiple of the standard deviation of the embedding table's entries (ROME
        uses 3× the subjects' embedding std), or an explicit array
        ``[samples, n_subject_tokens, H]`` added to the subject's embeddings.
      samples: noisy runs averaged per cell (ignored with an explicit noise array).
      kind: ``None`` restores the block output (``blocks.{l}.resid_post``); ``"mlp"`` /
        ``"attn"`` the MLP / attention outputs of the ``window`` layers around ``l``.
      key: PRNG key for the noise (default ``jax.random.key(0)``).
      chunk: grid cells per vectorised call (memory ∝ chunk × samples forwards).

    Returns:
      :class:`TraceResult` with ``scores [L_tokens, n_layers]``, ``low_score``,
      ``high_score``, ``subject_range``.
    """
    require_decoder_only(model, "causal_trace")
    if kind not in _KINDS:
        raise InputError(f"kind must be None, 'mlp' or 'attn', got {kind!r}.")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InputError(f"window must be a positive integer, got {window!r}.")
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be one string, got {type(prompt).__name__}; trace "
                         f"prompts one by one and combine them with average_traces.")
    p = encode_prompts(model, prompt, name="prompt")
    s0, s1 = subject_token_range(model, prompt, subject)
    backend = model.adapter
    ids, mask = jnp.asarray(p.ids), jnp.asarray(p.mask)
    length = int(p.ids.shape[1])
    hidden = int(backend.embedding_matrix().shape[1])
    if isinstance(noise, (int, float)) and not isinstance(noise, bool):
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InputError(f"samples must be a positive integer, got {samples!r}.")
        std = float(jnp.std(backend.embedding_matrix().astype(jnp.float32))) * float(
            backend.embed_scale)
        key = jax.random.key(0) if key is None else key
        sub = float(noise) * std * jax.random.normal(key, (samples, s1 - s0, hidden))
    else:
        sub = jnp.asarray(noise, jnp.float32)
        if sub.ndim != 3 or sub.shape[1:] != (s1 - s0, hidden):
            raise InputError(f"noise array must be [samples, {s1 - s0} subject tokens, "
                             f"{hidden}], got shape {tuple(sub.shape)}.")
        if not bool(jnp.all(jnp.isfinite(sub))):
            raise InputError("noise array has NaN or infinite entries.")
    full = jnp.zeros((sub.shape[0], length, hidden), jnp.float32).at[:, s0:s1].set(sub)
    n_layers = _n_layers(backend)
    sites = tuple(f"blocks.{l}.{_KINDS[kind]}" for l in range(n_layers))
    m = trace_masks(n_layers, length, kind, window)
    groups, group_masks, order = restart_groups(
        {s: m[j] for j, s in enumerate(sites)}, {s: j for j, s in enumerate(sites)},
        _start_site(kind))
    if answer is None:
        out = backend.forward(target_ids=ids, target_mask=mask,
                              positions=jnp.asarray(p.last)[:, None])
        ans = int(jnp.argmax(out["logits"][0, 0]))
    else:
        ans = int(answer_ids(model, answer, 1, name="answer")[0])
    cells, low, high = _trace(backend, ids, mask, full, ans,
                              jax.tree_util.tree_map(jnp.asarray, group_masks),
                              jnp.asarray(order), sites=sites, groups=groups,
                              chunk=int(chunk))
    scores = np.asarray(cells, np.float32).reshape(length, n_layers)
    return TraceResult(
        scores=scores, low_score=float(low), high_score=float(high), subject_range=(s0, s1),
        tokens=p.tokens[0], answer=model.tokenizer.convert_ids_to_tokens([ans])[0],
        info={"kind": kind, "window": window if kind else 1,
              "noise": float(noise) if isinstance(noise, (int, float)) else "array",
              "samples": int(sub.shape[0]), "model": getattr(model, "name", None)})


def _n_layers(backend) -> int:
    return 1 + max(int(s.split(".")[1]) for s in backend.sites()
                   if s.startswith("blocks.") and s.endswith(".resid_post"))


def average_traces(traces: Sequence[TraceResult]) -> TraceAverage:
    """Average the indirect effects of traces by ROME's six position categories (each
    prompt counts once per category; standard errors over prompts)."""
    traces = list(traces)
    if not traces:
        raise InputError("average_traces needs at least one TraceResult.")
    kinds = {(t.info.get("kind"), t.info.get("window")) for t in traces}
    if len(kinds) > 1:
        raise InputError(f"traces of different kinds / windows cannot be averaged: {kinds}.")
    mean, sem, count = category_average([t.indirect_effect for t in traces],
                                        [t.subject_range for t in traces])
    return TraceAverage(mean=mean.astype(np.float32), sem=sem.astype(np.float32),
                        count=count.astype(np.int32),
                        low=np.array([t.low_score for t in traces], np.float32),
                        high=np.array([t.high_score for t in traces], np.float32),
                        categories=CATEGORIES, info=dict(traces[0].info))


def attribution_trace(model, prompt: str, subject, *, answer, foil,
                      sites: str = "blocks.*.mlp_out") -> TraceResult:
    """Contrastive attribution tracing (the Inseq paper's factual-knowledge study, one backward
    instead of one run per layer): ``layer_gradient_x_activation`` of
    ``p(answer) − p(foil)`` at every site of ``sites`` (default every ``blocks.*.mlp_out``),
    summed over the hidden axis, as a ``[L_tokens, n_layers]`` map like a causal trace's.

    Args:
      prompt: the prompt; subject: as in :func:`causal_trace`.
      answer, foil: the true and a false answer (``" Paris"``, ``" Rome"``); each is
        attributed as its first token.

    Returns:
      :class:`TraceResult` whose ``scores`` are the attributions (``low_score`` 0,
      ``high_score`` the contrastive probability difference), so :func:`average_traces` maps
      them onto ROME's position categories.
    """
    require_decoder_only(model, "attribution_trace")
    s0, s1 = subject_token_range(model, prompt, subject)
    for name, v in (("answer", answer), ("foil", foil)):
        if not isinstance(v, str):
            raise InputError(f"{name} must be the answer text as it continues the prompt "
                             f"(' Paris'), got {v!r}.")
    a = int(answer_ids(model, answer, 1, name="answer")[0])
    f = int(answer_ids(model, foil, 1, name="foil")[0])
    tok = model.tokenizer
    out = model.attribute(prompt, prompt + answer, method="layer_gradient_x_activation",
                          layer=sites, attributed_fn="contrast_prob_diff",
                          contrast_targets=prompt + foil, step_scores=("contrast_prob_diff",),
                          show_progress=False)
    seq = out.sequence_attributions[0]
    att = np.asarray(seq.target_attributions, np.float64)      # [rows, 1, n_sites, H]
    n = len(encode_prompts(model, prompt, name="prompt").tokens[0])
    scores = att[:n, 0].sum(-1)                                 # [L_tokens, n_sites]
    diff = float(np.asarray(seq.step_scores["contrast_prob_diff"])[0])
    return TraceResult(
        scores=scores.astype(np.float32), low_score=0.0, high_score=diff,
        subject_range=(s0, s1), tokens=tuple(seq.target[:n]),
        answer=tok.convert_ids_to_tokens([a])[0],
        info={"kind": "attribution", "window": 1, "sites": sites,
              "foil": tok.convert_ids_to_tokens([f])[0], "model": getattr(model, "name", None)})
