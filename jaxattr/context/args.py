"""The options of a PECoRe run (Inseq 0.7.1's ``AttributeContextArgs``), validated and frozen.

Field names, defaults and the template rules follow Inseq's ``attribute-context`` command, with
two deliberate differences: ``handle_output_context_strategy`` defaults to ``"pre"`` (never an
interactive prompt; ``"manual"`` is refused) and there is no interactive prompt for
contextless next tokens (give ``contextless_output_next_tokens`` instead).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

from ..encoding import InputError

__all__ = ["ContextArgs", "OUTPUT_CONTEXT_STRATEGIES"]

OUTPUT_CONTEXT_STRATEGIES = ("pre", "auto")


@dataclasses.dataclass(frozen=True)
class ContextArgs:
    """Validated options of :func:`jaxattr.attribute_context` (see its docstring for each one).

    Build with :meth:`build`, which fills Inseq's template defaults and checks the rules:
    ``input_template`` defaults to ``"{context} {current}"`` when there is an input context,
    ``"{current}"`` otherwise (same for ``output_template``); every template and contextless
    template must contain ``{current}``; ``{context}`` in a template needs its context text;
    in ``output_template`` ``{context}`` comes before ``{current}``.
    """
    input_current_text: str
    input_context_text: Optional[str] = None
    input_template: Optional[str] = None
    output_context_text: Optional[str] = None
    output_current_text: Optional[str] = None
    output_template: Optional[str] = None
    contextless_input_current_text: Optional[str] = None
    contextless_output_current_text: Optional[str] = None
    attribution_method: Any = "saliency"
    attributed_fn: Any = None
    attribution_selectors: Optional[tuple] = None
    attribution_aggregators: Optional[tuple] = None
    normalize_attributions: bool = False
    rescale_attributions: bool = False
    generation_kwargs: tuple = ()
    attribution_kwargs: tuple = ()
    context_sensitivity_metric: str = "kl_divergence"
    handle_output_context_strategy: str = "pre"
    contextless_output_next_tokens: tuple = ()
    special_tokens_to_keep: tuple = ()
    decoder_input_output_separator: str = " "
    context_sensitivity_std_threshold: Optional[float] = 1.0
    context_sensitivity_topk: Optional[int] = None
    attribution_std_threshold: Optional[float] = 1.0
    attribution_topk: Optional[int] = None

    @property
    def has_input_context(self) -> bool:
        return "{context}" in self.input_template

    @property
    def has_output_context(self) -> bool:
        return "{context}" in self.output_template

    @classmethod
    def build(cls, **kwargs) -> "ContextArgs":
        """Validate ``kwargs`` (the fields above) and fill the template defaults."""
        kw = dict(kwargs)
        for name in ("generation_kwargs", "attribution_kwargs"):
            kw[name] = tuple(sorted(dict(kw.get(name) or {}).items()))
        for name in ("contextless_output_next_tokens", "special_tokens_to_keep",
                     "attribution_selectors", "attribution_aggregators"):
            value = kw.get(name)
            if isinstance(value, str):
                value = [value]
            kw[name] = None if value is None and name.startswith("attribution_") else \
                tuple(value or ())
        cur = kw.get("input_current_text")
        if not isinstance(cur, str) or not cur.strip():
            raise InputError("input_current_text must be a non-empty string (the current input "
                             f"whose output is explained), got {cur!r}.")
        strategy = kw.get("handle_output_context_strategy", "pre")
        if strategy not in OUTPUT_CONTEXT_STRATEGIES:
            raise InputError(
                f"handle_output_context_strategy={strategy!r} is not supported: use 'pre' "
                "(give output_context_text when output_template has {context}) or 'auto' "
                "(split the generated output at the template separator or punctuation); "
                "jaxattr never prompts interactively ('manual').")
        in_ctx, out_ctx = kw.get("input_context_text"), kw.get("output_context_text")
        if kw.get("input_template") is None:
            kw["input_template"] = "{current}" if in_ctx is None else "{context} {current}"
        if kw.get("output_template") is None:
            kw["output_template"] = "{current}" if out_ctx is None else "{context} {current}"
        for name in ("contextless_input_current_text", "contextless_output_current_text"):
            if kw.get(name) is None:
                kw[name] = "{current}"
            if "{current}" not in kw[name]:
                raise InputError(f"{name}={kw[name]!r} has no {{current}} placeholder; add "
                                 "'{current}' where the current text goes.")
        for name in ("input_template", "output_template"):
            if "{current}" not in kw[name]:
                raise InputError(f"{name}={kw[name]!r} has no {{current}} placeholder; add "
                                 "'{current}' where the current text goes (e.g. "
                                 "'{context} {current}').")
        in_tpl, out_tpl = kw["input_template"], kw["output_template"]
        if strategy == "pre" and not out_ctx and "{context}" in out_tpl:
            raise InputError(
                f"output_template={out_tpl!r} uses {{context}} but no output_context_text was "
                "given; pass output_context_text, or handle_output_context_strategy='auto' to "
                "split the generated output.")
        if in_ctx and "{context}" not in in_tpl:
            warnings.warn(f"input_template {in_tpl!r} has no {{context}}: input_context_text "
                          "is ignored.", stacklevel=3)
            kw["input_context_text"] = in_ctx = None
        if out_ctx and "{context}" not in out_tpl:
            warnings.warn(f"output_template {out_tpl!r} has no {{context}}: "
                          "output_context_text is ignored.", stacklevel=3)
            kw["output_context_text"] = None
        if not in_ctx and "{context}" in in_tpl:
            raise InputError(f"input_template={in_tpl!r} uses {{context}} but "
                             "input_context_text is missing; pass it or drop {context}.")
        if "{context}" in out_tpl and out_tpl.find("{context}") > out_tpl.find("{current}"):
            raise InputError(f"output_template={out_tpl!r}: {{context}} must come before "
                             "{current}.")
        out_cur = kw.get("output_current_text")
        if out_cur is not None and not out_cur.strip():
            raise InputError("output_current_text is empty; give the output to explain or "
                             "None to generate it.")
        for name in ("context_sensitivity_topk", "attribution_topk"):
            v = kw.get(name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise InputError(f"{name} must be a positive integer or None, got {v!r}.")
        return cls(**kw)

    def to_dict(self) -> dict:
        """JSON-ready dict of the options (Inseq's ``info`` field names)."""
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("generation_kwargs", "attribution_kwargs"):
                v = dict(v)
            elif isinstance(v, tuple):
                v = list(v)
            elif callable(v):
                v = getattr(v, "__name__", repr(v))
            d[f.name] = v
        d["has_input_context"] = self.has_input_context
        d["has_output_context"] = self.has_output_context
        return d
