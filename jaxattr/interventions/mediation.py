"""Causal mediation analysis (Vig et al., 2020): how much of an input intervention's effect on a
response flows through each unit of the network.

The response is ``y = p(anti-stereotypical form) / p(stereotypical form)`` at one scored output
position. An *intervention* swaps the input (``base`` → ``intervened``, e.g. the pronoun
``he`` → ``she``, the occupation → ``man`` / ``woman``); both inputs must tokenise to the same
length, because mediators are swapped position by position. With ``y(x)`` the response of input
``x`` and ``y(x, z ← z(x'))`` the response of ``x`` with mediator ``z`` set to its value under
``x'``:

* total effect           ``TE  = y(int) / y(base) − 1``
* natural indirect effect ``NIE = y(base, z ← z(int)) / y(base) − 1``  (the effect *through* z)
* natural direct effect   ``NDE = y(int, z ← z(base)) / y(base) − 1``  (the effect *around* z)

A mediator is one unit of one block: an attention head (``blocks.{l}.head_out``), an MLP
"neuron" — the internals expose the MLP's *output* (``blocks.{l}.mlp_out``, ``[B, L, H]``), not
its intermediate activation, so MLP units are the hidden dimensions of ``mlp_out`` — or a hidden
dimension of any other ``[B, L, H]`` site (``resid_pre`` / ``resid_post`` / ``attn_out`` /
``cross_attn_out``), or of ``final_norm`` (the language-model head's input, where the logits
are linear in the units). By default a unit is swapped at every position of its sequence at
once; ``positions=`` swaps it at one position per example only — Vig et al.'s neuron *at the
position of the intervened word* (``positions="intervened"``) or any given one.
``units="layer"`` swaps all units of a block together (one effect per block).
:func:`mediate_interventions` runs several interventions of the same inputs (the profession
word set to ``man`` and to ``woman``) against one base. All mediators of
all blocks, for NIE and NDE, run as one compiled program: masked patches mapped over cells in
chunks (:func:`jaxattr.interventions.engine.patched_metrics`).
"""
from __future__ import annotations

from functools import partial
from typing import Mapping, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from ..xla_safety import safe_jit
from ..encoding import InputError, _as_list, _check_nonempty, _strip_trailing_eos
from .engine import patched_metrics
from .results import MediationResult

__all__ = ["causal_mediation", "mediate_interventions", "MEDIATORS"]

# mediator name -> site kind (per block)
MEDIATORS = {"mlp": "mlp_out", "heads": "head_out", "mlp_out": "mlp_out",
             "head_out": "head_out", "attn_out": "attn_out", "resid_pre": "resid_pre",
             "resid_post": "resid_post", "cross_attn_out": "cross_attn_out",
             "final_norm": "final_norm"}


def _response(anti, stereo):
    """``logits [B, V] -> log y [B]`` with ``y = p(anti) / p(stereo)`` (the softmax
    normaliser cancels, so ``log y`` is the logit difference)."""
    def fn(logits):
        lg = logits.astype(jnp.float32)
        take = lambda i: jnp.take_along_axis(lg, i[:, None], axis=-1)[:, 0]   # noqa: E731
        return take(anti) - take(stereo)
    return fn


@partial(safe_jit, static_argnames=("sites", "chunk"))
def _mediate(backend, base_run, int_run, anti, stereo, pos, masks, rows, *, sites, chunk):
    metric = _response(anti, stereo)
    b = backend.forward(**base_run, positions=pos[:, None], capture=sites)
    i = backend.forward(**int_run, positions=pos[:, None], capture=sites)
    nie = patched_metrics(backend, base_run, sources=i["captured"], masks=masks, metric=metric,
                          positions=pos, rows=rows, chunk=chunk)
    nde = patched_metrics(backend, int_run, sources=b["captured"], masks=masks, metric=metric,
                          positions=pos, rows=rows, chunk=chunk)
    return metric(b["logits"][:, 0]), metric(i["logits"][:, 0]), nie, nde


def _token_ids(model, words, n, name, *, target_side):
    """``[n]`` ids of single-token forms (one per example or one for all; ints are ids)."""
    if isinstance(words, (str, int, np.integer)):
        words = [words] * n
    words = list(words)
    if len(words) != n:
        raise InputError(f"{name} has {len(words)} entries for {n} examples; give one per "
                         "example or a single one for all.")
    tok = model.tokenizer
    vocab = int(model.adapter.embedding_matrix().shape[0])
    out = np.zeros((n,), np.int32)
    for k, w in enumerate(words):
        if isinstance(w, (int, np.integer)):
            if not 0 <= int(w) < vocab:
                raise InputError(f"{name}[{k}]={w} is not a token id of this model (vocabulary "
                                 f"of {vocab}).")
            out[k] = int(w)
            continue
        if not isinstance(w, str) or not w.strip():
            raise InputError(f"{name}[{k}] must be a non-empty word (or a token id), got {w!r}.")
        ids = list((tok(text_target=w, add_special_tokens=False) if target_side
                    else tok(w, add_special_tokens=False))["input_ids"])
        if len(ids) != 1:
            raise InputError(f"{name}[{k}]={w!r} is {len(ids)} tokens "
                             f"{tok.convert_ids_to_tokens(ids)}; the response compares the "
                             "probabilities of two single tokens — give the form's first "
                             "token (or its id).")
        out[k] = ids[0]
    return out


def _pad(rows, pad):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for k, r in enumerate(rows):
        ids[k, :len(r)], mask[k, :len(r)] = r, 1
    return ids, mask


def _encode(model, base, intervened, targets):
    """Forward keyword arrays of the base and intervened runs, the scored position ``[N]`` and
    the token strings of each base input."""
    tok = model.tokenizer
    base = _as_list(base, "base_sources")
    intervened = _as_list(intervened, "intervened_sources")
    if len(base) != len(intervened):
        raise InputError(f"got {len(base)} base_sources and {len(intervened)} "
                         "intervened_sources; give one intervened input per base input.")
    enc = model.is_encoder_decoder
    rows = {"base_sources": [], "intervened_sources": []}
    for name, texts in (("base_sources", base), ("intervened_sources", intervened)):
        for k, t in enumerate(texts):
            _check_nonempty(t, name, k)
            ids = list(tok(t)["input_ids"])
            rows[name].append(ids if enc else _strip_trailing_eos(ids, tok))
    for k, (a, b) in enumerate(zip(rows["base_sources"], rows["intervened_sources"])):
        if len(a) != len(b):
            raise InputError(
                f"example {k}: the base input has {len(a)} tokens and the intervened one "
                f"{len(b)}; mediators are swapped position by position, so the intervention "
                f"must keep the token length (swap one word for another single-token word).\n"
                f"  base:       {tok.convert_ids_to_tokens(a)}\n"
                f"  intervened: {tok.convert_ids_to_tokens(b)}")
    tokens = tuple(tuple(tok.convert_ids_to_tokens(r)) for r in rows["base_sources"])
    pad = model.pad_token_id
    if not enc:
        if targets is not None:
            raise InputError(f"{getattr(model, 'name', 'this model')} is decoder-only: the "
                             "response is read after the prompt; pass targets=None.")
        b_ids, b_mask = _pad(rows["base_sources"], pad)
        i_ids, _ = _pad(rows["intervened_sources"], pad)
        pos = b_mask.sum(1) - 1
        return ({"target_ids": jnp.asarray(b_ids), "target_mask": jnp.asarray(b_mask)},
                {"target_ids": jnp.asarray(i_ids), "target_mask": jnp.asarray(b_mask)},
                pos.astype(np.int32), tokens)
    if targets is None:
        raise InputError("targets is required for encoder-decoder models: the decoder prefix "
                         "before the scored token ('' scores the first output token).")
    targets = [targets] * len(base) if isinstance(targets, str) else list(targets)
    if len(targets) != len(base):
        raise InputError(f"got {len(targets)} targets for {len(base)} examples; give one "
                         "decoder prefix per example or a single one for all.")
    dec = []
    for k, t in enumerate(targets):
        if not isinstance(t, str):
            raise InputError(f"targets[{k}] must be a string (the decoder prefix), got {t!r}.")
        ids = list(tok(text_target=t, add_special_tokens=False)["input_ids"]) if t.strip() else []
        dec.append([model.decoder_start_token_id] + ids)
    d_ids, d_mask = _pad(dec, pad)
    b_ids, b_mask = _pad(rows["base_sources"], pad)
    i_ids, _ = _pad(rows["intervened_sources"], pad)
    common = {"target_ids": jnp.asarray(d_ids), "target_mask": jnp.asarray(d_mask),
              "source_mask": jnp.asarray(b_mask)}
    return ({**common, "source_ids": jnp.asarray(b_ids)},
            {**common, "source_ids": jnp.asarray(i_ids)},
            (d_mask.sum(1) - 1).astype(np.int32), tokens)


def _sites(model, kind, layers):
    """Site names of the mediated blocks, in the model's site order."""
    available = model.adapter.sites()
    if kind == "final_norm":
        if layers is not None:
            raise InputError("mediator='final_norm' is the head's input (one site); pass "
                             "layers=None.")
        return ("decoder.final_norm",) if model.is_encoder_decoder else ("final_norm",)
    every = [s for s in available if s.endswith("." + kind) and ".blocks." in "." + s]
    if layers is None:
        if not every:
            raise InputError(f"this model has no '{kind}' sites; model.sites() lists them.")
        return tuple(every)
    layers = [layers] if isinstance(layers, (str, int)) else list(layers)
    if not layers:
        raise InputError("layers is empty; pass None for every block or block names such as "
                         "'decoder.blocks.1'.")
    chosen = []
    for l in layers:
        if isinstance(l, (int, np.integer)) and not isinstance(l, bool):
            if model.is_encoder_decoder:
                raise InputError(f"layers: {l!r} is ambiguous on an encoder-decoder model; "
                                 f"name the stack, e.g. 'encoder.blocks.{l}' or "
                                 f"'decoder.blocks.{l}'.")
            l = f"blocks.{int(l)}"
        if not isinstance(l, str):
            raise InputError(f"layers entries are block names or ints, got {l!r}.")
        site = f"{l.rstrip('.')}.{kind}"
        if site not in available:
            blocks = sorted({s.rsplit(".", 1)[0] for s in every})
            raise InputError(f"layers: no site {site!r}; the blocks with '{kind}' are {blocks}.")
        chosen.append(site)
    return tuple(s for s in available if s in set(chosen))


def _position_rows(positions, sites, base_run, int_run, is_ed) -> Optional[dict]:
    """``{site: [N, L_site]}`` 0/1 weights of the swapped position of each example (``None``:
    every position). ``positions``: ``None``, ``"intervened"`` (the first token where the base
    and the intervened input differ), an int for all examples or one int per example; it
    indexes the mediated site's own token axis (the source for ``encoder.`` sites)."""
    if positions is None:
        return None
    side = "source" if is_ed else "target"
    b_ids = np.asarray(base_run[f"{side}_ids"])
    lengths = {"encoder": np.asarray(base_run.get("source_mask", base_run["target_mask"])).sum(1),
               "target": np.asarray(base_run["target_mask"]).sum(1)}
    n = len(b_ids)
    if isinstance(positions, str):
        if positions != "intervened":
            raise InputError(f"positions must be None (all), 'intervened', an int or one int per "
                             f"example, got {positions!r}.")
        diff = b_ids != np.asarray(int_run[f"{side}_ids"])
        if not diff.any(1).all():
            k = int(np.argmin(diff.any(1)))
            raise InputError(f"positions='intervened': example {k}'s intervened input equals "
                             "its base input; there is no intervened position.")
        pos = diff.argmax(1)
        if is_ed and any(not s.startswith("encoder.") for s in sites):
            raise InputError("positions='intervened' is a source position; on an encoder-decoder "
                             "model it applies to encoder sites only (layers='encoder.blocks.<l>'"
                             "), or give decoder positions as ints.")
    elif isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        pos = np.full((n,), int(positions))
    else:
        pos = list(positions)
        if len(pos) != n or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool)
                                    for p in pos):
            raise InputError(f"positions needs one int per example ({n}), got {positions!r}.")
        pos = np.asarray(pos)
    rows = {}
    for site in sites:
        axis = "encoder" if site.startswith("encoder.") else "target"
        width = int((base_run["source_ids"] if axis == "encoder" else base_run["target_ids"])
                    .shape[1])
        bad = (pos < 0) | (pos >= lengths[axis])
        if bad.any():
            k = int(np.argmax(bad))
            raise InputError(f"positions: {int(pos[k])} is outside example {k}'s "
                             f"{int(lengths[axis][k])} tokens on the axis of {site!r}.")
        rows[site] = jnp.asarray(np.arange(width)[None] == pos[:, None], jnp.float32)
    return rows


def causal_mediation(model, base_sources: Union[str, Sequence[str]],
                     intervened_sources: Union[str, Sequence[str]],
                     targets: Union[str, Sequence[str], None], *,
                     stereotypical, anti_stereotypical, mediator: str = "mlp",
                     layers: Optional[Sequence[Union[str, int]]] = None, units: str = "each",
                     positions=None, chunk: int = 64) -> MediationResult:
    """Total, natural direct and natural indirect effects of an input intervention through every
    unit of the chosen blocks (Vig et al., 2020).

    Args:
      model: an :class:`~jaxattr.AttributionModel` (encoder-decoder or decoder-only).
      base_sources: the original inputs (a string or a list), e.g. ``"the nurse said he is
        tired"``; decoder-only: the prompts.
      intervened_sources: the same inputs after the intervention (``"... said she is ..."``),
        one per base input, each tokenising to the same length as its base input.
      targets: encoder-decoder: the decoder prefix forced before the scored token, one per
        example or one for all (``""`` scores the first output token, e.g. the article;
        ``"la"`` scores the noun after it). Decoder-only: ``None`` (the token after the prompt).
      stereotypical, anti_stereotypical: the two single-token forms whose probability ratio is
        the response ``y = p(anti) / p(stereo)`` (words or token ids; one per example or one
        for all).
      mediator: ``"mlp"`` (hidden dimensions of ``blocks.{l}.mlp_out``: the internals have no
        site for the MLP's intermediate activation), ``"heads"`` (``blocks.{l}.head_out``) or a
        site kind (``"resid_post"``, ``"resid_pre"``, ``"attn_out"``, ``"cross_attn_out"``,
        ``"final_norm"``: the head's input, one row).
      layers: ``None`` (every block of every stack) or block names (``"decoder.blocks.1"``;
        ints on decoder-only models).
      units: ``"each"`` (one effect per unit) or ``"layer"`` (all units of a block swapped
        together: one effect per block).
      positions: where a unit is swapped: ``None`` (every position at once), ``"intervened"``
        (per example, the first token where the base and intervened inputs differ — Vig et
        al.'s neuron at the intervened word; decoder-only, or encoder sites), an int for all
        examples, or one int per example (on the mediated site's own token axis).
      chunk: cells per vectorised call (memory ∝ chunk × examples forwards).

    Returns:
      :class:`MediationResult`: ``total_effect [N]``, ``indirect_effect`` and
      ``direct_effect`` ``[N, n_blocks, n_units]`` (``n_units`` = heads, hidden size, or 1 with
      ``units="layer"``), ``layers`` (the site of each row), ``response [N, 2]`` (``y`` of the
      base and intervened inputs).
    """
    kind = MEDIATORS.get(mediator)
    if kind is None:
        raise InputError(f"mediator must be one of {sorted(MEDIATORS)}, got {mediator!r}.")
    if units not in ("each", "layer"):
        raise InputError(f"units must be 'each' or 'layer', got {units!r}.")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise InputError(f"chunk must be a positive integer, got {chunk!r}.")
    base_run, int_run, pos, tokens = _encode(model, base_sources, intervened_sources, targets)
    n = len(pos)
    stereo = _token_ids(model, stereotypical, n, "stereotypical",
                        target_side=model.is_encoder_decoder)
    anti = _token_ids(model, anti_stereotypical, n, "anti_stereotypical",
                      target_side=model.is_encoder_decoder)
    if np.any(stereo == anti):
        raise InputError("stereotypical and anti_stereotypical are the same token for example "
                         f"{int(np.argmax(stereo == anti))}; the response compares two forms.")
    sites = _sites(model, kind, layers)
    backend = model.adapter
    pos = jnp.asarray(pos)
    probe = backend.forward(**base_run, positions=pos[:, None], capture=sites)["captured"]
    shapes = {s: probe[s].shape[1:] for s in sites}       # [L, H] or [L, heads, d_head]
    n_units = 1 if units == "layer" else int(next(iter(shapes.values()))[1])
    if any(int(v[1]) != n_units for v in shapes.values()) and units == "each":
        raise InputError(f"the chosen blocks have different numbers of {kind} units; "
                         "mediate them in separate calls (layers=...).")
    masks = {}
    for k, s in enumerate(sites):
        length, width = int(shapes[s][0]), int(shapes[s][1])
        m = np.zeros((len(sites) * n_units, length, width), np.float32)
        if units == "layer":
            m[k] = 1.0
        else:
            m[k * n_units + np.arange(n_units), :, np.arange(n_units)] = 1.0
        masks[s] = jnp.asarray(m)
    rows = _position_rows(positions, sites, base_run, int_run, model.is_encoder_decoder)
    ly_base, ly_int, nie, nde = _mediate(backend, base_run, int_run, jnp.asarray(anti),
                                         jnp.asarray(stereo), pos, masks, rows, sites=sites,
                                         chunk=int(chunk))
    ly_base = np.asarray(ly_base, np.float64)
    ly_int = np.asarray(ly_int, np.float64)
    shape = (n, len(sites), n_units)
    effect = lambda ly: np.expm1(np.asarray(ly, np.float64).T - ly_base[:, None])  # noqa: E731
    return MediationResult(
        total_effect=np.expm1(ly_int - ly_base).astype(np.float32),
        direct_effect=effect(nde).reshape(shape).astype(np.float32),
        indirect_effect=effect(nie).reshape(shape).astype(np.float32),
        mediator=mediator,
        info={"model": getattr(model, "name", None), "units": units, "kind": kind,
              "response": "p(anti_stereotypical) / p(stereotypical)",
              "positions": ("all positions of each unit together" if rows is None else
                            [int(np.argmax(np.asarray(r))) for r in next(iter(rows.values()))]),
              "scored_position": [int(p) for p in np.asarray(pos)],
              "tokens": [list(t) for t in tokens]},
        layers=tuple(sites),
        response=np.exp(np.stack([ly_base, ly_int], 1)).astype(np.float32))


def mediate_interventions(model, base_sources: Union[str, Sequence[str]],
                          interventions: Mapping[str, Union[str, Sequence[str]]],
                          targets: Union[str, Sequence[str], None], **kwargs) -> dict:
    """Several interventions of the same base inputs, each mediated as by
    :func:`causal_mediation` (Vig et al. set the profession word to ``"man"`` and to
    ``"woman"``: ``interventions={"man": [...], "woman": [...]}``).

    All interventions share the base inputs, the response, the mediators and the compiled
    program (same shapes: one compilation). Keyword arguments are those of
    :func:`causal_mediation`.

    Returns:
      ``{name: MediationResult}`` in the order of ``interventions``; every result's
      ``response[:, 0]`` is the same base response.
    """
    if not isinstance(interventions, Mapping) or not interventions:
        raise InputError("interventions must be a non-empty dict {name: intervened inputs}, "
                         "e.g. {'man': [...], 'woman': [...]}.")
    out = {}
    for name, texts in interventions.items():
        if not isinstance(name, str):
            raise InputError(f"intervention names are strings, got {name!r}.")
        res = causal_mediation(model, base_sources, texts, targets, **kwargs)
        res.info["intervention"] = name
        out[name] = res
    return out
