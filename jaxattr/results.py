"""Attribution results: a device-side pytree for a batch and host-side per-sequence views.

Orientation follows Inseq: rows are attributed tokens, columns are generated (attributed)
tokens, the last axis is the hidden size (absent after aggregation).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np
from flax import struct

__all__ = ["BatchAttribution", "SequenceAttribution", "AttributionOutput"]


@struct.dataclass
class BatchAttribution:
    """Padded attributions of one batch; a pytree usable under ``jit``/``vmap``/``grad``.

    Shapes (``B`` batch, ``S`` source length, ``L`` target length, ``T`` attributed steps,
    ``H`` hidden size):

    - ``source_attributions``: ``[B, S, T, H]`` or ``None`` (decoder-only, or not attributed)
    - ``target_attributions``: ``[B, L, T, H]`` or ``None``; 0 where ``target_row_mask`` is 0
    - ``step_scores``: ``{name: [B, T]}``
    - ``source_mask``: ``[B, S]`` or ``None``; ``target_mask``: ``[B, L]``; ``step_mask``: ``[B, T]``
    - ``step_positions``: ``[B, T]`` index in the target of the token attributed at each step;
      target row ``r`` is a valid input of step ``t`` iff ``r < step_positions[b, t]``.
    """
    source_attributions: Optional[jax.Array]
    target_attributions: Optional[jax.Array]
    step_scores: dict
    source_mask: Optional[jax.Array]
    target_mask: jax.Array
    step_mask: jax.Array
    step_positions: jax.Array

    @property
    def target_row_mask(self):
        """``[B, L, T]`` bool: the target row is an input of the step's prediction."""
        rows = np.arange(self.target_mask.shape[1])
        xp = np if isinstance(self.step_positions, np.ndarray) else jax.numpy
        return ((xp.asarray(rows)[None, :, None] < self.step_positions[:, None, :])
                & (self.target_mask[:, :, None] > 0) & (self.step_mask[:, None, :] > 0))


@dataclasses.dataclass
class SequenceAttribution:
    """Host-side (numpy) attribution of one sequence, with Inseq's field names.

    Attributes:
      source: source tokens (encoder-decoder) or ``None`` (decoder-only).
      target: target tokens; decoder-only: prompt + generated tokens; encoder-decoder: the
        decoder start token + generated tokens.
      source_attributions: ``[len(source), n_steps, (H)]`` or ``None``.
      target_attributions: ``[len(target), n_steps, (H)]`` or ``None``; NaN where the row is
        not an input of that step (the token is not generated yet).
      step_scores: ``{name: [n_steps]}``.
      attr_pos_start, attr_pos_end: the target slice whose tokens are the columns.
    """
    source: Optional[list]
    target: list
    source_attributions: Optional[np.ndarray]
    target_attributions: Optional[np.ndarray]
    step_scores: dict
    attr_pos_start: int
    attr_pos_end: int
    source_ids: Optional[list] = None
    target_ids: Optional[list] = None

    @property
    def generated(self) -> list:
        """The attributed tokens (one per column)."""
        return self.target[self.attr_pos_start:self.attr_pos_end]

    def aggregate(self, aggregator: Any = None, **kwargs) -> "SequenceAttribution":
        """Reduce the hidden axis and normalise columns (see :mod:`jaxattr.aggregate`)."""
        from . import aggregate as _agg
        return _agg.aggregate_sequence(self, aggregator, **kwargs)


@dataclasses.dataclass
class AttributionOutput:
    """What ``model.attribute`` returns: per-sequence views plus the metadata of the run.

    Attributes:
      sequence_attributions: one :class:`SequenceAttribution` per input.
      info: model name, method, attributed function, arguments, library version.
      batches: the device-side :class:`BatchAttribution` pytrees, in batch order (padding
        rows of a short last batch included; ``info['batch_rows']`` maps rows to inputs).
    """
    sequence_attributions: list
    info: dict
    batches: list = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sequence_attributions)

    def __getitem__(self, i):
        return self.sequence_attributions[i]

    def aggregate(self, aggregator: Any = None, **kwargs) -> "AttributionOutput":
        """Aggregate every sequence (default: L2 over hidden, each column sums to 1)."""
        return AttributionOutput(
            [s.aggregate(aggregator, **kwargs) for s in self.sequence_attributions],
            dict(self.info), [])
