"""Value zeroing (Mohebbi et al., 2023): how much each token's value vectors shape each state.

For every layer ``l`` and token ``j``, the self-attention value vectors of ``j`` in layer ``l``
(the ``blocks.{l}.value`` site, row ``j``) are set to zero and layer ``l`` is run again from
its clean input; the score of ``j`` for position ``i`` is ``1 − cos(h_l[i], h̃_l[i])`` between
the clean and the corrupted output state of layer ``l`` at ``i`` (the last layer's output
after the final norm, as transformers' last hidden state). Every layer is corrupted in the
same forward with its input restored to the clean state (``blocks.{l}.resid_pre`` patched),
so layers do not compound, as in Inseq; the forwards of all tokens are one ``vmap`` (chunked
with ``lax.map`` when ``token_batch_size`` is given).

Options as Inseq 0.7.1's: ``similarity_metric="euclidean"`` scores ``‖h_l[i] − h̃_l[i]‖₂``
instead, and ``zeroed_units_indices`` zeroes only some value heads (per layer with a dict).

Works on every model of the internals protocol that offers the ``value`` site (the native
family and every transformers architecture in the site table), decoder-only.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["value_zeroing_scores", "value_site_layers", "normalize_scores", "zeroed_units_key",
           "resolve_units", "value_zeroing_options", "SIMILARITY_METRICS", "VALUE_ZEROING_OPTIONS",
           "VALUE_ZEROING_ENC_DEC_ERROR"]

SIMILARITY_METRICS = ("cosine", "euclidean")
# Keyword options of method="value_zeroing" (decoder_zeroed_units_indices: Inseq's spelling).
VALUE_ZEROING_OPTIONS = frozenset({"similarity_metric", "zeroed_units_indices",
                                   "decoder_zeroed_units_indices"})
_UNITS_HELP = ("zeroed_units_indices must be None (every value head), an int (one head), a "
               "(start, end) tuple (heads start … end − 1), a list of ints, or a dict "
               "{layer: one of those} (layers not in it are not zeroed)")

VALUE_ZEROING_ENC_DEC_ERROR = (
    "method='value_zeroing' supports decoder-only models for now: on an encoder-decoder the "
    "encoder self-attention, decoder self-attention and cross-attention values are three "
    "separate zeroings. Use a decoder-only model, or method='attention' on this one.")


def value_site_layers(fns, *, method: str, alternative: str) -> int:
    """The number of blocks of a model that offers the ``blocks.{l}.value`` site (what value
    zeroing and ALTI patch); a ``ValueError`` naming ``method`` and ``alternative`` otherwise."""
    sites = fns.sites()
    n_layers = sum(1 for s in sites if s.endswith(".resid_post"))
    if f"blocks.{n_layers - 1}.value" not in sites:
        raise ValueError(f"method={method!r} needs the 'blocks.{{l}}.value' site, which this "
                         "model does not offer (its class is not in jaxattr's site table); "
                         f"use method={alternative!r} instead.")
    return n_layers


def _states(out: dict, n_layers: int) -> jax.Array:
    caps = out["captured"]
    layers = [caps[f"blocks.{l}.resid_post"] for l in range(n_layers - 1)]
    return jnp.stack(layers + [caps["final_norm"]], axis=-2).astype(jnp.float32)  # [B,L,n,H]


def _cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    # torch.nn.CosineSimilarity(eps=1e-8): x·y / max(|x|·|y|, eps)
    num = jnp.sum(a * b, axis=-1)
    den = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-8)
    return 1.0 - num / den


def _euclidean_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.linalg.norm(a - b, axis=-1)


def _units_entry(spec, where: str):
    if isinstance(spec, bool) or spec is None:
        raise TypeError(f"{_UNITS_HELP}; got {spec!r}{where}.")
    if isinstance(spec, (int, np.integer)):
        return ("list", (int(spec),))
    if isinstance(spec, tuple):
        if len(spec) != 2 or not all(isinstance(i, (int, np.integer)) for i in spec):
            raise TypeError(f"{_UNITS_HELP}; a tuple is a (start, end) span, got {spec!r}"
                            f"{where} (use a list for individual heads).")
        return ("span", (int(spec[0]), int(spec[1])))
    if isinstance(spec, list):
        if not spec or not all(isinstance(i, (int, np.integer)) for i in spec):
            raise TypeError(f"{_UNITS_HELP}; got the list {spec!r}{where}.")
        return ("list", tuple(int(i) for i in spec))
    raise TypeError(f"{_UNITS_HELP}; got {spec!r}{where}.")


def _is_key(spec) -> bool:
    return (isinstance(spec, tuple) and len(spec) > 0
            and all(isinstance(e, tuple) and len(e) == 3 and e[1] in ("span", "list")
                    for e in spec))


def zeroed_units_key(spec) -> Optional[tuple]:
    """Inseq's ``zeroed_units_indices`` as a hashable key: ``None`` (every head of every
    layer) or ``((layer or "*", "span" | "list", ints), ...)``. A key passes through as is."""
    if spec is None or _is_key(spec):
        return spec
    if isinstance(spec, dict):
        if not spec:
            raise ValueError(f"{_UNITS_HELP}; got an empty dict (nothing would be zeroed).")
        out = []
        for layer, units in spec.items():
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
                raise TypeError(f"{_UNITS_HELP}; dict keys are layer indices, got {layer!r}.")
            out.append((int(layer),) + _units_entry(units, f" for layer {layer}"))
        return tuple(sorted(out))
    return (("*",) + _units_entry(spec, ""),)


def resolve_units(spec, n_layers: int, n_units: int) -> tuple:
    """Per layer, the sorted value heads to zero (``()``: that layer is not zeroed), checked
    as Inseq's ``validate_indices`` does (negative indices count from the end; no
    duplicates; spans ``(start, end)`` with ``start < end ≤ n_units``)."""
    key = zeroed_units_key(spec)
    if key is None:
        return (tuple(range(n_units)),) * n_layers
    per_layer = [()] * n_layers
    for layer, kind, vals in key:
        if layer == "*":
            layers = range(n_layers)
        else:
            if not -n_layers <= layer < n_layers:
                raise ValueError(f"zeroed_units_indices names layer {layer}; the model has "
                                 f"{n_layers} layers (0 … {n_layers - 1}).")
            layers = [layer % n_layers]
        vals = [v + n_units if v < 0 else v for v in vals]
        if kind == "span":
            if not 0 <= vals[0] < vals[1] <= n_units:
                raise ValueError(f"zeroed_units_indices span {tuple(vals)} must satisfy "
                                 f"0 <= start < end <= {n_units} (value heads per layer).")
            units = tuple(range(vals[0], vals[1]))
        else:
            if not all(0 <= v < n_units for v in vals):
                raise ValueError(f"zeroed_units_indices {list(vals)} out of range: the model "
                                 f"has {n_units} value heads per layer (0 … {n_units - 1}).")
            if len(set(vals)) != len(vals):
                raise ValueError(f"zeroed_units_indices {list(vals)} has duplicates.")
            units = tuple(sorted(vals))
        for l in layers:
            per_layer[l] = units
    return tuple(per_layer)


def value_zeroing_options(options: dict) -> dict:
    """``model.attribute``'s value-zeroing keywords checked and made hashable:
    ``similarity_metric`` and ``zeroed_units_indices`` (or Inseq's spelling
    ``decoder_zeroed_units_indices``)."""
    options = dict(options)
    if "decoder_zeroed_units_indices" in options:
        if "zeroed_units_indices" in options:
            raise TypeError("pass zeroed_units_indices or decoder_zeroed_units_indices (Inseq's "
                            "spelling of the same option), not both.")
        options["zeroed_units_indices"] = options.pop("decoder_zeroed_units_indices")
    metric = options.get("similarity_metric", "cosine")
    if metric not in SIMILARITY_METRICS:
        raise ValueError(f"similarity_metric must be one of {SIMILARITY_METRICS}; got "
                         f"{metric!r}.")
    if "zeroed_units_indices" in options:
        options["zeroed_units_indices"] = zeroed_units_key(options["zeroed_units_indices"])
    return options


def _value_heads(fns, target_ids, target_mask) -> tuple:
    """``(value heads, head size)``: the ``value`` site's width over ``head_out``'s head size."""
    shapes = jax.eval_shape(lambda: fns.forward(
        target_ids=target_ids, target_mask=target_mask,
        capture=("blocks.0.value", "blocks.0.head_out"))["captured"])
    d_head = shapes["blocks.0.head_out"].shape[-1]
    return shapes["blocks.0.value"].shape[-1] // d_head, d_head


def value_zeroing_scores(fns, *, target_ids: jax.Array, target_mask: jax.Array,
                         token_batch_size: Optional[int] = None,
                         similarity_metric: str = "cosine",
                         zeroed_units_indices=None) -> jax.Array:
    """Raw value-zeroing distances of a decoder-only model.

    Args:
      fns: the model functions (:class:`jaxattr.internals.ModelFunctions`).
      target_ids, target_mask: ``[B, L]`` ids and padding mask (1 = real token).
      token_batch_size: zeroings run at once (``None``: all ``L`` in one ``vmap``).
      similarity_metric: ``"cosine"`` (score ``1 − cos(h, h̃)``, Inseq's default) or
        ``"euclidean"`` (score ``‖h − h̃‖₂``; Inseq 0.7.1's ``"euclidean"`` takes
        ``1 − cdist(h, h̃)``, a ``[L, L]`` matrix that does not fit its score row — see README).
      zeroed_units_indices: which value heads are zeroed (Inseq's
        ``decoder_zeroed_units_indices``): ``None`` (all), an int, a ``(start, end)`` span, a
        list, or a dict ``{layer: ...}`` (layers not named are not zeroed and score 0). Heads
        are those of the value projection (key-value heads under grouped-query attention,
        as in Inseq's ``value_states``). As a static argument of ``jax.jit`` pass the
        hashable :func:`zeroed_units_key` of a list or dict.

    Returns:
      ``[B, L_token, L_position, layers]``: the distance between the clean and the corrupted
      output state of each layer at each position when the token's values are zeroed in that
      layer. In a causal decoder a token never changes earlier positions (exactly 0 there).
    """
    if similarity_metric not in SIMILARITY_METRICS:
        raise ValueError(f"similarity_metric must be one of {SIMILARITY_METRICS}; got "
                         f"{similarity_metric!r}.")
    distance = _cosine_distance if similarity_metric == "cosine" else _euclidean_distance
    if fns.is_encoder_decoder:
        raise ValueError(VALUE_ZEROING_ENC_DEC_ERROR)
    n_layers = value_site_layers(fns, method="value_zeroing", alternative="attention")
    capture = tuple(f"blocks.{l}.resid_post" for l in range(n_layers - 1)) + ("final_norm",)
    clean_out = fns.forward(target_ids=target_ids, target_mask=target_mask, capture=capture)
    clean = _states(clean_out, n_layers)
    inputs = {l: clean_out["captured"][f"blocks.{l - 1}.resid_post"]
              for l in range(1, n_layers)}
    L = target_ids.shape[1]
    zero_cols = None  # [layers, width] bool: the value columns of the zeroed heads
    if zeroed_units_indices is not None:
        n_units, d_head = _value_heads(fns, target_ids, target_mask)
        units = resolve_units(zeroed_units_indices, n_layers, n_units)
        zero_cols = np.zeros((n_layers, n_units * d_head), bool)
        for l, heads in enumerate(units):
            for h in heads:
                zero_cols[l, h * d_head:(h + 1) * d_head] = True

    def zero(j, l):
        row = (jnp.arange(L) == j)[None, :, None]
        if zero_cols is None:
            return lambda v: v * (~row).astype(v.dtype)
        cols = jnp.asarray(zero_cols[l])[None, None, :]
        return lambda v: v * (~(row & cols)).astype(v.dtype)

    def corrupted(j):
        patch = {f"blocks.{l}.value": zero(j, l) for l in range(n_layers)
                 if zero_cols is None or zero_cols[l].any()}
        patch.update({f"blocks.{l}.resid_pre": (lambda _, x=x: x) for l, x in inputs.items()})
        out = fns.forward(target_ids=target_ids, target_mask=target_mask, capture=capture,
                          patch=patch)
        return distance(clean, _states(out, n_layers))  # [B, L, layers]

    tokens = jnp.arange(L)
    if token_batch_size is None or token_batch_size >= L:
        dist = jax.vmap(corrupted)(tokens)
    else:
        dist = jax.lax.map(corrupted, tokens, batch_size=int(token_batch_size))
    return jnp.moveaxis(dist, 0, 1)  # [B, L_token, L_position, layers]


def normalize_scores(scores: jax.Array, valid: jax.Array, *,
                     threshold: float = 1e-5) -> jax.Array:
    """Inseq's post-processing: scores below ``threshold`` become 0, and each column (one
    position and layer) is divided by its sum over the ``valid`` tokens (left as is when that
    sum is 0).

    Args:
      scores: ``[..., L_token, T, layers]``; valid: broadcastable boolean mask of the tokens
        that count (the others are ignored in the sum).
    """
    s = jnp.where(scores < threshold, 0.0, scores)
    total = jnp.sum(jnp.where(valid, s, 0.0), axis=-3, keepdims=True)
    return s / jnp.where(total == 0, 1.0, total)
