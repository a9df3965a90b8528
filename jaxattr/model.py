"""``AttributionModel``: texts in, attributions out (host side), over the jitted pipeline.

The object holds the model and its tokenizer and offers the public entry points; the work is
done by concern elsewhere: planning an ``attribute`` call into a hashable
:class:`~jaxattr.spec.RunSpec` and padded batches (:mod:`jaxattr.planning`,
:mod:`jaxattr.batching`), generating outputs (:mod:`jaxattr.text_generation`), running the
compiled program (:mod:`jaxattr.pipeline`) and turning its results into host views
(:mod:`jaxattr.host_views`). ``load_model`` lives in :mod:`jaxattr.model_loading`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import jax

from .aggregate import default_aggregator
from .batching import foils
from .lens.steps import STEP_SCORE_NAMES, add_step_scores
from .host_views import completeness, sequence_view, warn_if_not_converged, warn_if_not_finite
from .pipeline import attribute_batch, compiled_attribute
from .planning import prepare_run
from .results import AttributionOutput
from .model_base import ModelBase
from .spec import PreparedRun

__all__ = ["AttributionModel", "completeness"]

# ``attribute``'s options that ``prepare`` takes too (all but show_progress and jit).
_RUN_OPTIONS = ("method", "attributed_fn", "step_scores", "attribute_target", "attr_pos_start",
                "attr_pos_end", "batch_size", "generation_args", "baseline", "granular", "mesh",
                "contrast_targets", "contrast_sources", "contrast_targets_alignments",
                "contrast_force_inputs", "layer", "aggregator", "quadrature", "split_head",
                "prefix_groups")


class AttributionModel(ModelBase):
    """A Hugging Face Flax model with its tokenizer, ready to attribute.

    Attributes:
      hf_model, tokenizer, config: the underlying objects.
      adapter: :class:`~jaxattr.adapters.ModelAdapter` (pure functions over the params).
      name: the checkpoint name or path.
      attribution_method: the method ``attribute`` uses when given none (default
        ``"saliency"``; Inseq's ``load_model(name, method)``).
    """

    # ------------------------------------------------------------------ attribution
    def attribute(
        self,
        input_texts: Union[str, Sequence[str]],
        generated_texts: Union[str, Sequence[str], None] = None,
        *,
        method: Union[str, Callable, None] = None,
        attributed_fn: Union[str, Callable] = "probability",
        step_scores: Sequence[str] = (),
        attribute_target: bool = False,
        attr_pos_start: Optional[int] = None,
        attr_pos_end: Optional[int] = None,
        batch_size: Optional[int] = None,
        generation_args: Optional[dict] = None,
        show_progress: bool = True,
        baseline: Any = "unk",
        granular: bool = True,
        mesh: Any = None,
        contrast_targets: Union[str, Sequence[str], None] = None,
        contrast_sources: Union[str, Sequence[str], None] = None,
        contrast_targets_alignments: Optional[Sequence] = None,
        contrast_force_inputs: bool = False,
        jit: bool = True,
        layer: Union[str, Sequence[str], None] = None,
        aggregator: Optional[str] = None,
        quadrature: Optional[str] = None,
        split_head: bool = True,
        prefix_groups: Union[str, int] = "auto",
        **kwargs,
    ) -> AttributionOutput:
        """Attribute generated tokens to the input tokens.

        Args:
          input_texts: a text or list of texts (decoder-only: the prompts).
          generated_texts: forced outputs, one per input (decoder-only: the full text, which
            must start with the prompt). ``None`` generates them (greedy; ``generation_args``
            such as ``max_new_tokens`` are passed to ``generate``).
          method: a name from :func:`jaxattr.list_methods` (``"saliency"``,
            ``"integrated_gradients"`` …) or a function ``method(score_fn, x, *, has_aux,
            ...)``; ``None``: the model's ``attribution_method`` (default ``"saliency"``).
          attributed_fn: ``"probability"`` (default), ``"logprob"``, ``"logit"`` or a target
            function ``(logits[B,T,V], batch, **kw) -> [B, T]``.
          step_scores: names (or functions) of targets recorded per generated token; also
            the logit lens's scores ``"lens_first_top1_layer"``, ``"lens_kl_mean"``,
            ``"lens_kl"``, ``"lens_prob"`` (:data:`jaxattr.lens.STEP_SCORES`; computed after
            the attribution by :func:`jaxattr.lens.add_step_scores`, which also takes a tuned
            lens).
          attribute_target: encoder-decoder only: also attribute the target prefix
            (decoder-only models always attribute the whole sequence).
          attr_pos_start, attr_pos_end: slice of target positions to attribute (defaults:
            the first generated token to the end).
          batch_size: sequences per jitted call (``None``: all at once). Batches are formed
            from length-sorted inputs and padded to length buckets; results keep input order.
          show_progress: progress bar over batches when there is more than one.
          baseline: integrated-gradients baseline: ``"unk"`` (UNK embedding — PAD when the
            tokenizer has no UNK — at every non-special position), ``"pad"``, ``"zeros"``, or
            an array broadcastable to the embeddings ``[..., H]``. ``gradient_shap`` also
            takes a set to sample from (:mod:`jaxattr.baselines`): a list such as
            ``["unk", "zeros", vec_H]``, an array ``[n_baselines, H]``, or
            ``[n_baselines, L, H]`` for inputs of ``L`` attributed tokens.
          contrast_targets: alternative outputs for contrastive targets (``contrast_prob_diff``
            …), one per input; decoder-only: full texts (a prompt — the same or another — plus
            the alternative continuation); encoder-decoder: alternative outputs.
          contrast_sources: encoder-decoder: alternative sources for the contrastive forward
            (e.g. without context, for ``pcxmi`` / ``kl_divergence``).
          contrast_targets_alignments: per input, pairs ``(target_index, contrast_index)``
            into the full token lists; default: by position (the lengths must match).
          contrast_force_inputs: run the contrastive forward on the contrast tokens (its own
            prefix) instead of reading the contrast token from the original forward (Inseq's
            default). Implied by ``contrast_sources`` and by targets that need
            ``contrast_logits`` (``kl_divergence``, ``pcxmi`` …).
          granular: keep per-hidden-unit attributions. ``False`` reduces the hidden axis inside
            the compiled program with ``aggregator=`` (``"vnorm"`` default, ``"sum"``,
            ``"mean"``, ``"absmax"``), which cuts result memory by the hidden size; views are
            then ``[rows, steps]`` (not normalised; ``aggregate()`` normalises).
          mesh: shard batches over devices: ``"auto"`` (all local devices), a
            ``jax.sharding.Mesh`` with a ``"batch"`` axis, or ``None`` (default device).
            Parameters are replicated; each batch is padded to a multiple of the device count.
          jit: use the compiled pipeline (``False`` runs eagerly, for debugging).
          layer: layer methods (``layer_integrated_gradients``, ``layer_gradient_x_activation``,
            ``layer_saliency``, or any gradient method): attribute the activations at these
            sites instead of the token embeddings: a site name or glob
            (``"blocks.*.mlp_out"``; ``model.sites()`` lists them), a list of them, or a raw
            module path. Several sites add a site axis before the hidden axis. A bad name
            raises a ``SiteError`` listing the valid ones.
          aggregator: with ``granular=False``, the hidden reduction done inside the compiled
            program (``"vnorm"`` default, ``"mean"`` for attention; ``"sum"``, ``"absmax"``);
            an error with ``granular=True`` (aggregate the result instead).
          quadrature: integrated-gradients rule (``"gausslegendre"`` by default,
            ``"riemann_left|right|middle|trapezoid"``); only for path methods.
          split_head: a step-separable attributed function (every built-in one, or one
            marked with :func:`jaxattr.targets.separable`) back-propagates through the
            language-model head once instead of once per generated token (same results,
            fewer FLOPs, much less memory); ``False`` turns that off.
          prefix_groups: causal decoders: ``"auto"`` (default), an int ``K``, or 1 for off:
            attribute contiguous groups of generated tokens on the shortest prefix they can
            see (:mod:`jaxattr.prefix_groups`; same results, a third fewer FLOPs for long
            continuations).
          **kwargs: method options (``n_steps``, ``internal_batch_size``, ``abs`` …) and
            options of the attributed function and step scores (``logprob``, ``top_k`` …),
            each routed to every function that declares it; an unknown keyword raises.

        Returns:
          :class:`~jaxattr.results.AttributionOutput` with one
          :class:`~jaxattr.results.SequenceAttribution` per input.

        Integrated-gradients methods and DeepLIFT add the step score ``deltas`` (completeness
        error per step; DeepLIFT's rescale rule sums to the change, so rounding only) and emit a ``RuntimeWarning`` when some step's error exceeds 10% of its score
        change ``s(x) - s(baseline)`` (raise ``n_steps``).
        """
        options = {k: v for k, v in locals().items() if k in _RUN_OPTIONS}
        lens_names = _lens_step_scores(step_scores)
        if lens_names:
            options["step_scores"] = tuple(s for s in step_scores if s not in lens_names)
        prep = self.prepare(input_texts, generated_texts, **options, **kwargs)
        out = self.run(prep, show_progress=show_progress, jit=jit)
        warn_if_not_finite(out.sequence_attributions, prep.info)
        if prep.info["granular"] or prep.info["aggregator"] == "sum":
            warn_if_not_converged(out.sequence_attributions, prep.info)
        if lens_names:
            add_step_scores(out, self, names=lens_names, batch_size=batch_size)
        return out

    def prepare(
        self,
        input_texts: Union[str, Sequence[str]],
        generated_texts: Union[str, Sequence[str], None] = None,
        *,
        method: Union[str, Callable, None] = None,
        attributed_fn: Union[str, Callable] = "probability",
        step_scores: Sequence[str] = (),
        attribute_target: bool = False,
        attr_pos_start: Optional[int] = None,
        attr_pos_end: Optional[int] = None,
        batch_size: Optional[int] = None,
        generation_args: Optional[dict] = None,
        baseline: Any = "unk",
        granular: bool = True,
        mesh: Any = None,
        contrast_targets: Union[str, Sequence[str], None] = None,
        contrast_sources: Union[str, Sequence[str], None] = None,
        contrast_targets_alignments: Optional[Sequence] = None,
        contrast_force_inputs: bool = False,
        layer: Union[str, Sequence[str], None] = None,
        aggregator: Optional[str] = None,
        quadrature: Optional[str] = None,
        split_head: bool = True,
        prefix_groups: Union[str, int] = "auto",
        **kwargs,
    ) -> PreparedRun:
        """Plan an :meth:`attribute` call without running it: validate every option,
        tokenise (generating outputs when ``generated_texts`` is ``None``), route the keyword
        options, and sort the inputs into length-bucketed batches.

        Takes :meth:`attribute`'s arguments (but ``show_progress`` and ``jit``). Returns a
        :class:`~jaxattr.spec.PreparedRun`: ``.spec`` is a frozen, hashable
        :class:`~jaxattr.spec.RunSpec` (equal arguments give equal specs), ``.batch(i)`` the
        padded :class:`~jaxattr.pipeline.ModelBatch` of batch ``i``, ``.baseline`` a custom
        baseline array (or ``None``) and ``.info`` the run's metadata. Running it::

            prep = model.prepare(prompts, texts, method="integrated_gradients")
            res = jaxattr.attribute_batch(model.adapter, prep.batch(0), prep.baseline,
                                          method_arrays=prep.method_arrays,
                                          method_arrays=prep.method_arrays,
                                     **prep.spec.pipeline_kwargs())
            out = model.run(prep)          # what attribute() returns
        """
        options = {k: v for k, v in locals().items() if k in _RUN_OPTIONS}
        return prepare_run(self, input_texts, generated_texts, kwargs=kwargs, **options)

    def run(self, prep: PreparedRun, *, show_progress: bool = True,
            jit: bool = True) -> AttributionOutput:
        """Run a prepared call: one compiled program per batch, then the host views (input
        order). :meth:`attribute` is ``run(prepare(...))`` plus its warnings."""
        views: list = [None] * len(prep.seqs)
        batches, it = [], range(prep.n_batches)
        if show_progress and prep.n_batches > 1:
            from tqdm.auto import tqdm
            it = tqdm(it, desc="Attributing", unit="batch")
        adapter = self._placed_adapter(prep.mesh)
        for b in it:
            result = attribute_batch(adapter, prep.batch(b), prep.baseline, jit=jit,
                                     **prep.spec.pipeline_kwargs())
            batches.append(result)
            host = jax.device_get(result)
            for row, i in enumerate(prep.chunks[b]):
                views[i] = sequence_view(self.tokenizer, host, row, prep.seqs[i])
                if prep.contrasts is not None and prep.info["contrast_targets"] is not None:
                    views[i] = dataclasses.replace(views[i], foil_tokens=foils(
                        self.tokenizer, prep.seqs[i], prep.contrasts[i], prep.alignments[i]))
        default = default_aggregator(prep.info)   # attention: mean over layers and heads;
        if default != "vnorm":                     # signed runs: the sum over hidden
            views = [dataclasses.replace(v, default_aggregator=default) for v in views]
        return AttributionOutput(views, prep.info, batches)

    def estimate_memory(self, input_texts, generated_texts=None, **attribute_kwargs) -> dict:
        """Peak memory of the compiled program for the largest batch of an ``attribute`` call,
        from XLA's memory analysis, without running it.

        Takes the arguments of :meth:`attribute`. Returns bytes: ``{"argument", "output",
        "temp", "generated_code", "total", "n_batches", "batch_shape"}`` where ``total`` is
        arguments + outputs + temporaries (the peak is bounded by ``batch_size`` and, for IG,
        ``internal_batch_size``).
        """
        attribute_kwargs.pop("show_progress", None)
        attribute_kwargs.pop("jit", None)
        prep = self.prepare(input_texts, generated_texts, **attribute_kwargs)
        b = max(range(prep.n_batches),
                key=lambda c: max(len(prep.seqs[i].target_ids) for i in prep.chunks[c]))
        batch = prep.batch(b)
        compiled = compiled_attribute(self._placed_adapter(prep.mesh), batch, prep.baseline,
                                      method_arrays=prep.method_arrays,
                                      **prep.spec.pipeline_kwargs())
        m = compiled.memory_analysis()
        out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
               "temp": int(m.temp_size_in_bytes),
               "generated_code": int(m.generated_code_size_in_bytes)}
        out["total"] = out["argument"] + out["output"] + out["temp"]
        out["n_batches"] = prep.n_batches
        out["batch_shape"] = tuple(batch.target_ids.shape)
        return out


def _lens_step_scores(step_scores) -> tuple:
    """The logit-lens names among ``step_scores`` (computed after the attribution)."""
    if isinstance(step_scores, str) or not isinstance(step_scores, (list, tuple)):
        return ()  # prepare() reports a malformed step_scores
    return tuple(s for s in step_scores if isinstance(s, str) and s in STEP_SCORE_NAMES)
