"""Command line: ``jaxattr attribute`` and ``jaxattr attribute-dataset``."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Optional, Sequence

from .compile_effort import compile_effort

__all__ = ["main", "build_parser", "DEFAULT_MODEL", "cli_message"]

DEFAULT_MODEL = "toy-recall"

# Python argument names in library messages -> the option that sets them here.
OPTION_OF = {
    "contrast_targets_alignments": "--contrast-alignments",
    "contrast_targets": "--contrast-target", "contrast_sources": "--contrast-source",
    "generated_texts": "--generated", "input_texts": "--input",
    "attributed_fn": "--attributed-fn", "step_scores": "--step-scores", "n_steps": "--n-steps",
    "generation_args": "--max-new-tokens", "max_new_tokens": "--max-new-tokens",
    "batch_size": "--batch-size", "attribute_target": "--attribute-target",
    "baseline": "--baseline", "layer": "--layer", "aggregator": "--aggregate",
}
_PY_NAME = re.compile(r"`?\b(" + "|".join(OPTION_OF) + r")\b(=\[\.\.\.\]|=\{[^}]*\})?`?")


def cli_message(message: str) -> str:
    """A library error message with Python argument names (``contrast_targets=[...]``)
    replaced by the command-line options that set them (``--contrast-target``)."""
    return _PY_NAME.sub(lambda m: OPTION_OF[m.group(1)], message)


class _Formatter(argparse.HelpFormatter):
    """Shows the default of every option that has one in ``--help``."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub id, local directory or bundled model name (toy-recall, toy-mt)")
    p.add_argument("--method", default="saliency",
                   help="attribution method: saliency, input_x_gradient, integrated_gradients, "
                        "gradient_shap, sequential_integrated_gradients, occlusion, smoothgrad, "
                        "smoothgrad_sq, vargrad, layer_integrated_gradients, "
                        "layer_gradient_x_activation, layer_saliency, attention "
                        "(jaxattr.list_methods())")
    p.add_argument("--attributed-fn", default="probability",
                   help="target to attribute: probability, logprob, logit, contrast_prob_diff, "
                        "... (jaxattr.list_targets())")
    p.add_argument("--step-scores", nargs="*", default=["probability"], metavar="S",
                   help="targets recorded per generated token")
    p.add_argument("--n-steps", type=int, default=None, help="integration steps (IG methods; default: the method's own, 50 for IG)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate when no output is given (default: 20)")
    p.add_argument("--attribute-target", action="store_true",
                   help="encoder-decoder: also attribute the target prefix")
    p.add_argument("--layer", default=None,
                   help="layer methods: the site whose activation is attributed, e.g. "
                        "transformer/h/1/mlp (default: the token embedding)")
    p.add_argument("--baseline", default="unk", choices=["unk", "pad", "zeros"],
                   help="baseline of integrated gradients / gradient SHAP / occlusion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxattr", description="Feature attribution for sequence-generation models (JAX).")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("attribute", help="attribute one input and print a text heatmap",
                       description="Attribute one input; prints a heatmap table.",
                       formatter_class=_Formatter)
    a.add_argument("--input", required=True, help="input text (decoder-only: the prompt)")
    a.add_argument("--generated", default=None,
                   help="forced output (decoder-only: the full text starting with the prompt); "
                        "default: generate greedily")
    a.add_argument("--contrast-target", default=None,
                   help="alternative output for contrastive targets (decoder-only: the full "
                        "text, a prompt plus the alternative continuation)")
    a.add_argument("--contrast-source", default=None,
                   help="encoder-decoder: alternative source for the contrastive forward")
    a.add_argument("--contrast-alignments", default=None, metavar="PAIRS",
                   help="token alignment of output and contrast, e.g. '0-0,1-1,2-3' "
                        "(target index - contrast index); default: by position")
    a.add_argument("--aggregate", default="auto",
                   choices=["auto", "vnorm", "sum", "mean", "absmax"],
                   help="reduction over the hidden axis for the printed and HTML views; auto: "
                        "the signed sum for integrated gradients, gradient SHAP, occlusion and "
                        "contrastive targets, the mean over layers and heads for attention, the "
                        "L2 norm (vnorm) otherwise")
    a.add_argument("--batch-size", type=int, default=None,
                   help="sequences per compiled call (default: all at once)")
    a.add_argument("--json", default=None, metavar="PATH", help="also save the result as JSON")
    a.add_argument("--html", default=None, metavar="PATH", help="also write an HTML report")
    a.add_argument("--no-color", action="store_true", help="plain text even on a terminal")
    a.add_argument("--compile-effort", default="auto", choices=["auto", "full", "fast"],
                   help="XLA optimisation of the compiled programs: auto compiles models under "
                        "20M parameters on the CPU with backend optimisation off (half the "
                        "compile time of a cold call, a slower run); full always optimises "
                        "(jaxattr.set_compile_effort)")
    _add_common(a)

    d = sub.add_parser("attribute-dataset", help="attribute every row of a file (resumable)",
                       description="Attribute a .jsonl/.csv/.txt file into a JSON-lines file, "
                                   "batched; rerun the same command to resume.",
                       formatter_class=_Formatter)
    d.add_argument("--input-file", required=True, help=".jsonl, .csv or .txt (one input a line)")
    d.add_argument("--input-field", default=None, help="field holding the input text")
    d.add_argument("--generated-field", default=None, help="field holding the forced output")
    d.add_argument("--output", required=True, help="output .jsonl (appended; resumable)")
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--max-batches", type=int, default=None, help=argparse.SUPPRESS)
    _add_common(d)
    from .evaluate.cli import add_parser as _add_evaluate
    _add_evaluate(sub)
    from .context.cli import add_parser as _add_context
    _add_context(sub)
    return parser


def _attribute_kwargs(args) -> dict:
    kw = dict(method=args.method, attributed_fn=args.attributed_fn,
              step_scores=tuple(args.step_scores or ()))
    if args.n_steps is not None:
        kw["n_steps"] = args.n_steps
    if args.max_new_tokens is not None:
        kw["generation_args"] = {"max_new_tokens": args.max_new_tokens}
    if args.attribute_target:
        kw["attribute_target"] = True
    if args.layer is not None:
        kw["layer"] = args.layer
    if args.baseline != "unk":
        kw["baseline"] = args.baseline
    return kw


def _alignments(text: str) -> list:
    """``'0-0,1-2'`` -> ``[(0, 0), (1, 2)]``."""
    try:
        pairs = [tuple(int(v) for v in pair.split("-")) for pair in text.split(",") if pair]
    except ValueError:
        pairs = [()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"--contrast-alignments {text!r}: give comma-separated pairs "
                         "TARGET-CONTRAST of token indices, e.g. '0-0,1-1,2-3'.")
    return pairs


def _attribute_one(model, args, kwargs: dict) -> int:
    """``jaxattr attribute``: one input, a printed heatmap, optional JSON and HTML."""
    if args.contrast_target is not None:
        kwargs["contrast_targets"] = args.contrast_target
    if args.contrast_source is not None:
        kwargs["contrast_sources"] = args.contrast_source
    if args.contrast_alignments is not None:
        kwargs["contrast_targets_alignments"] = [_alignments(args.contrast_alignments)]
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    out = model.attribute(args.input, args.generated, show_progress=False, **kwargs)
    view = out.aggregate(None if args.aggregate == "auto" else args.aggregate)
    from .render import to_text
    sys.stdout.write(to_text(view, color=False if args.no_color else None))
    if args.json:
        out.save(args.json)
        print(f"saved {args.json}")
    if args.html:
        from .render import save_html
        save_html(view, args.html)
        print(f"wrote {args.html}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        from .evaluate.cli import run
        return run(args)
    import jaxattr
    jaxattr.enable_compilation_cache()  # the CLI's cold start: reuse compiled programs
    try:
        if args.command == "attribute-context":
            from .context.cli import run as _run_context
            return _run_context(args)
        model = jaxattr.load_model(args.model)
        kwargs = _attribute_kwargs(args)
        if args.command == "attribute":
            with compile_effort(args.compile_effort):
                return _attribute_one(model, args, kwargs)
        from .dataset import attribute_dataset
        counts = attribute_dataset(
            model, args.input_file, args.output, input_field=args.input_field,
            generated_field=args.generated_field, batch_size=args.batch_size,
            show_progress=not args.no_progress, max_batches=args.max_batches, **kwargs)
        print(f"{counts['done']} rows attributed, {counts['errors']} rows skipped with errors, "
              f"{counts['skipped']} already done, {counts['total']} in the input -> "
              f"{args.output}", file=sys.stderr)
        return 0
    except (ValueError, TypeError, OSError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"jaxattr: error: {cli_message(str(message))}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
