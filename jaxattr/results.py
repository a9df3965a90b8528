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

from . import views

__all__ = ["BatchAttribution", "SequenceAttribution", "AttributionOutput", "MERGE_MATCH_FIELDS"]


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


class _ViewMethods:
    """Methods shared by :class:`SequenceAttribution` (one view) and
    :class:`AttributionOutput` (every sequence, and the device batches where they apply): the
    composable aggregation steps, each returning a new object of the same class (see
    :mod:`jaxattr.aggregate`), and rendering. Neither is imported here: each method dispatches
    by name through :mod:`jaxattr.views`, which ``aggregate``, ``io`` and ``render`` fill when
    the package is imported (results never import the layers above them)."""

    def reduce_hidden(self, how: Any = "vnorm"):
        """Reduce the hidden axis: ``[R, T, H] -> [R, T]`` (:func:`jaxattr.aggregate.reduce_hidden`)."""
        return views.dispatch("reduce_hidden", self, how)

    def normalize(self):
        """Each column's absolute values sum to 1 (:func:`jaxattr.aggregate.normalize`)."""
        return views.dispatch("normalize", self)

    def rescale(self):
        """Each column's largest magnitude becomes 1 (:func:`jaxattr.aggregate.rescale`)."""
        return views.dispatch("rescale", self)

    def merge_words(self, **kwargs):
        """Merge subwords into words (:func:`jaxattr.aggregate.merge_words`)."""
        return views.dispatch("merge_words", self, **kwargs)

    def merge_spans(self, **kwargs):
        """Merge contiguous token spans (:func:`jaxattr.aggregate.merge_spans`)."""
        return views.dispatch("merge_spans", self, **kwargs)

    def slice_tokens(self, **kwargs):
        """Keep a range of positions (:func:`jaxattr.aggregate.slice_tokens`)."""
        return views.dispatch("slice_tokens", self, **kwargs)

    def difference(self, other):
        """``self - other`` for a minimal pair, sequence by sequence
        (:func:`jaxattr.aggregate.difference`)."""
        return views.dispatch("difference", self, other)

    __sub__ = difference

    def to_text(self, **kwargs) -> str:
        """Heatmap table(s) as text (:func:`jaxattr.render.text.to_text`)."""
        return views.dispatch("to_text", self, **kwargs)

    def to_html(self, **kwargs) -> str:
        """Self-contained HTML heatmap / report (:func:`jaxattr.render.html.to_html`)."""
        return views.dispatch("to_html", self, **kwargs)

    def _repr_html_(self) -> str:
        return views.dispatch("to_html", self, full_page=False)

    def show(self, **kwargs) -> None:
        """Display in a notebook (HTML) or print to the terminal (text)."""
        views.dispatch("show", self, **kwargs)


@dataclasses.dataclass
class SequenceAttribution(_ViewMethods):
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
      default_aggregator: the reduction :meth:`aggregate` (and every renderer) applies when
        none is given: ``None`` means ``"vnorm"`` (L2 norm over hidden); ``method="attention"``
        views say ``"mean"`` (over layers and heads), so ``out.aggregate()[i]`` and
        ``out[i].aggregate()`` agree.
      foil_tokens: contrastive attributions (``contrast_targets``): per column, the
        alternative token the generated one was contrasted with (``None`` where a step had no
        aligned alternative); ``None`` otherwise. Renderers label such columns ``foil → token``
        (:attr:`generated_labels`).
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
    default_aggregator: Optional[str] = None
    foil_tokens: Optional[list] = None

    @property
    def generated(self) -> list:
        """The attributed tokens (one per column)."""
        return self.target[self.attr_pos_start:self.attr_pos_end]

    @property
    def generated_labels(self) -> list:
        """Column labels: the generated token, or ``"foil → token"`` where a contrastive
        attribution compared it with a different alternative token (as Inseq shows it)."""
        gen = self.generated
        foils = self.foil_tokens
        if foils is None or len(foils) != len(gen):
            return list(gen)
        return [t if f is None or f == t else f"{f} → {t}" for f, t in zip(foils, gen)]

    def aggregate(self, aggregator: Any = None, **kwargs) -> "SequenceAttribution":
        """Reduce the hidden axis and normalise columns (see :mod:`jaxattr.aggregate`)."""
        return views.dispatch("aggregate_sequence", self, aggregator, **kwargs)


    # -- export ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain dict of tokens (lists), numpy arrays and positions (a copy)."""
        return {
            "source": None if self.source is None else list(self.source),
            "target": list(self.target),
            "source_attributions": _copy(self.source_attributions),
            "target_attributions": _copy(self.target_attributions),
            "step_scores": {k: np.array(v) for k, v in self.step_scores.items()},
            "attr_pos_start": int(self.attr_pos_start), "attr_pos_end": int(self.attr_pos_end),
            "source_ids": None if self.source_ids is None else list(self.source_ids),
            "target_ids": None if self.target_ids is None else list(self.target_ids),
            "default_aggregator": self.default_aggregator,
            "foil_tokens": None if self.foil_tokens is None else list(self.foil_tokens),
        }

    def get_scores_dict(self, *, aggregate: bool = True) -> dict:
        """Scores keyed by ``(position, token)`` pairs (positions keep repeated tokens apart).

        Returns ``{"source_attributions": {gen: {src: v}}, "target_attributions":
        {gen: {tgt: v}}, "step_scores": {gen: {name: v}}}`` where ``gen`` runs over the
        generated tokens; target rows not yet generated at a step are left out. 3-D
        attributions are aggregated first (default reduction) unless ``aggregate=False``.
        """
        return views.dispatch("scores_dict", self, aggregate=aggregate)

    def to_dataframe(self, *, aggregate: bool = True):
        """Tidy ``pandas.DataFrame`` (needs pandas): one row per existing cell and step score
        (see :func:`jaxattr.io.to_dataframe`)."""
        return views.dispatch("to_dataframe", self, aggregate=aggregate)

    # -- rendering (to_text, to_html, show: see _ViewMethods) -------------------------------
    def to_figure(self, **kwargs):
        """Matplotlib heatmap figure (needs matplotlib; :func:`jaxattr.render.figure.to_figure`)."""
        return views.dispatch("to_figure", self, **kwargs)


@dataclasses.dataclass
class AttributionOutput(_ViewMethods):
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

    def __iter__(self):
        return iter(self.sequence_attributions)

    def aggregate(self, aggregator: Any = None, **kwargs) -> "AttributionOutput":
        """Aggregate every sequence, then each column sums to 1 in ``|value|``: the same as
        aggregating ``out[i]`` on its own. Default reduction: each view's
        ``default_aggregator``, set by ``attribute`` from the run
        (:func:`jaxattr.aggregate.default_aggregator`): the signed sum over hidden for
        integrated gradients, gradient SHAP, occlusion and contrastive targets, the mean over
        layers and heads for ``method="attention"``, the L2 norm otherwise."""
        info = dict(self.info)
        if aggregator is None and info.get("method") == "attention":
            aggregator = "mean"
        defaults = {getattr(v, "default_aggregator", None) for v in self.sequence_attributions}
        name = aggregator if isinstance(aggregator, str) else (
            (defaults.pop() if len(defaults) == 1 else None) if aggregator is None
            else getattr(aggregator, "__name__", "custom"))
        info["aggregations"] = list(info.get("aggregations", [])) + [
            f"aggregate({name or 'vnorm'!r}, normalize={kwargs.get('normalize', True)})"]
        return AttributionOutput(
            [s.aggregate(aggregator, **kwargs) for s in self.sequence_attributions], info, [])


    # -- merging, export, save ----------------------------------------------------------------
    @classmethod
    def merge(cls, outputs) -> "AttributionOutput":
        """Concatenate the sequences of several outputs (e.g. of several ``attribute`` calls).

        The runs must agree on :data:`MERGE_MATCH_FIELDS` of their ``info`` (model, method,
        attributed function, step scores …); other differing info values are kept per run under
        ``info["merged_infos"]``. Device batches are dropped.
        """
        outputs = list(outputs)
        if not outputs:
            raise ValueError("merge needs at least one AttributionOutput.")
        first = outputs[0].info
        for out in outputs[1:]:
            for key in MERGE_MATCH_FIELDS:
                if _jsonish(first.get(key)) != _jsonish(out.info.get(key)):
                    raise ValueError(f"Cannot merge outputs whose info[{key!r}] differ: "
                                     f"{first.get(key)!r} vs {out.info.get(key)!r}.")
        info = {k: v for k, v in first.items() if k != "batch_rows"
                and all(_jsonish(o.info.get(k)) == _jsonish(v) for o in outputs[1:])}
        if len(outputs) > 1 and any(_jsonish(o.info) != _jsonish(first) for o in outputs[1:]):
            info["merged_infos"] = [dict(o.info) for o in outputs]
        return cls([s for o in outputs for s in o.sequence_attributions], info, [])

    def __add__(self, other: "AttributionOutput") -> "AttributionOutput":
        return AttributionOutput.merge([self, other])

    def get_scores_dicts(self, *, aggregate: bool = True) -> list:
        """One :meth:`SequenceAttribution.get_scores_dict` per sequence."""
        return [s.get_scores_dict(aggregate=aggregate) for s in self.sequence_attributions]

    def to_dataframe(self, *, aggregate: bool = True):
        """Tidy ``pandas.DataFrame`` of every sequence (needs pandas; a ``sequence`` column
        tells them apart; see :func:`jaxattr.io.to_dataframe`)."""
        return views.dispatch("to_dataframe", self, aggregate=aggregate)

    def save(self, path, **kwargs) -> None:
        """Write a readable JSON file (:func:`jaxattr.io.save`; ``.gz`` paths are gzipped)."""
        views.dispatch("save", self, path, **kwargs)


#: ``info`` fields that must agree for :meth:`AttributionOutput.merge`.
MERGE_MATCH_FIELDS = ("model", "model_class", "method", "attributed_fn", "attributed_fn_kwargs",
                      "method_kwargs", "step_scores", "attribute_target", "baseline",
                      "aggregations")


def _jsonish(value):
    """Compare info values the way JSON stores them (tuples and lists alike)."""
    if isinstance(value, (list, tuple)):
        return [_jsonish(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonish(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonish(value.tolist())
    return value


def _copy(a):
    return None if a is None else np.array(a)
