"""One evaluation report: several attribution methods on one model and dataset, faithfulness
and plausibility side by side, with bootstrap confidence intervals and a random floor.

    from jaxattr import evaluate
    data = evaluate.zoo_dataset("toy-recall", n=200)
    rep = evaluate.evaluate_methods(model, data, methods=("saliency", "attention"))
    print(rep.to_table())
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

from ..results import AttributionOutput
from .faithfulness import faithfulness
from .plausibility import PLAUSIBILITY_METRICS, plausibility
from .rationale import DIRECTIONS, importance_view

__all__ = ["EvalDataset", "zoo_dataset", "file_dataset", "random_attribution", "bootstrap_ci",
           "EvaluationReport", "evaluate_methods", "RANDOM"]

#: Name of the random-attribution floor in reports.
RANDOM = "random"


@dataclasses.dataclass(frozen=True)
class EvalDataset:
    """Inputs to attribute, with optional ground truth.

    Attributes:
      name: shown in the report.
      inputs: input texts (decoder-only: prompts); generated: forced outputs or ``None``.
      ground_truth: per input, cue rows (see :func:`~jaxattr.evaluate.plausibility`) or ``None``.
      side: the side the cue rows index (``None``: source for encoder-decoders).
      attribute_kwargs: extra :meth:`~jaxattr.model.AttributionModel.attribute` options
        (e.g. ``attr_pos_start``).
    """
    name: str
    inputs: tuple
    generated: Optional[tuple] = None
    ground_truth: Optional[tuple] = None
    side: Optional[str] = None
    attribute_kwargs: dict = dataclasses.field(default_factory=dict)


def zoo_dataset(name: str, *, n: int = 200, seed: int = 123) -> EvalDataset:
    """Held-out examples of a bundled model's task with their ground-truth cue
    (:mod:`jaxattr.zoo.tasks`; seed 123 is not a training seed).

    ``toy-recall``: the answer colour attributed; the cue is the colour in the queried fact
    (target row). ``toy-mt``: the article attributed (step 1 of the target); the cue is the
    source word that sets its gender (the ``bare`` template, which has none, is left out).
    """
    from ..zoo import tasks
    if name == "toy-recall":
        exs = tasks.recall_examples(n, seed=seed)
        return EvalDataset(name=name, inputs=tuple(e["prompt"] for e in exs),
                           generated=tuple(e["generated"] for e in exs),
                           ground_truth=tuple([e["cue_index"]] for e in exs), side="target")
    if name == "toy-mt":
        exs = [e for e in tasks.mt_examples(4 * n, seed=seed) if e["template"] != "bare"][:n]
        return EvalDataset(name=name, inputs=tuple(e["source"] for e in exs),
                           generated=tuple(e["target"] for e in exs),
                           ground_truth=tuple([e["cue_index"]] for e in exs), side="source",
                           attribute_kwargs={"attr_pos_start": 1, "attr_pos_end": 2})
    raise ValueError(f"no bundled dataset {name!r}; use 'toy-recall' or 'toy-mt', or "
                     "file_dataset(path) for your own data.")


def file_dataset(path: str, *, input_field: str = "input",
                 generated_field: Optional[str] = None, cue_field: Optional[str] = None,
                 side: Optional[str] = None, limit: Optional[int] = None) -> EvalDataset:
    """A ``.jsonl`` file, one object per line: ``input_field`` (text), optionally
    ``generated_field`` (forced output) and ``cue_field`` (list of cue rows, or
    ``{step: rows}``)."""
    inputs, gens, cues = [], [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for field in (input_field, generated_field, cue_field):
                if field is not None and field not in row:
                    raise ValueError(f"{path}:{line_no} has no field {field!r}; fields: "
                                     f"{sorted(row)}.")
            inputs.append(row[input_field])
            gens.append(row[generated_field] if generated_field else None)
            gt = row[cue_field] if cue_field else None
            if isinstance(gt, dict):
                gt = {int(k): v for k, v in gt.items()}
            cues.append(gt)
            if limit is not None and len(inputs) == limit:
                break
    if not inputs:
        raise ValueError(f"{path} holds no rows.")
    return EvalDataset(name=str(path), inputs=tuple(inputs),
                       generated=tuple(gens) if generated_field else None,
                       ground_truth=tuple(cues) if cue_field else None, side=side)


def random_attribution(out: AttributionOutput, *, seed: int = 0) -> AttributionOutput:
    """The floor of every metric: ``out``'s aggregated views with each defined cell replaced
    by an independent uniform draw (NaN cells — rows not yet generated — kept)."""
    rng = np.random.default_rng(seed)
    view = importance_view(out)

    def draw(a):
        if a is None:
            return None
        a = np.asarray(a, np.float32)
        return np.where(np.isnan(a), np.nan, rng.random(a.shape)).astype(np.float32)

    seqs = [dataclasses.replace(s, source_attributions=draw(s.source_attributions),
                                target_attributions=draw(s.target_attributions))
            for s in view.sequence_attributions]
    return AttributionOutput(seqs, dict(view.info, method=RANDOM), [])


def bootstrap_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple:
    """``(mean, low, high)``: the mean of ``values`` (NaN dropped) and its percentile
    bootstrap interval."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def _direction(metric):
    return {**DIRECTIONS, **PLAUSIBILITY_METRICS}.get(metric, 1)


@dataclasses.dataclass
class EvaluationReport:
    """Per-method, per-sequence metric means and their summaries.

    Attributes:
      model, dataset: names. methods: method names, the random floor last.
      per_sequence: ``{method: {metric: [N]}}``.
      level: confidence level of the intervals; n_boot, seed: of the bootstrap.
    """
    model: str
    dataset: str
    methods: list
    per_sequence: dict
    level: float = 0.95
    n_boot: int = 2000
    seed: int = 0
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def metrics(self) -> list:
        first = self.per_sequence[self.methods[0]]
        return list(first)

    def ci(self, method: str, metric: str) -> tuple:
        """``(mean, low, high)`` of a method's metric over sequences."""
        return bootstrap_ci(self.per_sequence[method][metric], n_boot=self.n_boot,
                            level=self.level, seed=self.seed)

    def vs_random(self, method: str, metric: str) -> tuple:
        """``(mean, low, high)`` of the paired per-sequence difference method − random, signed
        so that positive means better than random (bootstrap over sequences)."""
        a = np.asarray(self.per_sequence[method][metric], np.float64)
        b = np.asarray(self.per_sequence[RANDOM][metric], np.float64)
        return bootstrap_ci(_direction(metric) * (a - b), n_boot=self.n_boot,
                            level=self.level, seed=self.seed)

    def beats_random(self, method: str, metric: str) -> bool:
        """The interval of :meth:`vs_random` lies above 0."""
        return self.vs_random(method, metric)[1] > 0

    def to_table(self, *, metrics: Optional[Sequence[str]] = None, markdown: bool = False,
                 digits: int = 3) -> str:
        """One row per method: each metric's mean with its confidence interval; a last column
        per faithfulness metric tells whether the method beats the random floor (✓: the
        interval of the paired difference is above 0)."""
        metrics = list(metrics or self.metrics)
        head = ["method"] + [f"{m} {'↑' if _direction(m) > 0 else '↓'}" for m in metrics]
        vs = [m for m in metrics if m in ("comprehensiveness", "sufficiency")]
        head += [f"> random ({m[:4]}.)" for m in vs]
        rows = []
        for method in self.methods:
            cells = [method]
            for m in metrics:
                mean, lo, hi = self.ci(method, m)
                cells.append(f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]")
            for m in vs:
                if method == RANDOM:
                    cells.append("—")
                else:
                    d, lo, hi = self.vs_random(method, m)
                    cells.append(f"{'✓' if lo > 0 else '✗'} {d:+.{digits}f} "
                                 f"[{lo:+.{digits}f}, {hi:+.{digits}f}]")
            rows.append(cells)
        title = (f"{self.model} on {self.dataset}: means over sequences, "
                 f"{int(self.level * 100)}% bootstrap intervals ({self.n_boot} resamples)")
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            return title + "\n\n" + "\n".join(lines) + "\n"
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
        return "\n".join([title, fmt(head)] + [fmt(r) for r in rows]) + "\n"

    def __str__(self) -> str:
        return self.to_table()


def evaluate_methods(model, dataset: EvalDataset, *,
                     methods: Sequence = ("saliency", "input_x_gradient",
                                          "integrated_gradients", "attention"),
                     method_kwargs: Optional[dict] = None,
                     metrics: Sequence[str] = ("comprehensiveness", "sufficiency"),
                     bins: Sequence = (0.1, 0.2, 0.5), erase: str = "mask",
                     batch_size: Optional[int] = 64, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0, random_floor: bool = True) -> EvaluationReport:
    """Attribute ``dataset`` with each method, then measure faithfulness (and plausibility
    where the dataset has ground truth) per sequence; add a random attribution as the floor.

    Args:
      model: an :class:`~jaxattr.model.AttributionModel`.
      dataset: an :class:`EvalDataset` (:func:`zoo_dataset`, :func:`file_dataset`).
      methods: method names given to ``model.attribute``.
      method_kwargs: ``{method: {option: value}}`` (e.g. ``{"integrated_gradients":
        {"n_steps": 64}}``).
      metrics, bins, erase: passed to :func:`~jaxattr.evaluate.faithfulness`.
      batch_size: sequences per attribution batch.
      n_boot, level, seed: bootstrap resamples, interval level, seed (also of the random
        floor).
      random_floor: add the ``"random"`` row (needed by the "> random" columns).

    Returns:
      :class:`EvaluationReport` (``print(report)`` shows the table).
    """
    if not methods:
        raise ValueError("methods is empty; name at least one attribution method.")
    method_kwargs = dict(method_kwargs or {})
    special = list(model.tokenizer.all_special_tokens)
    per_sequence, names = {}, []
    first = None
    for method in methods:
        name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
        out = model.attribute(list(dataset.inputs),
                              None if dataset.generated is None else list(dataset.generated),
                              method=method, show_progress=False, batch_size=batch_size,
                              **dataset.attribute_kwargs, **method_kwargs.get(name, {}))
        first = first or out
        per_sequence[name] = _measure(model, out, dataset, special, metrics, bins, erase)
        names.append(name)
    if random_floor:
        rnd = random_attribution(first, seed=seed)
        per_sequence[RANDOM] = _measure(model, rnd, dataset, special, metrics, bins, erase)
        names.append(RANDOM)
    return EvaluationReport(model=os.path.basename(os.path.normpath(str(model.name))),
                            dataset=dataset.name, methods=names,
                            per_sequence=per_sequence, level=level, n_boot=n_boot, seed=seed,
                            info={"metrics": list(metrics), "bins": list(bins),
                                  "erase": erase, "method_kwargs": method_kwargs})


def _measure(model, out, dataset, special, metrics, bins, erase) -> dict:
    """Per-sequence means of the faithfulness (and plausibility) metrics of one output."""
    res = faithfulness(model, out, metrics=metrics, bins=bins, erase=erase).per_sequence()
    if dataset.ground_truth is not None:
        res.update(plausibility(out, list(dataset.ground_truth), side=dataset.side,
                                exclude_tokens=special).per_sequence())
    return res
