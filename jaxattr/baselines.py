"""Sets of baselines for ``model.attribute(method="gradient_shap", baseline=...)``.

Gradient SHAP (as Captum's and Inseq's) samples each Monte-Carlo sample's baseline from a set
(a distribution). Through a model a set is given as:

- a list of members, each ``"unk"`` / ``"pad"`` (the embedding of that token at every
  position, special tokens kept, as the single-baseline option), ``"zeros"``, a number or a
  ``[hidden]`` vector (the same at every position) — e.g. ``["unk", "zeros"]``;
- an array ``[n_baselines, hidden]``: ``n`` vectors, each the same at every position of every
  input (a shared set);
- an array ``[n_baselines, L, hidden]`` (or list members ``[L, hidden]``): one vector per
  position, for inputs whose attributed sequence has exactly ``L`` tokens (decoder-only: prompt
  + continuation; encoder-decoder: the source, without ``attribute_target``).

Each example draws its own member per sample from its own key (batch-invariant). Host-side
parsing lives here; the jitted pipeline turns a :class:`BaselineSet` into embeddings
``[n_baselines, B, L, hidden]`` with :meth:`BaselineSet.embeddings`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .methods._common import check_finite
from .methods.needs import needs_of

__all__ = ["BaselineSet", "is_baseline_set", "parse_baseline_set", "accepts_baseline_sets",
           "describe", "ID_KINDS"]

ID_KINDS = ("unk", "pad")
_KINDS = ID_KINDS + ("zeros",)


@struct.dataclass
class BaselineSet:
    """``n`` baselines of the attributed embeddings.

    Attributes:
      vectors: ``[n, H]`` (each member the same at every position) or ``[n, L, H]`` (one
        vector per position); the rows of members taken from ids are zeros.
      from_ids: static, one bool per member: the member is the embedding of the batch's
        baseline ids (the ``"unk"`` or ``"pad"`` kind, special tokens kept).
    """
    vectors: jax.Array
    from_ids: tuple = struct.field(pytree_node=False, default=())

    @property
    def per_position(self) -> bool:
        return self.vectors.ndim == 3

    def embeddings(self, id_embeddings: Optional[jax.Array], shape: tuple) -> jax.Array:
        """``[n, *shape]`` (``shape = [B, L_pad, H]``): member ``m`` is ``id_embeddings``
        (``[B, L_pad, H]``) where ``from_ids[m]``, else its vector(s) broadcast (per-position
        vectors zero-padded from ``L`` to ``L_pad``)."""
        v = self.vectors.astype(jnp.result_type(jnp.float32, self.vectors.dtype))
        if self.per_position:
            L, L_pad = v.shape[1], shape[1]
            if L > L_pad:
                raise ValueError(f"a per-position baseline set of {L} positions for inputs "
                                 f"padded to {L_pad}.")
            v = jnp.pad(v, ((0, 0), (0, L_pad - L), (0, 0)))[:, None]
        out = []
        for m, use_ids in enumerate(self.from_ids):
            out.append(id_embeddings if use_ids else jnp.broadcast_to(v[m], shape))
        return jnp.stack(out).astype(v.dtype)


def accepts_baseline_sets(method: Any) -> bool:
    """Whether a method declares that it samples from a set of baselines
    (:class:`~jaxattr.methods.needs.MethodNeeds` ``baseline_sets``)."""
    return callable(method) and needs_of(method).baseline_sets


def is_baseline_set(baseline: Any) -> bool:
    """A list/tuple holding a name or an array (not a flat list of numbers, which is one
    ``[hidden]`` vector; an empty one is an empty set), or an array of rank >= 2."""
    if isinstance(baseline, (list, tuple)):
        return not baseline or any(isinstance(b, str) or np.ndim(b) >= 1 for b in baseline)
    return not isinstance(baseline, (str, dict)) and baseline is not None and np.ndim(
        baseline) >= 2


def _numeric(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be numeric; got {type(value).__name__} ({e}).") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numeric; got an array of dtype {arr.dtype}.")
    check_finite(arr, what)
    return arr.astype(np.float32)


def parse_baseline_set(baseline: Any, *, hidden: int, lengths: Sequence[int],
                       both_sides: bool = False) -> tuple:
    """Validate a set of baselines (see the module docstring) on the host.

    Args:
      baseline: the user's ``baseline=`` (a set, :func:`is_baseline_set`).
      hidden: the embedding size ``H``.
      lengths: each input's attributed length (checked against a per-position set).
      both_sides: source and target are both attributed (no per-position sets then).

    Returns:
      ``(BaselineSet, ids_kind)``: ``ids_kind`` is ``"unk"``/``"pad"`` when a member uses
      token ids, else ``None``.

    Raises:
      ValueError naming the problem and the accepted forms.
    """
    forms = ("give a list of 'unk' / 'pad' / 'zeros' / [hidden] vectors, an array "
             "[n_baselines, hidden], or [n_baselines, L, hidden] for inputs of L tokens")
    if isinstance(baseline, (list, tuple)):
        members = list(baseline)
    else:
        arr = _numeric(baseline, "baseline")
        if arr.ndim > 3:
            raise ValueError(f"a set of baselines has rank 2 or 3, got shape {arr.shape}; "
                             f"{forms}.")
        members = list(arr)
    if not members:
        raise ValueError(f"the set of baselines is empty; {forms}.")
    kinds, vecs = [], []
    for i, m in enumerate(members):
        if isinstance(m, str):
            if m not in _KINDS:
                raise ValueError(f"baseline set member {i} is {m!r}; names are {_KINDS}.")
            kinds.append(m)
            vecs.append(None)
            continue
        v = _numeric(m, f"baseline set member {i}")
        if v.ndim > 2:
            raise ValueError(f"baseline set member {i} has shape {v.shape}; {forms}.")
        if v.ndim and v.shape[-1] != hidden:
            raise ValueError(f"baseline set member {i} has {v.shape[-1]} features but the "
                             f"embeddings have hidden={hidden}; {forms}.")
        kinds.append("array")
        vecs.append(v if v.ndim else np.full((hidden,), float(v), np.float32))
    id_kinds = sorted({k for k in kinds if k in ID_KINDS})
    if len(id_kinds) > 1:
        raise ValueError(f"a set of baselines may hold one token kind, 'unk' or 'pad', not "
                         f"both ({id_kinds}); give the other one's embeddings as an array.")
    positions = sorted({v.shape[0] for v in vecs if v is not None and v.ndim == 2})
    if len(positions) > 1:
        raise ValueError(f"per-position baseline set members have different lengths "
                         f"{positions}; give [L, hidden] for the inputs' L tokens.")
    if positions:
        L = positions[0]
        if both_sides:
            raise ValueError("a per-position baseline set needs one attributed sequence; with "
                             "attribute_target=True give [n_baselines, hidden] vectors.")
        wrong = [(i, n) for i, n in enumerate(lengths) if n != L]
        if wrong:
            raise ValueError(f"the per-position baseline set has L={L} positions but input "
                             f"{wrong[0][0]} has {wrong[0][1]} attributed tokens; every input "
                             f"must have L tokens (or give [n_baselines, hidden] vectors).")
        shape = (L, hidden)
    else:
        shape = (hidden,)
    rows = [np.zeros(shape, np.float32) if v is None else np.broadcast_to(v, shape)
            for v in vecs]
    bset = BaselineSet(vectors=jnp.asarray(np.stack(rows)),
                       from_ids=tuple(k in ID_KINDS for k in kinds))
    return bset, (id_kinds[0] if id_kinds else None)


def describe(baseline: Any) -> str:
    """Short text for the result's ``info["baseline"]``."""
    if isinstance(baseline, (list, tuple)):
        names = [b if isinstance(b, str) else f"array{tuple(np.shape(b))}" for b in baseline]
        return f"set of {len(names)}: " + ", ".join(names)
    return f"set of {np.shape(baseline)[0]}: array{tuple(np.shape(baseline))}"


def plan_baseline_set(adapter: Any, baseline: Any, method: Any, seqs: Sequence, *,
                      attribute_source: bool, attribute_target: bool, layer: Any) -> tuple:
    """``model.attribute``'s handling of a set of baselines: ``(BaselineSet, ids_kind)``.

    ``seqs`` are the encoded inputs (``target_ids``, ``source_ids``). Raises
    :class:`~jaxattr.encoding.InputError` when the method takes one baseline only, with
    ``layer=``, or when the set is malformed (see :func:`parse_baseline_set`).
    """
    from .encoding import InputError
    name = getattr(method, "__name__", str(method))
    if not accepts_baseline_sets(method):
        raise InputError(f"baseline is a set of baselines, which only gradient_shap samples "
                         f"from; {name} takes one baseline: 'unk', 'pad', 'zeros' or one "
                         "[hidden] vector.")
    if layer is not None:
        raise InputError("a set of baselines applies to the token embeddings; it cannot be "
                         "combined with layer=.")
    if attribute_source and not attribute_target:
        lengths = [len(s.source_ids) for s in seqs]
    else:
        lengths = [len(s.target_ids) for s in seqs]
    hidden = int(adapter.embedding_matrix("decoder").shape[-1])
    try:
        return parse_baseline_set(baseline, hidden=hidden, lengths=lengths,
                                  both_sides=attribute_source and attribute_target)
    except ValueError as e:
        raise InputError(str(e)) from None
