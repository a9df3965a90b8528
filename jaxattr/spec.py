"""What one ``attribute`` run is: a frozen, hashable :class:`RunSpec`, and the
:class:`PreparedRun` that :meth:`AttributionModel.prepare` returns (the spec, the tokenised
sequences and the :class:`~jaxattr.pipeline.ModelBatch` es they pad into).

The spec holds everything the compiled pipeline is specialised on (method, attributed
function, step scores, their options, which sides are attributed, layer sites, fused
reduction, split head, prefix groups) plus the host-side baseline choice; equal arguments give
equal specs, so a spec can key a cache or be compared between runs::

    prep = model.prepare(prompts, texts, method="integrated_gradients", n_steps=32)
    for i in range(prep.n_batches):
        res = jaxattr.attribute_batch(model.adapter, prep.batch(i), prep.baseline,
                                      **prep.spec.pipeline_kwargs())
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import jax
import numpy as np

from .encoding import pad_batch, pad_contrast
from .pipeline import ModelBatch

__all__ = ["RunSpec", "PreparedRun", "hashable", "fn_name"]


def hashable(value):
    """Lists and dicts (recursively) as tuples: ``{"a": [1]}`` -> ``(("a", (1,)),)``."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, hashable(v)) for k, v in value.items()))
    return value


def fn_name(fn) -> str:
    """A method's or target's name (the string itself for names)."""
    return fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The static description of an attribution run (frozen and hashable).

    Attributes:
      method: the method function, or an attention method's name
        (``"attention"``, ``"attention_rollout"``, ``"attention_flow"``, ``"value_zeroing"``).
      method_kwargs, target_kwargs: ``((key, value), ...)`` options, sorted.
      target_fn: the attributed function ``(logits[B,T,V], TargetBatch, **kw) -> [B, T]``.
      step_fns: ``((name, fn, kwargs_tuple), ...)`` step scores from the same forward.
      attribute_source, attribute_target: which embeddings are attributed.
      contrast_forward: the contrastive forward runs (``TargetBatch.contrast_logits``).
      n_dropout: MC-dropout forwards for ``TargetBatch.dropout_logits``.
      layer: site names attributed instead of the embeddings (layer methods) or ``None``.
      reduce_hidden: the in-program hidden reduction (``granular=False``) or ``None``.
      split_head: back-propagate through the LM head once for step-separable targets.
      prefix_groups: ``"auto"`` or a number of prefix groups (causal decoders).
      baseline_ids: ``"unk"`` / ``"pad"``: the baseline is the embedding of that token at
        every non-special position (built per batch); ``None``: zeros or a custom array (or
        no baseline: the method takes none).
    """
    method: Union[Callable, str]
    method_kwargs: tuple
    target_fn: Callable
    target_kwargs: tuple
    step_fns: tuple
    attribute_source: bool
    attribute_target: bool
    contrast_forward: bool = False
    n_dropout: int = 0
    layer: Optional[tuple] = None
    reduce_hidden: Optional[str] = None
    split_head: bool = True
    prefix_groups: Union[str, int] = "auto"
    baseline_ids: Optional[str] = None

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of :func:`jaxattr.pipeline.attribute_batch` for this run."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("baseline_ids")
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedRun:
    """An ``attribute`` call prepared on the host: the :class:`RunSpec`, the tokenised
    sequences, and how they form padded batches (:meth:`batch`). Frozen; compared by
    identity (it holds arrays and the run's ``info`` dict; compare ``.spec`` instead).

    Attributes:
      spec: the hashable run description.
      seqs: one :class:`~jaxattr.encoding.EncodedSequence` per input, in input order.
      contrasts, alignments: the contrast sequences and their position alignments (or
        ``None``).
      chunks: input indices of each batch (inputs sorted by length, then cut).
      rows: rows of every batch (the last one is padded up to it).
      baseline: a custom baseline array (``baseline=array``) or ``None``.
      info: the run's metadata (``AttributionOutput.info``).
      mesh: the ``jax.sharding.Mesh`` batches are sharded over, or ``None``.
      pad_id, max_positions: padding token and position limit of the model.
      baseline_token, special_ids: the token whose embedding forms an id-based baseline,
        and the special tokens it leaves as they are.
      method_arrays: array keywords of the method computed once per model, not per batch
        (DIG's cached neighbour lists ``{"knn": {side: [V, K]}}``), passed to
        :func:`~jaxattr.pipeline.attribute_batch` as ``method_arrays``; ``None``: none
        (DIG then builds its neighbour lists inside the program).
    """
    spec: RunSpec
    seqs: tuple
    contrasts: Optional[tuple]
    alignments: Optional[tuple]
    chunks: tuple
    rows: int
    baseline: Any
    info: dict
    mesh: Any
    pad_id: int
    max_positions: Optional[int]
    baseline_token: int
    special_ids: tuple
    method_arrays: Any = None

    @property
    def n_batches(self) -> int:
        return len(self.chunks)

    def batch(self, i: int):
        """The padded :class:`~jaxattr.pipeline.ModelBatch` of chunk ``i`` (device arrays,
        sharded over :attr:`mesh` when there is one)."""
        chunk = self.chunks[i]
        seqs = [self.seqs[j] for j in chunk]
        arrays = pad_batch(seqs, pad_id=self.pad_id, batch_size=self.rows,
                           max_positions=self.max_positions)
        if self.contrasts is not None:
            arrays.update(pad_contrast(
                seqs, [self.contrasts[j] for j in chunk], [self.alignments[j] for j in chunk],
                n_rows=arrays["target_ids"].shape[0], n_steps=arrays["step_mask"].shape[1],
                pad_id=self.pad_id, max_positions=self.max_positions))
        if self.spec.baseline_ids is not None:
            arrays.update(baseline_ids(arrays, self.baseline_token, self.special_ids))
        batch = ModelBatch(**{k: jax.numpy.asarray(v) for k, v in arrays.items()})
        if self.mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec
            batch = jax.device_put(batch, NamedSharding(self.mesh, PartitionSpec("batch")))
        return batch

    def batches(self):
        """Every batch in order (built one at a time)."""
        return (self.batch(i) for i in range(self.n_batches))


def baseline_ids(arrays: dict, token: int, special_ids) -> dict:
    """``{"baseline_target_ids", "baseline_source_ids"}``: ``token`` at every position that
    holds neither a special token nor padding (those keep their ids)."""
    special = np.array(sorted(set(special_ids)), np.int32)
    out = {}
    for side in ("target", "source"):
        ids = arrays.get(f"{side}_ids")
        if ids is not None:
            keep = np.isin(ids, special) | (arrays[f"{side}_mask"] == 0)
            out[f"baseline_{side}_ids"] = np.where(keep, ids, token).astype(np.int32)
    return out
