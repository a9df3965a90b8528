"""``AttributionModel``: texts in, attributions out (host side), over the jitted pipeline."""
from __future__ import annotations

import dataclasses
import inspect
import os
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np

from . import _compat
from .adapters import make_adapter
from .encoding import (EncodedSequence, InputError, _as_list, _check_length, _check_nonempty,
                       _resolve_span, _strip_trailing_eos, align_contrast, encode_decoder_only,
                       encode_encoder_decoder, pad_batch, pad_contrast)
from .aggregate import default_aggregator
from .catalog import LAYER_METHODS, list_methods
from .generation import new_tokens
from .methods import get_method, integrated_gradients
from .methods._common import check_finite, count
from .pipeline import (ATTENTION_METHODS, ROLLOUT_ENC_DEC_ERROR, ModelBatch, attribute_batch,
                       resolve_layer, split_kwargs)
from .prefix_groups import check_prefix_groups
from .results import AttributionOutput, SequenceAttribution
from .targets import get_target, target_needs

__all__ = ["AttributionModel", "load_model", "completeness"]

BASELINES = ("unk", "pad", "zeros")

# Keywords that belong in ``generation_args`` (checked when no method or target takes them).
GENERATION_ARGS = frozenset({
    "max_new_tokens", "max_length", "min_length", "min_new_tokens", "do_sample", "num_beams",
    "temperature", "top_k", "top_p", "no_repeat_ngram_size", "repetition_penalty",
    "eos_token_id", "pad_token_id", "forced_bos_token_id", "forced_eos_token_id"})



def _hashable(value):
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _fn_name(fn):
    return fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))


class AttributionModel:
    """A Hugging Face Flax model with its tokenizer, ready to attribute.

    Attributes:
      hf_model, tokenizer, config: the underlying objects.
      adapter: :class:`~jaxattr.adapters.ModelAdapter` (pure functions over the params).
      name: the checkpoint name or path.
      attribution_method: the method ``attribute`` uses when given none (default
        ``"saliency"``; Inseq's ``load_model(name, method)``).
    """

    def __init__(self, hf_model, tokenizer, *, name: Optional[str] = None,
                 embedding_paths: Optional[dict] = None,
                 attribution_method: Union[str, Callable, None] = None):
        _compat.apply(getattr(hf_model.config, "model_type", None))
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.config = hf_model.config
        self.name = name or getattr(self.config, "_name_or_path", None) or type(hf_model).__name__
        from .models import NativeModel
        if isinstance(hf_model, NativeModel):   # our own forward: no adapter needed
            self.adapter = hf_model.functions
        else:
            self.adapter = make_adapter(hf_model, embedding_paths=embedding_paths)
        self.attribution_method = attribution_method or "saliency"

    # ------------------------------------------------------------------ properties
    @property
    def is_encoder_decoder(self) -> bool:
        return self.adapter.is_encoder_decoder

    @property
    def params(self):
        return self.adapter.params

    @property
    def max_positions(self) -> Optional[int]:
        """Longest sequence the model's position embeddings allow (``None``: no limit; the
        native RoPE family has no position table, ``max_position_embeddings`` is where its
        RoPE scaling starts, not a limit)."""
        from .models import NativeDecoder
        if isinstance(self.adapter, NativeDecoder):
            return None
        for key in ("n_positions", "max_position_embeddings"):
            value = getattr(self.config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def pad_token_id(self) -> int:
        for v in (self.tokenizer.pad_token_id, getattr(self.config, "pad_token_id", None),
                  self.tokenizer.eos_token_id):
            if v is not None:
                return int(v)
        return 0

    @property
    def decoder_start_token_id(self) -> int:
        v = getattr(self.config, "decoder_start_token_id", None)
        return self.pad_token_id if v is None else int(v)

    def with_params(self, params) -> "AttributionModel":
        """A copy that uses ``params`` (same compiled programs: params are pytree leaves)."""
        new = object.__new__(AttributionModel)
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("_replicated", None)  # replicas of the old params are not these
        new.adapter = self.adapter.replace(params=params)
        return new

    # ------------------------------------------------------------------ internals
    def sites(self) -> tuple:
        """Every site name of this model (:mod:`jaxattr.internals.sites`), in order."""
        return self.adapter.sites()

    def run_with_cache(self, input_texts, generated_texts=None, *,
                       sites: Union[str, Sequence[str]] = ("blocks.*.resid_post",),
                       batch_size: Optional[int] = None):
        """Run the model on texts and capture activations at ``sites`` in the same forward.

        Args:
          input_texts: a text or list (decoder-only: the prompts; encoder-decoder: sources).
          generated_texts: forced outputs as for :meth:`attribute` (decoder-only: full texts
            starting with the prompt). ``None``: decoder-only runs on the inputs alone, an
            encoder-decoder decoder sees only its start token.
          sites: site names or globs (``model.sites()`` lists them); raw module paths too.
          batch_size: rows per compiled call (``None``: all at once); every batch is padded to
            the longest text, so the results stack.

        Returns:
          ``(logits, cache)``: ``logits`` ``[B, L, V]`` (``logits[:, i]`` predicts token
          ``i + 1``) and an :class:`~jaxattr.internals.ActivationCache` with ``cache[name]``
          ``[B, L, ...]`` right-padded, ``cache.mask`` and ``cache.tokens`` ``[B, L]``.

        Raises:
          SiteError: a name or glob matches no site (the message lists the valid ones).
        """
        return self.run_with_patches(input_texts, generated_texts, sites=sites,
                                     batch_size=batch_size)

    def run_with_patches(self, input_texts, generated_texts=None, *,
                         patch: Optional[dict] = None, delta: Optional[dict] = None,
                         sites: Union[str, Sequence[str]] = (),
                         batch_size: Optional[int] = None):
        """:meth:`run_with_cache` with site values patched or shifted in the same forward.

        Args:
          patch: ``{site or glob: value}``; an array ``[B, L, ...]`` (as a cache holds it,
            e.g. another run's ``cache[name]``) replaces the site's value, a function
            ``value -> value`` transforms it (``lambda o: o + mask * (v - o)``).
          delta: ``{site: array}`` added to the site's value (after ``patch``).
          sites, batch_size, input_texts, generated_texts: as for :meth:`run_with_cache`;
            with ``batch_size``, arrays are split by rows and functions see one batch.

        Returns:
          ``(logits, cache)`` as :meth:`run_with_cache` (the cache holds the patched values).
        """
        from .internals import resolve_sites
        from .internals.cache import run_sites
        names = resolve_sites(sites, self.sites(), allow_raw=True) if sites else ()
        arrays = self._site_arrays(_as_list(input_texts, "input_texts"), generated_texts)
        n = arrays["target_ids"].shape[0]
        bs = batch_size or n
        logits, caches = [], []
        for a in range(0, n, bs):
            rows = {k: (None if v is None else v[a:a + bs]) for k, v in arrays.items()}
            cut = {k: (v if callable(v) else v[a:a + bs]) for k, v in (patch or {}).items()}
            lg, cache = run_sites(self.adapter, capture=names, patch=cut,
                                  delta={k: v[a:a + bs] for k, v in (delta or {}).items()},
                                  **rows)
            logits.append(lg)
            caches.append(cache)
        if len(caches) == 1:
            return logits[0], caches[0]
        return (jax.numpy.concatenate(logits),
                jax.tree_util.tree_map(lambda *xs: jax.numpy.concatenate(xs), *caches))

    def _site_arrays(self, texts: list, generated_texts) -> dict:
        """Right-padded ``{target_ids, target_mask, source_ids, source_mask}`` (numpy)."""
        tok, pad = self.tokenizer, self.pad_token_id
        for i, t in enumerate(texts):
            _check_nonempty(t, "input_texts", i)
        if generated_texts is not None:
            seqs = self.encode(texts, generated_texts)
            targets = [list(s.target_ids) for s in seqs]
            sources = [list(s.source_ids) for s in seqs] if self.is_encoder_decoder else None
        elif self.is_encoder_decoder:
            sources = [list(tok(t)["input_ids"]) for t in texts]
            targets = [[self.decoder_start_token_id] for _ in texts]
        else:
            sources = None
            targets = [_strip_trailing_eos(list(tok(t)["input_ids"]), tok) for t in texts]
        for i, t in enumerate(targets):
            _check_length(len(t), self.max_positions, "input", i)
        ids, mask = _pad_rows(targets, pad, left=False)
        out = {"target_ids": jax.numpy.asarray(ids), "target_mask": jax.numpy.asarray(mask),
               "source_ids": None, "source_mask": None}
        if sources is not None:
            sids, smask = _pad_rows(sources, pad, left=False)
            out.update(source_ids=jax.numpy.asarray(sids), source_mask=jax.numpy.asarray(smask))
        return out

    # ------------------------------------------------------------------ encoding
    def encode(self, input_texts, generated_texts, *, attr_pos_start=None,
               attr_pos_end=None) -> list[EncodedSequence]:
        """Tokenise inputs and forced outputs into :class:`EncodedSequence` (validated)."""
        if self.is_encoder_decoder:
            return encode_encoder_decoder(
                self.tokenizer, input_texts, generated_texts,
                decoder_start_token_id=self.decoder_start_token_id,
                max_positions=self.max_positions, attr_pos_start=attr_pos_start,
                attr_pos_end=attr_pos_end)
        return encode_decoder_only(self.tokenizer, input_texts, generated_texts,
                                   max_positions=self.max_positions,
                                   attr_pos_start=attr_pos_start, attr_pos_end=attr_pos_end)

    # ------------------------------------------------------------------ generation
    def generate(self, input_texts, *, batch_size: Optional[int] = None,
                 **generation_args) -> list[str]:
        """Generate continuations (greedy by default), batched. Returns output texts:
        decoder-only, the full text (prompt + continuation); encoder-decoder, the output."""
        gens = self._generate_ids(_as_list(input_texts, "input_texts"), batch_size=batch_size,
                                  **generation_args)
        tok = self.tokenizer
        return [tok.decode(out_ids, skip_special_tokens=True) for _, out_ids in gens]

    def _generate_ids(self, texts, *, batch_size=None, **generation_args):
        """``[(input_ids, output_ids)]`` per input, without padding. Decoder-only outputs are
        prompt + continuation; encoder-decoder outputs start with the decoder start token and
        end with EOS when it was generated."""
        tok = self.tokenizer
        for i, t in enumerate(texts):
            _check_nonempty(t, "input_texts", i)
        gen = dict(max_new_tokens=20, do_sample=False)
        gen.update(generation_args)
        if batch_size is not None:
            batch_size = count(batch_size, "batch_size")
        bs = batch_size or len(texts)
        out = []
        for start in range(0, len(texts), bs):
            chunk = texts[start:start + bs]
            if self.is_encoder_decoder:
                enc = [list(tok(t)["input_ids"]) for t in chunk]
            else:
                enc = [_strip_trailing_eos(list(tok(t)["input_ids"]), tok) for t in chunk]
            for r, e in enumerate(enc):
                _check_length(len(e), self.max_positions, "input", start + r)
                if not self.is_encoder_decoder:
                    _check_generation_room(len(e), gen, self.max_positions, start + r)
            new = new_tokens(self.hf_model, self.adapter, enc, gen,
                             is_encoder_decoder=self.is_encoder_decoder,
                             pad_token_id=self.pad_token_id,
                             decoder_start_token_id=self.decoder_start_token_id,
                             max_positions=self.max_positions)
            eos = tok.eos_token_id if tok.eos_token_id is not None else self.config.eos_token_id
            for r, e in enumerate(enc):
                cont = []
                for token in new[r].tolist():
                    if eos is not None and token == eos:
                        if self.is_encoder_decoder:
                            cont.append(token)
                        break
                    cont.append(token)
                if self.is_encoder_decoder:
                    out.append((e, [self.decoder_start_token_id] + cont))
                else:
                    out.append((e, e + cont))
        return out

    def _encode_generated(self, texts, *, batch_size, generation_args, attr_pos_start,
                          attr_pos_end):
        seqs = []
        for i, (prompt, ids) in enumerate(self._generate_ids(
                texts, batch_size=batch_size, **(generation_args or {}))):
            if self.is_encoder_decoder:
                n_prefix, target, source = 1, ids, prompt
            else:
                n_prefix, target, source = len(prompt), ids, None
            if len(target) <= n_prefix:
                raise InputError(f"generation produced no token for input {i}; raise "
                                 "max_new_tokens in generation_args or pass generated_texts.")
            s, e = _resolve_span(len(target), n_prefix, attr_pos_start, attr_pos_end, i)
            seqs.append(EncodedSequence(target_ids=target, attr_start=s, attr_end=e,
                                        source_ids=source))
        return seqs

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
          step_scores: names (or functions) of targets recorded per generated token.
          attribute_target: encoder-decoder only: also attribute the target prefix
            (decoder-only models always attribute the whole sequence).
          attr_pos_start, attr_pos_end: slice of target positions to attribute (defaults:
            the first generated token to the end).
          batch_size: sequences per jitted call (``None``: all at once). Batches are formed
            from length-sorted inputs and padded to length buckets; results keep input order.
          show_progress: progress bar over batches when there is more than one.
          baseline: integrated-gradients baseline: ``"unk"`` (UNK embedding — PAD when the
            tokenizer has no UNK — at every non-special position), ``"pad"``, ``"zeros"``, or
            an array broadcastable to the embeddings ``[..., H]``.
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
          **kwargs: method options (``n_steps``, ``internal_batch_size``, ``abs``,
            ``quadrature`` for the IG rule …) and options of the attributed function and step
            scores (``logprob``, ``top_k`` …), each routed to every function that declares it;
            an unknown keyword raises. ``split_head=False`` turns off the split-head backward
            (by default a step-separable attributed function — every built-in one, or one
            marked with :func:`jaxattr.targets.separable` — back-propagates through the
            language-model head once instead of once per generated token; same results,
            fewer FLOPs and much less memory). ``prefix_groups`` (causal decoders: ``"auto"``
            by default, an int ``K``, or 1 for off) attributes contiguous groups of generated
            tokens on the shortest prefix they can see (:mod:`jaxattr.prefix_groups`): same
            results, a third fewer FLOPs for long continuations.

        Returns:
          :class:`~jaxattr.results.AttributionOutput` with one
          :class:`~jaxattr.results.SequenceAttribution` per input.

        Integrated-gradients methods add the step score ``deltas`` (completeness error per
        step) and emit a ``RuntimeWarning`` when some step's error exceeds 10% of its score
        change ``s(x) - s(baseline)`` (raise ``n_steps``).
        """
        plan = self._plan(
            input_texts, generated_texts, method=method, attributed_fn=attributed_fn,
            step_scores=step_scores, attribute_target=attribute_target,
            attr_pos_start=attr_pos_start, attr_pos_end=attr_pos_end, batch_size=batch_size,
            generation_args=generation_args, baseline=baseline,
            contrast_targets=contrast_targets, contrast_sources=contrast_sources,
            contrast_targets_alignments=contrast_targets_alignments,
            contrast_force_inputs=contrast_force_inputs, granular=granular, mesh=mesh,
            kwargs=kwargs)
        views: list = [None] * len(plan.seqs)
        batches = []
        it = plan.chunks
        if show_progress and len(plan.chunks) > 1:
            from tqdm.auto import tqdm
            it = tqdm(plan.chunks, desc="Attributing", unit="batch")
        for chunk in it:
            batch = self._batch(plan, chunk)
            result = attribute_batch(self._placed_adapter(plan.mesh), batch, plan.baseline_arrays,
                                     jit=jit, method_arrays=plan.method_arrays, **plan.call)
            batches.append(result)
            host = jax.device_get(result)
            for row, i in enumerate(chunk):
                views[i] = self._sequence_view(host, row, plan.seqs[i])
                if plan.contrasts is not None and plan.info["contrast_targets"] is not None:
                    views[i] = dataclasses.replace(views[i], foil_tokens=self._foils(
                        plan.seqs[i], plan.contrasts[i], plan.alignments[i]))
        default = default_aggregator(plan.info)   # attention: mean over layers and heads;
        if default != "vnorm":                     # signed runs: the sum over hidden
            views = [dataclasses.replace(v, default_aggregator=default) for v in views]
        _warn_if_not_finite(views)
        if plan.info["granular"] or plan.info["aggregator"] == "sum":
            _warn_if_not_converged(views, plan.info)
        return AttributionOutput(views, plan.info, batches)

    def estimate_memory(self, input_texts, generated_texts=None, **attribute_kwargs) -> dict:
        """Peak memory of the compiled program for the largest batch of an ``attribute`` call,
        from XLA's memory analysis, without running it.

        Takes the arguments of :meth:`attribute`. Returns bytes: ``{"argument", "output",
        "temp", "generated_code", "total", "n_batches", "batch_shape"}`` where ``total`` is
        arguments + outputs + temporaries (the peak is bounded by ``batch_size`` and, for IG,
        ``internal_batch_size``).
        """
        plan = self._plan_from_kwargs(input_texts, generated_texts, **attribute_kwargs)
        chunk = max(plan.chunks, key=lambda c: max(len(plan.seqs[i].target_ids) for i in c))
        batch = self._batch(plan, chunk)
        from .pipeline import compiled_attribute
        compiled = compiled_attribute(self._placed_adapter(plan.mesh), batch,
                                      plan.baseline_arrays, method_arrays=plan.method_arrays,
                                      **plan.call)
        m = compiled.memory_analysis()
        out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
               "temp": int(m.temp_size_in_bytes),
               "generated_code": int(m.generated_code_size_in_bytes)}
        out["total"] = out["argument"] + out["output"] + out["temp"]
        out["n_batches"] = len(plan.chunks)
        out["batch_shape"] = tuple(batch.target_ids.shape)
        return out

    def _plan_from_kwargs(self, input_texts, generated_texts=None,
                          **attribute_kwargs) -> "_Plan":
        """:meth:`_plan` for the arguments of :meth:`attribute`, its defaults filling in the
        options not given (``show_progress`` and ``jit`` are ignored)."""
        attribute_kwargs.pop("show_progress", None)
        attribute_kwargs.pop("jit", None)
        defaults = inspect.signature(self.attribute).parameters
        names = [n for n in inspect.signature(self._plan).parameters
                 if n not in ("input_texts", "generated_texts", "kwargs")]
        opts = {k: attribute_kwargs.pop(k, defaults[k].default) for k in names}
        return self._plan(input_texts, generated_texts, kwargs=attribute_kwargs, **opts)

    def _plan(self, input_texts, generated_texts, *, method, attributed_fn, step_scores,
              attribute_target, attr_pos_start, attr_pos_end, batch_size, generation_args,
              baseline, contrast_targets, contrast_sources, contrast_targets_alignments,
              contrast_force_inputs, granular, mesh, kwargs) -> "_Plan":
        """Host-side preparation of an ``attribute`` call: validation, tokenisation, routing of
        keyword arguments, batches, and the static arguments of the compiled pipeline."""
        kwargs = dict(kwargs)
        method = self.attribution_method if method is None else method
        texts = _as_list(input_texts, "input_texts")
        if batch_size is not None:
            batch_size = count(batch_size, "batch_size")
        if isinstance(step_scores, str):  # one name, not its characters
            step_scores = (step_scores,)
        layer = kwargs.pop("layer", None)
        split_head = bool(kwargs.pop("split_head", True))
        prefix_groups = kwargs.pop("prefix_groups", "auto")
        check_prefix_groups(prefix_groups)
        aggregator = kwargs.pop("aggregator", None) or (
            "mean" if method in ATTENTION_METHODS else "vnorm")
        if layer is not None:
            layer = resolve_layer(self.adapter, layer)
        if method in ATTENTION_METHODS:
            if layer is not None:
                raise ValueError(f"`layer` does not apply to method={method!r}.")
            if method == "attention_rollout" and self.is_encoder_decoder:
                raise ValueError(ROLLOUT_ENC_DEC_ERROR)
            method_fn = method
        elif isinstance(method, str) and method not in list_methods():
            raise ValueError(
                f"Unknown attribution method {method!r}. Available: {list_methods()} "
                "(jaxattr.list_methods()); or pass a function "
                "`method(score_fn, x, *, has_aux, ...)`.")
        else:
            method_fn = get_method(LAYER_METHODS.get(method, method))
        target_fn = get_target(attributed_fn)
        if "quadrature" in kwargs:
            kwargs["method"] = kwargs.pop("quadrature")
        step_targets = [(_fn_name(s), get_target(s)) for s in step_scores]
        owners = {"attributed_fn": target_fn}
        if method_fn not in ATTENTION_METHODS:
            owners["method"] = method_fn
        owners.update({f"step:{name}": fn for name, fn in step_targets})
        try:
            routed = split_kwargs(kwargs, owners)
        except TypeError:
            gen = sorted(set(kwargs) & GENERATION_ARGS)
            if gen:
                raise TypeError(
                    f"{gen[0]!r} is a generation argument, used only when jaxattr generates the "
                    f"outputs: pass generation_args={{{gen[0]!r}: ...}} (and no generated_texts)."
                ) from None
            raise
        step_fns = tuple((name, fn, _hashable(routed[f"step:{name}"]))
                         for name, fn in step_targets)
        fn_kwargs = [(target_fn, routed["attributed_fn"])] + [
            (fn, routed[f"step:{name}"]) for name, fn in step_targets]
        needs = set().union(*(target_needs(fn) for fn, _ in fn_kwargs))
        has_contrast = contrast_targets is not None or contrast_sources is not None
        if needs & {"contrast", "contrast_logits"} and not has_contrast:
            raise InputError(
                f"{_fn_name(attributed_fn)!r} (or a step score) is contrastive: pass "
                "contrast_targets=[...] (alternative outputs) or, for encoder-decoder models, "
                "contrast_sources=[...].")
        contrast_forward = bool(has_contrast and (contrast_force_inputs
                                                  or contrast_sources is not None
                                                  or "contrast_logits" in needs))
        n_dropout = max([_kwarg(fn, kw, "n_mcd_steps") for fn, kw in fn_kwargs
                         if "dropout_logits" in target_needs(fn)] or [0])
        if not granular:
            from .aggregate import REDUCTIONS
            if aggregator not in REDUCTIONS:
                raise ValueError(f"Unknown aggregator {aggregator!r} for granular=False; "
                                 f"choose one of {sorted(REDUCTIONS)}.")
        if generated_texts is None:
            seqs = self._encode_generated(texts, batch_size=batch_size,
                                          generation_args=generation_args,
                                          attr_pos_start=attr_pos_start,
                                          attr_pos_end=attr_pos_end)
        else:
            seqs = self.encode(texts, generated_texts, attr_pos_start=attr_pos_start,
                               attr_pos_end=attr_pos_end)
        self._check_exact_length(seqs)
        contrasts = alignments = None
        if has_contrast:
            contrasts, alignments = self._encode_contrast(
                seqs, contrast_targets, contrast_sources, contrast_targets_alignments)
        attribute_source = self.is_encoder_decoder
        attribute_target = attribute_target or not self.is_encoder_decoder

        method_params = ({} if method_fn in ATTENTION_METHODS
                         else inspect.signature(method_fn).parameters)
        uses_baseline = "baseline" in method_params or "baseline_ids" in method_params
        baseline_ids_kind, baseline_arrays = None, None
        if uses_baseline:
            if isinstance(baseline, str):
                if baseline not in BASELINES:
                    raise ValueError(f"Unknown baseline {baseline!r}; use one of {BASELINES} "
                                     "or an array broadcastable to the embeddings.")
                baseline_ids_kind = None if baseline == "zeros" else baseline
            elif baseline is not None:
                baseline_arrays = _custom_baseline(baseline)

        if "baseline_ids" in method_params and baseline_ids_kind is None:
            raise ValueError(f"method={_fn_name(method)!r} needs baseline tokens: "
                             "baseline='unk' (default) or 'pad', not zeros or an array (its "
                             "path ends at a word of the vocabulary).")
        method_arrays = self._method_arrays(method_params, routed.get("method", {}),
                                            attribute_source, attribute_target)
        if "special_ids" in method_params and "special_ids" not in routed.get("method", {}):
            routed.setdefault("method", {})["special_ids"] = tuple(
                sorted(set(self.tokenizer.all_special_ids)))
        mesh = _resolve_mesh(mesh)
        order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i].target_ids),
                                                         len(seqs[i].source_ids or ())))
        bs = batch_size or len(seqs)
        chunks = [order[i:i + bs] for i in range(0, len(order), bs)]
        rows = bs if len(chunks) > 1 else len(chunks[0])
        if mesh is not None:  # every device gets the same number of rows
            n_dev = mesh.devices.size
            rows = -(-rows // n_dev) * n_dev
        call = dict(method=method_fn, method_kwargs=_hashable(routed.get("method", {})),
                    target_fn=target_fn, target_kwargs=_hashable(routed["attributed_fn"]),
                    step_fns=step_fns, attribute_source=attribute_source,
                    attribute_target=attribute_target, contrast_forward=contrast_forward,
                    n_dropout=n_dropout, layer=layer,
                    reduce_hidden=None if granular else aggregator, split_head=split_head,
                    prefix_groups=prefix_groups)
        info = {
            "model": self.name,
            "model_class": type(self.hf_model).__name__,
            "method": _fn_name(method),
            "attributed_fn": _fn_name(attributed_fn),
            "step_scores": [name for name, _, _ in step_fns],
            "step_scores_kwargs": {name: dict(kw) for name, _, kw in step_fns if kw},
            "contrast_targets": _as_list(contrast_targets, "contrast_targets"),
            "contrast_sources": _as_list(contrast_sources, "contrast_sources"),
            "contrast_force_inputs": contrast_forward,
            "method_kwargs": dict(routed.get("method", {})),
            "layer": ", ".join(layer) if layer else None,
            "attributed_fn_kwargs": dict(routed["attributed_fn"]),
            "attribute_target": bool(attribute_target),
            "baseline": baseline if isinstance(baseline, str) or baseline is None else "array",
            "granular": bool(granular),
            "aggregator": None if granular else aggregator,
            "batch_size": batch_size,
            "generation_args": dict(generation_args or {}),
            "batch_rows": [list(c) for c in chunks],
            "jaxattr_version": __import__("jaxattr").__version__,
        }
        return _Plan(seqs=seqs, contrasts=contrasts, alignments=alignments, chunks=chunks,
                     rows=rows, baseline_ids_kind=baseline_ids_kind,
                     baseline_arrays=baseline_arrays, call=call, info=info, mesh=mesh,
                     method_arrays=method_arrays)

    def _method_arrays(self, method_params, method_kwargs: dict, attribute_source: bool,
                       attribute_target: bool) -> Optional[dict]:
        """Array arguments a method declares that come from the model, not the batch: DIG's
        neighbour lists ``knn`` per attributed side, computed on the device once per
        embedding table and cached (:mod:`jaxattr.knn_cache`)."""
        if "knn" not in method_params or method_kwargs.get("knn") is not None:
            return None
        from .knn_cache import cached_knn_graph
        from .pipeline import vocabulary_table
        n_neighbors = method_kwargs.get("n_neighbors", method_params["n_neighbors"].default)
        sides = [s for s, on in (("source", attribute_source), ("target", attribute_target))
                 if on]
        return {"knn": {side: cached_knn_graph(vocabulary_table(self.adapter, side),
                                               n_neighbors) for side in sides}}

    def _check_exact_length(self, seqs) -> None:
        """Refuse sequences longer than the backend computes exactly (Flax Mistral's window)."""
        limit = getattr(self.adapter, "max_length", None)
        longest = max((len(s.target_ids) for s in seqs), default=0)
        if limit is not None and longest > limit:
            raise InputError(
                f"a sequence of {longest} tokens is longer than sliding_window={limit} of this "
                f"{type(self.hf_model).__name__}, whose Flax window mask keeps one key more "
                "than PyTorch's; shorten the inputs or load the checkpoint directory with "
                "jaxattr.load_model(path) (native decoder family).")

    def _batch(self, plan: "_Plan", chunk) -> ModelBatch:
        """Padded device arrays of one chunk of the plan (sharded over ``plan.mesh``)."""
        seqs = [plan.seqs[i] for i in chunk]
        arrays = pad_batch(seqs, pad_id=self.pad_token_id, batch_size=plan.rows,
                           max_positions=self.max_positions)
        if plan.contrasts is not None:
            arrays.update(pad_contrast(
                seqs, [plan.contrasts[i] for i in chunk], [plan.alignments[i] for i in chunk],
                n_rows=arrays["target_ids"].shape[0], n_steps=arrays["step_mask"].shape[1],
                pad_id=self.pad_token_id, max_positions=self.max_positions))
        if plan.baseline_ids_kind is not None:
            arrays.update(self._baseline_ids(arrays, plan.baseline_ids_kind))
        batch = ModelBatch(**{k: jax.numpy.asarray(v) for k, v in arrays.items()})
        if plan.mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec
            batch = jax.device_put(batch, NamedSharding(plan.mesh, PartitionSpec("batch")))
        return batch

    def _placed_adapter(self, mesh):
        """The adapter, with parameters replicated over ``mesh`` when one is given."""
        if mesh is None:
            return self.adapter
        cache = self.__dict__.setdefault("_replicated", {})
        hit = cache.get(mesh)
        if hit is None or hit[0] is not self.adapter:  # replicas only of these very params
            from jax.sharding import NamedSharding, PartitionSpec
            hit = cache[mesh] = (self.adapter, jax.device_put(
                self.adapter, NamedSharding(mesh, PartitionSpec())))
        return hit[1]

    def _encode_contrast(self, seqs, contrast_targets, contrast_sources, alignments):
        """Tokenise contrast targets/sources and align them to ``seqs``' positions."""
        tok, n = self.tokenizer, len(seqs)
        cts = _as_list(contrast_targets, "contrast_targets")
        css = _as_list(contrast_sources, "contrast_sources")
        for name, lst in (("contrast_targets", cts), ("contrast_sources", css),
                          ("contrast_targets_alignments", alignments)):
            if lst is not None and len(lst) != n:
                raise InputError(f"got {n} inputs but {len(lst)} {name}; give one per input.")
        if css is not None and not self.is_encoder_decoder:
            raise InputError("contrast_sources is for encoder-decoder models; for a decoder-only "
                             "model pass contrast_targets whose prompt is the other context.")
        if alignments is not None and len(alignments) and isinstance(alignments[0], (tuple, list)) \
                and len(alignments[0]) == 2 and isinstance(alignments[0][0], int) and n == 1:
            alignments = [alignments]  # a single sequence's pairs
        contrasts, aligns = [], []
        for i, seq in enumerate(seqs):
            if cts is None:
                tgt = list(seq.target_ids)
            elif self.is_encoder_decoder:
                _check_nonempty(cts[i], "contrast_targets", i)
                tgt = [self.decoder_start_token_id] + list(tok(text_target=cts[i])["input_ids"])
            else:
                _check_nonempty(cts[i], "contrast_targets", i)
                tgt = _strip_trailing_eos(list(tok(cts[i])["input_ids"]), tok)
            src = None
            if css is not None:
                _check_nonempty(css[i], "contrast_sources", i)
                src = list(tok(css[i])["input_ids"])
                _check_length(len(src), self.max_positions, "contrast source", i)
            _check_length(len(tgt), self.max_positions, "contrast target", i)
            contrasts.append(EncodedSequence(target_ids=tgt, attr_start=1, attr_end=len(tgt),
                                             source_ids=src))
            aligns.append(align_contrast(seq.target_ids, tgt,
                                         None if alignments is None else alignments[i], index=i))
        return contrasts, aligns

    def _foils(self, seq: EncodedSequence, contrast: EncodedSequence, alignment: dict) -> list:
        """Per attributed step, the contrast token it is compared with (``None``: no aligned
        contrast token), as the pipeline aligns them (:func:`~jaxattr.encoding.pad_contrast`)."""
        tokens = self.tokenizer.convert_ids_to_tokens(list(contrast.target_ids))
        out = []
        for p in range(seq.attr_start, seq.attr_end):
            q = alignment.get(p)
            out.append(tokens[q] if q is not None and q >= 1 else None)
        return out

    def _baseline_ids(self, arrays: dict, kind: str) -> dict:
        tok = self.tokenizer
        base = tok.unk_token_id if kind == "unk" else None
        if base is None:
            base = self.pad_token_id
        special = np.array(sorted(set(tok.all_special_ids)), np.int32)
        out = {}
        for side in ("target", "source"):
            ids = arrays.get(f"{side}_ids")
            if ids is not None:
                keep = np.isin(ids, special) | (arrays[f"{side}_mask"] == 0)
                out[f"baseline_{side}_ids"] = np.where(keep, ids, base).astype(np.int32)
        return out

    def _sequence_view(self, host, row: int, seq: EncodedSequence) -> SequenceAttribution:
        tok = self.tokenizer
        n_tgt, n = len(seq.target_ids), seq.n_steps
        tgt_attr = src_attr = None
        if host.target_attributions is not None:
            tgt_attr = np.array(host.target_attributions[row, :n_tgt, :n], dtype=np.float32)
            valid = np.arange(n_tgt)[:, None] < np.asarray(host.step_positions[row, :n])[None]
            tgt_attr[~valid] = np.nan
        if host.source_attributions is not None:
            src_attr = np.array(host.source_attributions[row, :len(seq.source_ids), :n],
                                dtype=np.float32)
        return SequenceAttribution(
            source=(tok.convert_ids_to_tokens(seq.source_ids)
                    if seq.source_ids is not None else None),
            target=tok.convert_ids_to_tokens(seq.target_ids),
            source_attributions=src_attr, target_attributions=tgt_attr,
            step_scores={k: np.asarray(v[row, :n], np.float32)
                         for k, v in host.step_scores.items()},
            attr_pos_start=seq.attr_start, attr_pos_end=seq.attr_end,
            source_ids=list(seq.source_ids) if seq.source_ids is not None else None,
            target_ids=list(seq.target_ids))


def completeness(view) -> tuple:
    """``(delta[T], change[T])`` of an integrated-gradients view: its completeness error
    (step score ``deltas``) and ``s(x) - s(baseline)`` per step, read as ``Σ attributions -
    delta``. Needs attributions that still sum: granular, or aggregated with ``"sum"`` and
    ``normalize=False``."""
    delta = np.asarray(view.step_scores["deltas"], np.float64)
    total = np.zeros_like(delta)
    for attr in (view.source_attributions, view.target_attributions):
        if attr is not None:
            attr = np.asarray(attr)
            total += np.nansum(attr.reshape(attr.shape[:2] + (-1,)), axis=(0, 2))
    return delta, total - delta


def _pad_rows(rows, pad_id, *, left):
    """``(ids[N, L], mask[N, L])`` int32 arrays of ``rows`` padded to the longest one."""
    n = max(len(r) for r in rows)
    ids = np.full((len(rows), n), pad_id, np.int32)
    mask = np.zeros((len(rows), n), np.int32)
    for i, r in enumerate(rows):
        if left:
            ids[i, n - len(r):], mask[i, n - len(r):] = r, 1
        else:
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def _check_generation_room(n_prompt: int, gen: dict, max_positions, i: int) -> None:
    """A decoder-only prompt plus ``max_new_tokens`` must fit the model's positions."""
    new = gen.get("max_new_tokens")
    if max_positions is None or not isinstance(new, int) or n_prompt + new <= max_positions:
        return
    raise InputError(
        f"input {i}: a prompt of {n_prompt} tokens (padded in its batch) plus max_new_tokens="
        f"{new} exceeds the model's {max_positions} positions. Lower max_new_tokens in "
        f"generation_args to at most {max(max_positions - n_prompt, 0)} or shorten the prompt.")


def _custom_baseline(baseline):
    """A custom baseline array, checked: numeric and finite (one NaN would make every
    attribution NaN)."""
    try:
        arr = np.asarray(baseline)
    except (TypeError, ValueError) as e:
        raise InputError(f"baseline must be 'unk', 'pad', 'zeros' or a numeric array "
                         f"broadcastable to the embeddings [..., hidden]; got "
                         f"{type(baseline).__name__} ({e}).") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"baseline must be 'unk', 'pad', 'zeros' or a numeric array "
                         f"broadcastable to the embeddings [..., hidden]; got an array of "
                         f"dtype {arr.dtype}.")
    try:
        check_finite(arr, "baseline")
    except ValueError as e:
        raise InputError(str(e)) from None
    return jax.numpy.asarray(arr)


def _warn_if_not_finite(views) -> None:
    """Warn when a result holds NaN or inf where a number belongs (target rows not generated
    yet are NaN by design and not counted): the model overflowed (float16?), the attributed
    function is infinite (a log of 0 probability) or an input is not finite."""
    bad = []
    for i, view in enumerate(views):
        parts = {"step_scores." + k: np.asarray(v) for k, v in view.step_scores.items()}
        if view.source_attributions is not None:
            parts["source_attributions"] = np.asarray(view.source_attributions)
        if view.target_attributions is not None:
            a = np.asarray(view.target_attributions)
            valid = (np.arange(a.shape[0])[:, None]
                     < np.arange(view.attr_pos_start, view.attr_pos_end)[None])
            parts["target_attributions"] = a[valid]
        bad += [(i, name) for name, a in parts.items() if not np.isfinite(a).all()]
    if bad:
        i, name = bad[0]
        warnings.warn(
            f"{len(bad)} result(s) hold NaN or inf (first: sequence {i}, {name}). Check the "
            "inputs and baseline for non-finite values, the attributed function for log(0) "
            "(attributed_fn='logprob' of a zero probability) and the model dtype for overflow "
            "(float16); these numbers are not attributions.", RuntimeWarning, stacklevel=3)


def _warn_if_not_converged(views, info: dict, *, rtol: float = 0.1) -> None:
    """Warn when integrated gradients misses completeness by more than ``rtol`` of the score
    change on some step: ``|delta| > rtol * |s(x) - s(baseline)|`` (ignoring steps whose change
    is below 1e-3 of the largest one). ``Σ attributions = change + delta``, so the change is
    read from the host views; needs attributions that still sum (granular, or summed)."""
    rows = []
    for i, view in enumerate(views):
        if "deltas" not in view.step_scores:
            return
        delta, change = completeness(view)
        rows += [(i, j, float(d), float(c)) for j, (d, c) in enumerate(zip(delta, change))]
    if not rows:
        return
    floor = 1e-3 * max(abs(c) for _, _, _, c in rows)
    bad = [r for r in rows if abs(r[2]) > rtol * abs(r[3]) and abs(r[3]) > floor]
    if not bad:
        return
    i, j, d, c = max(bad, key=lambda r: abs(r[2]) / max(abs(r[3]), 1e-30))
    default = inspect.signature(integrated_gradients).parameters["n_steps"].default
    n_steps = info["method_kwargs"].get("n_steps", default)
    warnings.warn(
        f"Integrated gradients did not converge on {len(bad)} of {len(rows)} attributed steps: "
        f"the attributions miss s(x) - s(baseline) by more than {rtol:.0%} (worst: sequence "
        f"{i}, step {j}, delta {d:.3g} against a change of {c:.3g}). Increase n_steps (now "
        f"{n_steps}) or attribute a smoother function (attributed_fn='logprob'); every step's "
        "error is in step_scores['deltas'].", RuntimeWarning, stacklevel=3)


@dataclasses.dataclass
class _Plan:
    """Host-side preparation of one ``attribute`` call (see ``AttributionModel._plan``)."""
    seqs: list
    contrasts: Optional[list]
    alignments: Optional[list]
    chunks: list
    rows: int
    baseline_ids_kind: Optional[str]
    baseline_arrays: Any
    call: dict
    info: dict
    mesh: Any = None
    method_arrays: Optional[dict] = None


def _resolve_mesh(mesh):
    """``None`` | ``"auto"`` | ``Mesh`` -> ``Mesh`` with a ``"batch"`` axis (or ``None``)."""
    if mesh is None:
        return None
    from jax.sharding import Mesh
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"mesh must be None, 'auto' or a jax.sharding.Mesh, got {mesh!r}.")
        return Mesh(np.array(jax.devices()), ("batch",))
    if "batch" not in mesh.axis_names:
        raise ValueError(f"the mesh needs an axis named 'batch'; it has {mesh.axis_names}.")
    return mesh


def _kwarg(fn, given: dict, name: str):
    """The value of keyword ``name`` for ``fn``: given, else the function's default."""
    if name in given:
        return int(given[name])
    import inspect
    return int(inspect.signature(fn).parameters[name].default)


def _is_native_checkpoint(path: str) -> bool:
    """A local directory whose ``config.json`` names a native family and that holds
    safetensors weights."""
    from .models import NATIVE_TYPES
    from .models.checkpoint import config_dict, has_safetensors
    if not os.path.isdir(path):
        return False
    cfg = config_dict(path)
    return bool(cfg) and cfg.get("model_type") in NATIVE_TYPES and has_safetensors(path)


def _bundled_or_hub(name: str) -> str:
    """The directory of bundled model ``name``, or ``name`` itself when it can be a hub id.
    Fails at once, without the network, for a path that does not exist and for a name that
    looks like a mistyped bundled one."""
    import difflib
    from . import zoo
    if name in zoo.BUNDLED:
        return zoo.path(name)
    bundled = ", ".join(zoo.BUNDLED)
    if name.startswith(("/", "./", "../", "~")) or name.endswith(("/", os.sep)) \
            or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise FileNotFoundError(f"no such directory: {name!r}. Give a local model directory, a "
                                f"hub id (e.g. 'gpt2') or a bundled model ({bundled}).")
    close = difflib.get_close_matches(name, list(zoo.BUNDLED), n=1, cutoff=0.6)
    if close or name.startswith("toy-"):
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"no bundled model {name!r}; bundled models: {bundled}.{hint}")
    return name


def load_model(name_or_path: Any, attribution_method: Union[str, Callable, None] = None, *,
               tokenizer: Any = None, dtype: Any = None, embedding_paths: Optional[dict] = None,
               **model_kwargs) -> AttributionModel:
    """Load a model for attribution.

    Args:
      name_or_path: bundled model name (``"toy-recall"``, ``"toy-mt"``; see
        :mod:`jaxattr.zoo`), hub id, local directory (Flax ``flax_model.msgpack`` or PyTorch
        ``model.safetensors`` weights; the latter are converted with ``from_pt=True``), or an
        already built ``transformers`` Flax model instance. A local directory of a Llama,
        Mistral, Qwen 2/3, Gemma 1-3, Phi-3, OLMo 2 or SmolLM 3 checkpoint with safetensors
        weights (single or sharded) loads into jaxattr's native decoder family
        (:mod:`jaxattr.models`; no torch, no transformers model class).
      attribution_method: the default ``method`` of :meth:`AttributionModel.attribute`
        (as in Inseq's ``load_model("gpt2", "integrated_gradients")``).
      tokenizer: a tokenizer instance or name; default: the checkpoint's own.
      dtype: computation dtype (e.g. ``jnp.bfloat16``; native family: default float32, a
        bfloat16 checkpoint is upcast unless ``dtype=jnp.bfloat16``).
      embedding_paths: token-embedding module paths for classes jaxattr does not know.
      **model_kwargs: passed to ``from_pretrained``.
    """
    if isinstance(name_or_path, str) and not os.path.exists(name_or_path):
        name_or_path = _bundled_or_hub(name_or_path)
    if isinstance(name_or_path, str) and _is_native_checkpoint(name_or_path):
        if model_kwargs:
            raise ValueError(f"the native decoder family takes no model options; got "
                             f"{sorted(model_kwargs)}.")
        from .models import load_native
        hf_model, name = load_native(name_or_path, dtype=dtype), name_or_path
    elif isinstance(name_or_path, str):
        from .loading import load_hf_model
        try:
            hf_model, _ = load_hf_model(name_or_path, dtype=dtype, **model_kwargs)
        except OSError as e:
            if os.path.isdir(name_or_path):
                raise
            from . import zoo
            raise OSError(f"{name_or_path!r} is neither a bundled model ({', '.join(zoo.BUNDLED)})"
                          f" nor a local directory, and loading it from the Hugging Face hub "
                          f"failed: {e}") from e
        name = name_or_path
    else:
        hf_model, name = name_or_path, None
    if tokenizer is None or isinstance(tokenizer, str):
        if tokenizer is None and not isinstance(name_or_path, str):
            raise ValueError("Pass `tokenizer=` when giving a model instance.")
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or name_or_path)
    if isinstance(attribution_method, str) and attribution_method not in list_methods():
        raise ValueError(f"Unknown attribution method {attribution_method!r}. Available: "
                         f"{list_methods()} (jaxattr.list_methods()).")
    return AttributionModel(hf_model, tokenizer, name=name, embedding_paths=embedding_paths,
                            attribution_method=attribution_method)
