"""``jaxattr attribute-context``: Inseq 0.7.1's ``attribute-context`` options, plus a resumable
JSON-lines dataset mode (``--input_file`` / ``--output``).

Options are spelled as in Inseq (``--input_current_text``); the dashed spelling
(``--input-current-text``) works too.
"""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"max_new_tokens\": 10}'")
    return value


def _opt(p, name: str, *aliases, **kw):
    names = [f"--{name}"]
    if "_" in name:
        names.append("--" + name.replace("_", "-"))
    p.add_argument(*names, *aliases, dest=name, **kw)


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``attribute-context`` subcommand to an ``add_subparsers()`` object."""
    p = sub.add_parser(
        "attribute-context",
        help="PECoRe: find context-sensitive output tokens and their contextual cues",
        description="Context-sensitive token identification (CTI) and contextual cues "
                    "imputation (CCI), with the options of Inseq 0.7.1's attribute-context. "
                    "With --input_file, every row of a JSON-lines file (resumable).")
    _opt(p, "model_name_or_path", "-m", "--model", default=None,
         help="hub id, local directory or bundled model name (default: toy-context)")
    _opt(p, "input_current_text", default=None, help="the current input (prompt / source)")
    _opt(p, "input_context_text", default=None, help="the input context")
    _opt(p, "input_template", default=None, help="e.g. '{context} {current}'")
    _opt(p, "output_context_text", default=None, help="the output context")
    _opt(p, "output_current_text", default=None,
         help="the output to explain (default: generated)")
    _opt(p, "output_template", default=None, help="e.g. '{context} {current}'")
    _opt(p, "contextless_input_current_text", default=None, help="template with {current}")
    _opt(p, "contextless_output_current_text", default=None, help="template with {current}")
    _opt(p, "attribution_method", "-a", default="saliency", help="CCI attribution method")
    _opt(p, "attributed_fn", "-fn", default=None,
         help="CCI target (default probability; e.g. contrast_prob_diff)")
    _opt(p, "attribution_aggregators", nargs="*", default=None,
         help="hidden-axis reduction of the CCI scores (default vnorm)")
    _opt(p, "normalize_attributions", action="store_true", help="CCI columns sum to 1")
    _opt(p, "rescale_attributions", action="store_true",
         help="CCI columns sum to the number of tokens")
    _opt(p, "generation_kwargs", type=_json_dict, default={}, help="JSON, e.g. "
         "'{\"max_new_tokens\": 20}'")
    _opt(p, "attribution_kwargs", type=_json_dict, default={}, help="JSON, e.g. "
         "'{\"n_steps\": 32}'")
    _opt(p, "context_sensitivity_metric", default="kl_divergence", help="CTI metric")
    _opt(p, "handle_output_context_strategy", default="pre", choices=("pre", "auto"),
         help="'pre': an output {context} must be given; 'auto': split the generation")
    _opt(p, "contextless_output_next_tokens", nargs="*", default=[],
         help="one foil per selected token")
    _opt(p, "special_tokens_to_keep", nargs="*", default=[], help="e.g. <brk>")
    _opt(p, "decoder_input_output_separator", default=" ")
    _opt(p, "context_sensitivity_std_threshold", type=float, default=1.0)
    _opt(p, "context_sensitivity_topk", type=int, default=None)
    _opt(p, "attribution_std_threshold", type=float, default=1.0)
    _opt(p, "attribution_topk", type=int, default=None)
    _opt(p, "save_path", "-o", default=None, help="write the JSON result here")
    _opt(p, "viz_path", default=None, help="write the HTML view here")
    _opt(p, "show_viz", action=argparse.BooleanOptionalAction, default=True,
         help="print the terminal view (default on)")
    _opt(p, "add_output_info", action=argparse.BooleanOptionalAction, default=True,
         help="keep the options in the saved result (default on)")
    _opt(p, "no_color", action="store_true", help="plain text even on a terminal")
    _opt(p, "input_file", default=None, help="dataset mode: .jsonl with input_current_text "
         "(and optional input_context_text, output_current_text, output_context_text)")
    _opt(p, "output", default=None, help="dataset mode: output .jsonl (appended; resumable)")
    _opt(p, "batch_size", type=int, default=8, help="dataset mode: rows per call")
    _opt(p, "no_progress", action="store_true", help="dataset mode: no progress bar")
    return p


_SHARED = ("input_template", "output_template", "contextless_input_current_text",
           "contextless_output_current_text", "attribution_method", "attributed_fn",
           "attribution_aggregators", "normalize_attributions", "rescale_attributions",
           "generation_kwargs", "attribution_kwargs", "context_sensitivity_metric",
           "handle_output_context_strategy", "contextless_output_next_tokens",
           "special_tokens_to_keep", "decoder_input_output_separator",
           "context_sensitivity_std_threshold", "context_sensitivity_topk",
           "attribution_std_threshold", "attribution_topk")


def run(args) -> int:
    """Run a parsed ``attribute-context`` command; returns the exit status."""
    import jaxattr
    from ..encoding import InputError
    model = jaxattr.load_model(args.model_name_or_path or "toy-context")
    shared = {k: getattr(args, k) for k in _SHARED}
    if args.input_file is not None:
        if args.output is None:
            raise InputError("--input_file needs --output (the .jsonl to write).")
        from .dataset import attribute_context_dataset
        counts = attribute_context_dataset(model, args.input_file, args.output,
                                           batch_size=args.batch_size,
                                           show_progress=not args.no_progress, **shared)
        print(f"{counts['done']} rows done, {counts['errors']} rows skipped with errors, "
              f"{counts['skipped']} already done, {counts['total']} in the input -> "
              f"{args.output}", file=sys.stderr)
        return 0
    if args.input_current_text is None:
        raise InputError("--input_current_text is required (or --input_file for a dataset).")
    out = jaxattr.attribute_context(
        model, args.input_current_text, input_context_text=args.input_context_text,
        output_context_text=args.output_context_text,
        output_current_text=args.output_current_text, add_output_info=args.add_output_info,
        save_path=args.save_path, viz_path=args.viz_path, **shared)
    if args.show_viz:
        out.show(color=False if args.no_color else None)
    for path in (args.save_path, args.viz_path):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return 0
