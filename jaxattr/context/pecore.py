"""PECoRe (Sarti et al., ICLR 2024): ``attribute_context`` with Inseq 0.7.1's arguments.

Two steps, each one compiled program over every example at once:

1. **CTI** (context-sensitive token identification). Two teacher-forced forwards — the
   contextless run (the *original*: contextless input + current output) and the contextual run
   (the *contrast*: full input + full output) — give, for every current output token, the
   ``context_sensitivity_metric`` (``kl_divergence`` by default: ``KL(P_contextless ||
   P_contextual)``). The contextual token aligned to each contextless step is found by suffix
   alignment (Inseq's right-aligned 1:1 default). Tokens with ``|score| >= mean + λ·std``
   (unbiased std) are selected (:mod:`jaxattr.context.selection`).
2. **CCI** (contextual cues imputation). Every selected token of every example is one row of a
   single batched attribution: the contextual sequence up to that token, attributed with
   ``attributed_fn``; contrastive functions get, per row, the contextless run's greedy next
   token as foil (one batched forward finds them all) and Inseq's rule for when the contrastive
   forward is forced. Context scores are the aggregated column of that token, sliced to the
   context tokens.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ..xla_safety import safe_jit
from ..encoding import (EncodedSequence, InputError, _check_length, pad_batch, pad_contrast)
from ..methods import get_method, needs_of
from ..pipeline import ModelBatch, attribute_batch, split_kwargs
from ..targets import TargetBatch, get_target, separable, target_needs
from .args import ContextArgs
from .output import AttributeContextOutput, CCIOutput
from .selection import select_tokens
from .texts import (concat_with_sep, encode_text, filtered_positions, filtered_tokens,
                    format_template, split_output, tokens_to_string)

__all__ = ["attribute_context"]

_PER_EXAMPLE = ("input_current_text", "input_context_text", "output_current_text",
                "output_context_text")


@dataclasses.dataclass
class _Example:
    """Host-side state of one example through CTI and CCI."""
    args: ContextArgs
    input_full_text: str = ""
    output_full_text: str = ""
    input_context_tokens: Optional[list] = None
    output_context_tokens: Optional[list] = None
    input_full_tokens: list = dataclasses.field(default_factory=list)
    offset: int = 0                      # filtered output-full tokens before the current ones
    ctxless_input: str = ""              # formatted contextless input (Inseq's naming)
    cti: Optional[EncodedSequence] = None
    cti_contrast: Optional[EncodedSequence] = None
    cti_align: Optional[dict] = None
    cti_tokens: list = dataclasses.field(default_factory=list)
    cti_scores: list = dataclasses.field(default_factory=list)
    cti_threshold: float = 0.0
    selected: list = dataclasses.field(default_factory=list)
    ctx_ids: list = dataclasses.field(default_factory=list)       # contextual decoder ids
    ctx_source: Optional[list] = None
    ctx_positions: list = dataclasses.field(default_factory=list)  # filtered -> ctx_ids index
    cti_skip: int = 0                    # contextless-template prefix tokens before current
    current_tokens: list = dataclasses.field(default_factory=list)  # output_current alone


def _as_examples(kwargs: dict) -> tuple[list[dict], bool]:
    """Split list-valued per-example texts into one keyword dict per example."""
    first = kwargs["input_current_text"]
    batched = isinstance(first, (list, tuple))
    if not batched:
        return [kwargs], False
    n = len(first)
    if n == 0:
        raise InputError("input_current_text is an empty list; give at least one text.")
    out = [dict(kwargs) for _ in range(n)]
    for name in _PER_EXAMPLE:
        value = kwargs.get(name)
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise InputError(f"got {n} input_current_text but {len(value)} {name}; give "
                                 "one per example (or one string for all).")
            for i in range(n):
                out[i][name] = value[i]
    return out, True


def attribute_context(
    model,
    input_current_text: Union[str, Sequence[str]],
    *,
    input_context_text: Union[str, Sequence[str], None] = None,
    input_template: Optional[str] = None,
    output_context_text: Union[str, Sequence[str], None] = None,
    output_current_text: Union[str, Sequence[str], None] = None,
    output_template: Optional[str] = None,
    contextless_input_current_text: Optional[str] = None,
    contextless_output_current_text: Optional[str] = None,
    attribution_method: Any = "saliency",
    attributed_fn: Any = None,
    attribution_selectors: Optional[Sequence[int]] = None,
    attribution_aggregators: Optional[Sequence[str]] = None,
    normalize_attributions: bool = False,
    rescale_attributions: bool = False,
    generation_kwargs: Optional[dict] = None,
    attribution_kwargs: Optional[dict] = None,
    context_sensitivity_metric: str = "kl_divergence",
    handle_output_context_strategy: str = "pre",
    contextless_output_next_tokens: Sequence[str] = (),
    special_tokens_to_keep: Sequence[str] = (),
    decoder_input_output_separator: str = " ",
    context_sensitivity_std_threshold: Optional[float] = 1.0,
    context_sensitivity_topk: Optional[int] = None,
    attribution_std_threshold: Optional[float] = 1.0,
    attribution_topk: Optional[int] = None,
    add_output_info: bool = True,
    save_path: Optional[str] = None,
    viz_path: Optional[str] = None,
    show_viz: bool = False,
) -> Union[AttributeContextOutput, list]:
    """Which output tokens depend on the context (CTI), and which context tokens they used (CCI).

    Arguments, defaults and semantics are those of Inseq 0.7.1's ``attribute-context``.

    Args:
      model: an :class:`~jaxattr.AttributionModel` (decoder-only or encoder-decoder).
      input_current_text: the current input (decoder-only: the prompt; encoder-decoder: the
        source). A list runs several examples together (the other ``*_text`` arguments are
        then strings shared by all, or lists of the same length).
      input_context_text: context placed by ``input_template`` (default ``"{context}
        {current}"`` with a context, ``"{current}"`` without).
      output_context_text: output-side context (e.g. the previous target sentence) placed by
        ``output_template`` (same defaults).
      output_current_text: the output to explain; ``None`` generates it greedily from the
        full input (``generation_kwargs``, e.g. ``{"max_new_tokens": 20}``, go to
        ``model.generate``).
      contextless_input_current_text, contextless_output_current_text: templates with
        ``{current}`` for the contextless run (default ``"{current}"``).
      attribution_method: CCI method (``"saliency"`` default, ``"input_x_gradient"``,
        ``"integrated_gradients"``, …).
      attributed_fn: CCI target; ``None`` is ``"probability"``. Contrastive functions
        (``contrast_prob_diff`` …) compare with the contextless run's next token.
      attribution_aggregators: hidden-axis reduction of the CCI attributions (one name, default
        ``"vnorm"``); ``attribution_selectors`` is not supported (raises).
      normalize_attributions, rescale_attributions: normalise each CCI column to sum 1 /
        to the number of tokens (both off by default, as in Inseq).
      attribution_kwargs: options of the method and target (``n_steps``, ``logprob`` …).
      context_sensitivity_metric: contrastive CTI score (``kl_divergence``, ``pcxmi``,
        ``contrast_prob_diff`` …), contextless run as original, contextual as contrast.
      handle_output_context_strategy: ``"pre"`` (default; an output ``{context}`` must be
        given) or ``"auto"`` (split the generated output at the template separator or
        punctuation; raises when it cannot).
      contextless_output_next_tokens: one foil token per selected token (as text), instead of
        the contextless run's greedy prediction (contrastive ``attributed_fn`` only).
      special_tokens_to_keep: special tokens kept in the token lists (e.g. ``"<brk>"``).
      decoder_input_output_separator: joins input and output of decoder-only models.
      context_sensitivity_std_threshold, context_sensitivity_topk: CTI selection
        ``|score| >= mean + λ·std`` then the top-k (``None``: all).
      attribution_std_threshold, attribution_topk: the same for context tokens in the views.
      add_output_info: keep the options in ``output.info``.
      save_path: write the JSON result (Inseq's ``AttributeContextOutput`` fields) there.
      viz_path: write the HTML view there. show_viz: print the terminal view.

    Returns:
      :class:`~jaxattr.context.AttributeContextOutput` (a list of them for list inputs), with
      ``cti_scores`` (one per current output token) and ``cci_scores`` (one
      :class:`~jaxattr.context.CCIOutput` per selected token, ranked by ``|cti_score|``).

    Raises:
      InputError: empty current text, a template without ``{current}``, an output that cannot
        be split, a sequence longer than the model's positions, and the other rules of
        :class:`~jaxattr.context.ContextArgs`.
    """
    raw = dict(locals())
    for name in ("model", "add_output_info", "save_path", "viz_path", "show_viz"):
        raw.pop(name)
    if attribution_selectors is not None:
        raise InputError("attribution_selectors is not supported by jaxattr's attribute_context; "
                         "pass one attribution_aggregators name (or none for 'vnorm').")
    if attribution_aggregators is not None and len(list(
            [attribution_aggregators] if isinstance(attribution_aggregators, str)
            else attribution_aggregators)) > 1:
        raise InputError("attribution_aggregators takes one reduction name here ('vnorm', "
                         "'sum', 'mean', 'absmax'), e.g. ['vnorm'].")
    per_example, batched = _as_examples(raw)
    examples = []
    for i, kw in enumerate(per_example):
        try:
            examples.append(_Example(args=ContextArgs.build(**kw)))
        except InputError as e:
            raise InputError(f"example {i}: {e}" if batched else str(e)) from None
    _prepare_outputs(model, examples)
    for i, ex in enumerate(examples):
        _encode_cti(model, ex, i)
    _run_cti(model, examples)
    rows = _cci_rows(model, examples)
    results = _run_cci(model, examples, rows)
    outputs = []
    for ex, cci in zip(examples, results):
        a = ex.args
        info = dict(a.to_dict(), cti_threshold=ex.cti_threshold,
                    model_name_or_path=getattr(model, "name", None)) if add_output_info else None
        outputs.append(AttributeContextOutput(
            input_context=a.input_context_text, input_context_tokens=ex.input_context_tokens,
            output_context=a.output_context_text, output_context_tokens=ex.output_context_tokens,
            output_current=a.output_current_text, output_current_tokens=ex.cti_tokens,
            cti_scores=ex.cti_scores, cci_scores=cci, info=info,
            cti_threshold=ex.cti_threshold))
    for i, out in enumerate(outputs):
        suffix = "" if not batched else f".{i}"
        if save_path:
            out.save(_indexed(save_path, suffix))
        if viz_path:
            with open(_indexed(viz_path, suffix), "w", encoding="utf-8") as f:
                f.write(out.to_html())
        if show_viz:
            out.show()
    return outputs if batched else outputs[0]


def _indexed(path: str, suffix: str) -> str:
    if not suffix:
        return path
    stem, dot, ext = path.rpartition(".")
    return f"{stem}{suffix}.{ext}" if dot else path + suffix


# ----------------------------------------------------------------------------- outputs
def _prepare_outputs(model, examples: list) -> None:
    """Fill the full input texts, and generate the outputs not given (Inseq's
    ``prepare_outputs``, settings 1-6, no prompt), batched over examples."""
    tok, enc_dec = model.tokenizer, model.is_encoder_decoder
    todo = []
    for i, ex in enumerate(examples):
        a = ex.args
        ex.input_full_text = format_template(a.input_template, a.input_current_text,
                                             a.input_context_text)
        use_ctx, has_ctx = a.has_output_context, a.output_context_text is not None
        if has_ctx == use_ctx and a.output_current_text is not None:
            continue
        sep = a.decoder_input_output_separator
        model_input = ex.input_full_text
        prefix = a.output_template.split("{context}" if use_ctx else "{current}")[0]
        if has_ctx:  # setting 3: generate the current output after the given context
            prefix = a.output_template.split("{current}")[0].strip().format(
                context=a.output_context_text)
            if enc_dec:
                raise InputError(
                    f"example {i}: generating output_current_text after a given "
                    "output_context_text is not supported for encoder-decoder models; pass "
                    "output_current_text.")
            model_input = concat_with_sep(ex.input_full_text, prefix, sep)
            prefix = ""
        elif not enc_dec:
            model_input = concat_with_sep(ex.input_full_text, "", sep)
        todo.append((i, model_input, prefix))
    if not todo:
        return
    gen = dict(examples[todo[0][0]].args.generation_kwargs)
    texts = model.generate([m for _, m, _ in todo], **gen)
    for (i, model_input, prefix), text in zip(todo, texts):
        a = examples[i].args
        if not enc_dec:
            shown = tok.decode(encode_text(tok, model_input), skip_special_tokens=True)
            if not text.startswith(shown):
                raise InputError(f"example {i}: the generated text {text!r} does not start "
                                 f"with its prompt {shown!r}; pass output_current_text.")
            text = text[len(shown):]
        text = tokens_to_string(tok, filtered_tokens(tok, text, a.special_tokens_to_keep,
                                                     target=enc_dec))
        suffix = a.output_template.split("{current}")[1]
        if prefix:
            if not text.startswith(prefix):
                raise InputError(f"example {i}: output_template {a.output_template!r} starts "
                                 f"with {prefix!r} but the model generated {text!r}; force the "
                                 "outputs or fix the template.")
            text = text[len(prefix):]
        if suffix:
            if not text.endswith(suffix):
                raise InputError(f"example {i}: output_template {a.output_template!r} ends "
                                 f"with {suffix!r} but the model generated {text!r}; force the "
                                 "outputs or fix the template.")
            text = text[:-len(suffix)]
        if a.has_output_context == (a.output_context_text is not None):
            current, context = text.strip(), a.output_context_text
        else:  # settings 5, 6: split (strategy "auto")
            context, current = split_output(text, a.output_template, index=i)
            if a.output_current_text is not None:
                current = a.output_current_text
        if not current:
            raise InputError(f"example {i}: the model generated an empty output; pass "
                             "output_current_text or raise max_new_tokens in generation_kwargs.")
        examples[i].args = dataclasses.replace(a, output_current_text=current,
                                               output_context_text=context)


# ----------------------------------------------------------------------------- CTI
def _right_aligned(n_target: int, start: int, n_contrast: int) -> dict:
    """Inseq's default alignment: the last target positions map 1:1 onto the last contrast
    positions (``p -> n_contrast - (n_target - p)``, clipped to the last one)."""
    out = {}
    for p in range(start, n_target):
        q = n_contrast - (n_target - p)
        out[p] = q if q > 0 else n_contrast - 1
    return out


def _encode_cti(model, ex: _Example, index: int) -> None:
    """Token ids of the contextless (original) and contextual (contrast) runs of CTI and of the
    contextual sequence CCI attributes."""
    tok, enc_dec, a = model.tokenizer, model.is_encoder_decoder, ex.args
    keep = a.special_tokens_to_keep
    sep = a.decoder_input_output_separator
    ex.output_full_text = format_template(a.output_template, a.output_current_text,
                                          a.output_context_text)
    if a.input_context_text is not None:
        ex.input_context_tokens = filtered_tokens(tok, a.input_context_text, keep)
    if not enc_dec:
        ex.output_full_text = concat_with_sep(ex.input_full_text, ex.output_full_text, sep)
    current_tokens = filtered_tokens(tok, a.output_current_text, keep, target=enc_dec)
    if not current_tokens:
        raise InputError(f"example {index}: output_current_text {a.output_current_text!r} has "
                         "no token; give a non-empty output.")
    if a.output_context_text is not None:
        ex.output_context_tokens = filtered_tokens(tok, a.output_context_text, keep,
                                                   target=enc_dec)
    ex.input_full_tokens = filtered_tokens(tok, ex.input_full_text, keep)
    ex.current_tokens = current_tokens
    full_ids = encode_text(tok, ex.output_full_text, target=enc_dec)
    full_pos = filtered_positions(tok, full_ids, keep)
    ex.offset = len(full_pos) - len(current_tokens)
    ctxless_in = a.contextless_input_current_text.format(current=a.input_current_text)
    ctxless_out = a.contextless_output_current_text.format(current=a.output_current_text)
    if not enc_dec:
        ctxless_in = concat_with_sep(ctxless_in, "", sep)
        ctxless_out = ctxless_in + ctxless_out
    ex.ctxless_input = ctxless_in
    limit = model.max_positions
    if enc_dec:
        start = 1
        ds = model.decoder_start_token_id
        orig = EncodedSequence(target_ids=[ds] + encode_text(tok, ctxless_out, target=True),
                               attr_start=1, attr_end=0,
                               source_ids=encode_text(tok, ctxless_in.rstrip(" ")))
        ex.ctx_source = encode_text(tok, ex.input_full_text)
        ex.ctx_ids = [ds] + full_ids
        ex.ctx_positions = [p + 1 for p in full_pos]
        contrast = EncodedSequence(target_ids=ex.ctx_ids, attr_start=1, attr_end=len(ex.ctx_ids),
                                   source_ids=ex.ctx_source)
        for what, seq in (("contextless source", orig.source_ids),
                          ("contextual source", ex.ctx_source)):
            _check_length(len(seq), limit, what, index)
    else:
        start = len(_strip_eos(tok, encode_text(tok, ctxless_in.rstrip(" "))))
        orig = EncodedSequence(target_ids=_strip_eos(tok, encode_text(tok, ctxless_out)),
                               attr_start=start, attr_end=0)
        ex.ctx_ids = full_ids
        ex.ctx_positions = full_pos
        contrast = EncodedSequence(target_ids=full_ids, attr_start=1, attr_end=len(full_ids))
    orig.attr_end = len(orig.target_ids)
    for what, seq in (("contextless sequence", orig.target_ids),
                      ("contextual sequence", ex.ctx_ids)):
        _check_length(len(seq), limit, what, index)
    if orig.attr_end <= orig.attr_start:
        raise InputError(f"example {index}: the contextless output adds no token to its input; "
                         "give a non-empty output_current_text.")
    ex.cti, ex.cti_contrast = orig, contrast
    ex.cti_align = _right_aligned(orig.attr_end, orig.attr_start, len(contrast.target_ids))
    prefix = a.contextless_output_current_text.split("{current}")[0]
    skip = len(filtered_tokens(tok, prefix, keep, target=enc_dec)) if prefix else 0
    tokens = tok.convert_ids_to_tokens(orig.target_ids)[start + skip:]
    ex.cti_skip = skip
    ex.cti_tokens = tokens[:-1] if enc_dec else tokens


def _strip_eos(tok, ids: list) -> list:
    eos = tok.eos_token_id
    if eos is not None and ids and ids[-1] == eos and eos != tok.bos_token_id:
        return ids[:-1]
    return ids


def _gather_steps(values, positions):
    idx = positions.reshape(positions.shape + (1,) * (values.ndim - 2)).astype(jnp.int32)
    return jnp.take_along_axis(values, idx, axis=1)


@functools.partial(safe_jit, static_argnames=("metric", "metric_kwargs"))
def cti_program(adapter, batch: ModelBatch, *, metric, metric_kwargs=()):
    """CTI scores ``[B, T]`` from two teacher-forced forwards: the contextless run
    (``target_*``/``source_*``, logits at ``step_positions - 1``) as original and the
    contextual run (``contrast_*``, logits at ``contrast_positions - 1``) as contrast.
    ``metric`` is a contrastive target function. Also returns the contextless run's greedy
    prediction ``[B, T]`` at each step."""
    logits = adapter.logits(target_ids=batch.target_ids, target_mask=batch.target_mask,
                            source_ids=batch.source_ids, source_mask=batch.source_mask,
                            positions=batch.step_positions - 1)
    c_logits = adapter.logits(
        target_ids=batch.contrast_target_ids, target_mask=batch.contrast_target_mask,
        source_ids=(batch.contrast_source_ids if batch.contrast_source_ids is not None
                    else batch.source_ids),
        source_mask=(batch.contrast_source_mask if batch.contrast_source_mask is not None
                     else batch.source_mask),
        positions=batch.contrast_positions - 1)
    tb = TargetBatch(target_ids=_gather_steps(batch.target_ids, batch.step_positions),
                     step_mask=batch.step_mask,
                     contrast_ids=_gather_steps(batch.contrast_target_ids,
                                                batch.contrast_positions),
                     contrast_logits=c_logits, contrast_mask=batch.contrast_step_mask)
    return metric(logits, tb, **dict(metric_kwargs)) * batch.step_mask


def _run_cti(model, examples: list) -> None:
    """One CTI program over every example; fills scores, tokens and the selection."""
    metric_name = examples[0].args.context_sensitivity_metric
    metric = get_target(metric_name)
    if not target_needs(metric) & {"contrast", "contrast_logits"}:
        raise InputError(f"context_sensitivity_metric={metric_name!r} is not contrastive; use "
                         "kl_divergence, pcxmi, contrast_prob_diff, contrast_logits_diff, ...")
    seqs = [ex.cti for ex in examples]
    arrays = pad_batch(seqs, pad_id=model.pad_token_id, max_positions=model.max_positions)
    arrays.update(pad_contrast(seqs, [ex.cti_contrast for ex in examples],
                               [ex.cti_align for ex in examples],
                               n_rows=len(seqs), n_steps=arrays["step_mask"].shape[1],
                               pad_id=model.pad_token_id, max_positions=model.max_positions))
    batch = ModelBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})
    scores = np.asarray(cti_program(model.adapter, batch, metric=metric), np.float32)
    for r, ex in enumerate(examples):
        n = ex.cti.n_steps
        s = scores[r, ex.cti_skip:n].tolist()
        if model.is_encoder_decoder:
            s = s[:-1]
        ex.cti_scores = s
        a = ex.args
        ex.selected, ex.cti_threshold = select_tokens(
            ex.cti_tokens, s, std_threshold=a.context_sensitivity_std_threshold,
            topk=a.context_sensitivity_topk)
        n_next = len(a.contextless_output_next_tokens)
        if n_next and n_next != len(ex.selected):
            raise InputError(
                f"contextless_output_next_tokens has {n_next} tokens but CTI selected "
                f"{len(ex.selected)}; give one per selected token.")


# ----------------------------------------------------------------------------- CCI
@dataclasses.dataclass
class _Row:
    """One CCI attribution: an example's selected token."""
    example: int
    rank: int
    cti_idx: int
    seq: EncodedSequence
    contrast: Optional[EncodedSequence] = None
    contrast_pos: int = 0
    forced: bool = False
    contrast_token: Optional[str] = None
    contextless_output: Optional[str] = None
    contextual_output: str = ""
    keep_ids: frozenset = frozenset()


def _cci_rows(model, examples: list) -> list:
    """One row per selected token; contrastive targets also get their foil (the contextless
    run's greedy next token, found for all rows by one batched forward)."""
    tok, enc_dec = model.tokenizer, model.is_encoder_decoder
    rows = []
    for e, ex in enumerate(examples):
        a = ex.args
        for rank, (cti_idx, _, _) in enumerate(ex.selected):
            j = ex.offset + cti_idx
            if j >= len(ex.ctx_positions) or j < 0:
                raise InputError(
                    f"example {e}: the current output tokenises differently inside the full "
                    "output, so CTI token {cti_idx} has no contextual counterpart; force "
                    "outputs that end with output_current_text.")
            p = ex.ctx_positions[j]
            seq = EncodedSequence(target_ids=ex.ctx_ids[:p + 1], attr_start=p, attr_end=p + 1,
                                  source_ids=ex.ctx_source)
            out_tokens = tok.convert_ids_to_tokens(ex.ctx_ids[:p + 1])
            shown = [t for i, t in enumerate(out_tokens) if i in set(ex.ctx_positions)]
            rows.append(_Row(example=e, rank=rank, cti_idx=cti_idx, seq=seq,
                             contextual_output=tokens_to_string(tok, shown).lstrip(" ")))
    target_fn = get_target(examples[0].args.attributed_fn or "probability") if examples else None
    if not rows or not (target_needs(target_fn) & {"contrast", "contrast_logits"}):
        return rows
    _contrast_rows(model, examples, rows)
    return rows


def _contrast_rows(model, examples: list, rows: list) -> None:
    """Foil, contrast sequence and forcing rule of each row (Inseq's ``get_contextless_output``
    and the ``contrast_force_inputs`` rule)."""
    tok, enc_dec = model.tokenizer, model.is_encoder_decoder
    special = set(tok.all_special_ids)
    greedy_rows, prefixes = [], []
    for row in rows:
        ex = examples[row.example]
        a = ex.args
        keep_ids = {tok.convert_tokens_to_ids(t) for t in a.special_tokens_to_keep}
        # Inseq indexes the tokens of output_current_text alone with the CTI index
        ctx_prefix = tokens_to_string(tok, ex.current_tokens[:row.cti_idx])
        row.keep_ids = keep_ids
        if a.contextless_output_next_tokens:
            word = a.contextless_output_next_tokens[row.rank]
            first = tok.convert_ids_to_tokens(encode_text(tok, word, target=enc_dec))
            first = [t for t in first if tok.convert_tokens_to_ids(t) not in special
                     or t in a.special_tokens_to_keep][0]
            text = tokens_to_string(tok, ex.current_tokens[:row.cti_idx] + [first])
            row.contextless_output = text
            _set_contrast(model, row, ex, encode_text(tok, text, target=enc_dec), None)
            continue
        if enc_dec:
            pre = encode_text(tok, ctx_prefix, target=True) if ctx_prefix else []
            pre = _strip_eos(tok, pre)
            prefixes.append(EncodedSequence(target_ids=[model.decoder_start_token_id] + pre,
                                            attr_start=1, attr_end=1,
                                            source_ids=encode_text(tok, ex.ctxless_input)))
        else:
            ctxless_prefix = a.contextless_output_current_text.split("{current}")[0]
            gen_in = concat_with_sep(concat_with_sep(ex.ctxless_input, ctxless_prefix,
                                                     a.decoder_input_output_separator),
                                     ctx_prefix, a.decoder_input_output_separator)
            prefixes.append(EncodedSequence(target_ids=_strip_eos(tok, encode_text(tok, gen_in)),
                                            attr_start=1, attr_end=1))
        greedy_rows.append(row)
    if greedy_rows:
        foils = _greedy_next(model, prefixes)
        for row, pre, foil in zip(greedy_rows, prefixes, foils):
            _set_contrast(model, row, examples[row.example], pre.target_ids, int(foil))


def _set_contrast(model, row: _Row, ex: _Example, ids: list, foil: Optional[int]) -> None:
    """The contrast sequence of a row: the contextless prefix + foil (encoder-decoder: + EOS),
    aligned to the row's step as Inseq's right alignment does; forced when the attributed
    function is ``kl_divergence`` or the foil equals the contextual token."""
    tok, enc_dec, a = model.tokenizer, model.is_encoder_decoder, ex.args
    special = set(tok.all_special_ids)
    source = None
    if foil is not None:  # generated: the prefix ids, then the greedy token, as text
        body = ids[1:] if enc_dec else list(ids)
        shown = [t for t in body + [foil] if t not in special or t in row.keep_ids]
        row.contextless_output = tokens_to_string(tok, tok.convert_ids_to_tokens(shown))
        ids = encode_text(tok, row.contextless_output, target=enc_dec)
    # Inseq passes the contextless output as text: its tokens are those of the re-tokenised
    # text (a byte-level foil can merge with the prefix or become several tokens)
    if enc_dec:
        ids = [model.decoder_start_token_id] + list(ids)
        source = encode_text(tok, ex.ctxless_input)
    else:
        ids = _strip_eos(tok, list(ids))
    q = len(ids) - (2 if enc_dec else 1)
    if q < 1:
        raise InputError(f"example {row.example}: the contextless output for CTI token "
                         f"{row.cti_idx} is empty; give contextless_output_next_tokens.")
    fn = a.attributed_fn if isinstance(a.attributed_fn, str) else \
        getattr(a.attributed_fn, "__name__", "")
    contrast_id = ids[q]
    row.contrast_token = tok.convert_ids_to_tokens([contrast_id])[0]
    ctx_ids = encode_text(tok, row.contextual_output, target=enc_dec)
    ctx_id = ctx_ids[-1] if not enc_dec else (ctx_ids[-2] if len(ctx_ids) > 1 else None)
    row.forced = fn == "kl_divergence" or contrast_id == ctx_id
    if row.forced:
        row.contrast = EncodedSequence(target_ids=ids, attr_start=1, attr_end=len(ids),
                                       source_ids=source if enc_dec else None)
        row.contrast_pos = q
    else:  # the original prefix with the foil at the step: only the foil id is read
        tgt = list(row.seq.target_ids)
        tgt[-1] = contrast_id
        row.contrast = EncodedSequence(target_ids=tgt, attr_start=1, attr_end=len(tgt),
                                       source_ids=row.seq.source_ids)
        row.contrast_pos = len(tgt) - 1
    limit = model.max_positions
    _check_length(len(ids), limit, "contextless output", row.example)


@safe_jit
def _next_logits(adapter, batch: ModelBatch):
    return adapter.logits(target_ids=batch.target_ids, target_mask=batch.target_mask,
                          source_ids=batch.source_ids, source_mask=batch.source_mask,
                          positions=batch.step_positions)


def _greedy_next(model, prefixes: list) -> np.ndarray:
    """Greedy next token after each prefix (one batched forward), with the model's single-
    token ``bad_words_ids`` masked as generation would."""
    for p in prefixes:
        _check_length(len(p.target_ids), model.max_positions, "contextless prefix", 0)
    seqs = [dataclasses.replace(p, attr_start=len(p.target_ids) - 1,
                                attr_end=len(p.target_ids)) for p in prefixes]
    arrays = pad_batch(seqs, pad_id=model.pad_token_id, max_positions=model.max_positions)
    batch = ModelBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})
    logits = np.asarray(_next_logits(model.adapter, batch)[:, 0], np.float32)
    cfg = getattr(model.hf_model, "generation_config", None)
    bad = [w[0] for w in (getattr(cfg, "bad_words_ids", None) or []) if len(w) == 1]
    if bad:
        logits[:, bad] = -np.inf
    return logits[:len(prefixes)].argmax(-1)


@functools.lru_cache(maxsize=None)
def per_row_contrast(target_fn):
    """``target_fn`` where a step with ``contrast_mask > 1`` reads the contrastive forward's
    logits and other steps read the original logits (Inseq's forced / not forced contrast
    inputs, per row of one batch). Step-separable like ``target_fn``."""
    @separable
    def fn(logits, batch, **kwargs):
        if batch.contrast_logits is not None:
            forced = (batch.contrast_mask > 1.5)[..., None]
            mixed = jnp.where(forced, batch.contrast_logits, logits)
            batch = batch.replace(contrast_logits=mixed,
                                  contrast_mask=jnp.minimum(batch.contrast_mask, 1.0))
        return target_fn(logits, batch, **kwargs)
    fn.__name__ = getattr(target_fn, "__name__", "target")
    fn.__signature__ = inspect.signature(target_fn)
    fn.needs = target_needs(target_fn)
    return fn


def _run_cci(model, examples: list, rows: list) -> list:
    """Attribute every row in one batched program and slice the context scores."""
    results = [[] for _ in examples]
    if not rows:
        return results
    a = examples[0].args
    method = get_method(a.attribution_method)
    target_fn = get_target(a.attributed_fn or "probability")
    routed = split_kwargs(dict(a.attribution_kwargs),
                          {"method": needs_of(method).options, "attributed_fn": target_fn})
    contrastive = bool(target_needs(target_fn) & {"contrast", "contrast_logits"})
    enc_dec = model.is_encoder_decoder
    attribute_target = (not enc_dec) or a.has_output_context
    seqs = [r.seq for r in rows]
    arrays = pad_batch(seqs, pad_id=model.pad_token_id, max_positions=model.max_positions)
    forward = False
    if contrastive:
        arrays.update(pad_contrast(
            seqs, [r.contrast for r in rows],
            [{r.seq.attr_start: r.contrast_pos} for r in rows], n_rows=len(rows),
            n_steps=arrays["step_mask"].shape[1], pad_id=model.pad_token_id,
            max_positions=model.max_positions))
        if enc_dec and arrays.get("contrast_source_ids") is None:
            arrays["contrast_source_ids"] = arrays["source_ids"]
            arrays["contrast_source_mask"] = arrays["source_mask"]
        forward = any(r.forced for r in rows)
        if forward:
            forced = np.array([r.forced for r in rows], np.float32)[:, None]
            arrays["contrast_step_mask"] = arrays["contrast_step_mask"] * (1.0 + forced)
            target_fn = per_row_contrast(target_fn)
    if needs_of(method).baseline:
        arrays.update(model._baseline_ids(arrays, "unk"))
    batch = ModelBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})
    res = attribute_batch(model.adapter, batch, None, method=method,
                          method_kwargs=_hashable(routed["method"]), target_fn=target_fn,
                          target_kwargs=_hashable(routed["attributed_fn"]),
                          attribute_source=enc_dec, attribute_target=attribute_target,
                          contrast_forward=forward)
    host = jax.device_get(res)
    for r, row in enumerate(rows):
        results[row.example].append(_cci_output(model, examples[row.example], row, host, r))
    return results


def _hashable(d: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def _column(arr, r: int, n_rows: int) -> Optional[np.ndarray]:
    """Row ``r``'s first-step column ``[n_rows, H]`` (or ``None``)."""
    if arr is None:
        return None
    return np.asarray(arr[r, :n_rows, 0], np.float32)


def _cci_output(model, ex: _Example, row: _Row, host, r: int) -> CCIOutput:
    """Aggregate a row's column and slice it to the input / output context tokens (Inseq's
    ``get_source_target_cci_scores``, which counts filtered tokens from row 0). Rows are
    mapped through the filtered-token positions, so special tokens the tokenizer adds (BOS,
    the decoder start token) never shift the scores: Inseq 0.7.1 returns the rows from 0,
    shifted by one token for tokenizers that prepend BOS and for encoder-decoder output
    contexts (where its first score is the decoder start token's).
    """
    from ..aggregate import REDUCTIONS
    a = ex.args
    tok, enc_dec = model.tokenizer, model.is_encoder_decoder
    src = _column(host.source_attributions, r, len(row.seq.source_ids or ()))
    tgt = _column(host.target_attributions, r, len(row.seq.target_ids))
    how = (a.attribution_aggregators or ("vnorm",))[0]
    if how not in REDUCTIONS:
        raise InputError(f"unknown attribution_aggregators {how!r}; use one of "
                         f"{sorted(REDUCTIONS)}.")
    parts = [None if x is None else np.asarray(REDUCTIONS[how](x[:, None]))[:, 0]
             for x in (src, tgt)]
    if tgt is not None:  # rows after the attributed prefix are not inputs
        parts[1] = np.where(np.arange(len(parts[1])) < row.seq.attr_start, parts[1], np.nan)
    if a.normalize_attributions or a.rescale_attributions:
        total = sum(np.nansum(np.abs(p)) for p in parts if p is not None)
        n = sum(int(np.sum(~np.isnan(p))) for p in parts if p is not None)
        scale = (total if total else 1.0) / (n if a.rescale_attributions else 1.0)
        parts = [None if p is None else p / scale for p in parts]
    src_scores, tgt_scores = parts
    keep = a.special_tokens_to_keep
    input_scores = output_scores = None
    if a.has_input_context:
        scores = src_scores if enc_dec else tgt_scores
        pre = a.input_template.partition("{context}")[0]
        if "{current}" in pre:
            pre = pre.format(current=a.input_current_text)
        n_pre = len(filtered_tokens(tok, pre, keep)) if pre else 0
        rows = (filtered_positions(tok, ex.ctx_source, keep) if enc_dec else ex.ctx_positions)
        input_scores = scores[rows[n_pre:n_pre + len(ex.input_context_tokens)]].tolist()
    if a.has_output_context:
        pre = a.output_template.partition("{context}")[0]
        if not enc_dec and pre:
            pre = a.decoder_input_output_separator + pre
        n_pre = len(filtered_tokens(tok, pre, keep, target=enc_dec)) if pre else 0
        if not enc_dec:
            n_pre += len(ex.input_full_tokens)
        rows = ex.ctx_positions[n_pre:n_pre + len(ex.output_context_tokens)]
        output_scores = tgt_scores[rows].tolist()
    cti_idx, score, token = ex.selected[row.rank]
    return CCIOutput(cti_idx=cti_idx, cti_token=token, cti_score=score,
                     contextual_output=row.contextual_output,
                     contrast_token=row.contrast_token,
                     contextless_output=row.contextless_output,
                     input_context_scores=input_scores, output_context_scores=output_scores)
