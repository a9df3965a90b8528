"""Command line: ``jaxattr attribute`` and ``jaxattr attribute-dataset``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser", "DEFAULT_MODEL"]

DEFAULT_MODEL = "toy-recall"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local directory or bundled model name (default: {DEFAULT_MODEL})")
    p.add_argument("--method", default="saliency",
                   help="attribution method (saliency, input_x_gradient, integrated_gradients, "
                        "attention, ...)")
    p.add_argument("--attributed-fn", default="probability",
                   help="target to attribute (probability, logprob, contrast_prob_diff, ...)")
    p.add_argument("--step-scores", nargs="*", default=["probability"], metavar="S",
                   help="targets recorded per generated token")
    p.add_argument("--n-steps", type=int, default=None, help="integration steps (IG methods)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate when no output is given")
    p.add_argument("--attribute-target", action="store_true",
                   help="encoder-decoder: also attribute the target prefix")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxattr", description="Feature attribution for sequence-generation models (JAX).")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("attribute", help="attribute one input and print a text heatmap",
                       description="Attribute one input; prints a heatmap table.")
    a.add_argument("--input", required=True, help="input text (decoder-only: the prompt)")
    a.add_argument("--generated", default=None,
                   help="forced output (decoder-only: the full text starting with the prompt); "
                        "default: generate greedily")
    a.add_argument("--contrast-target", default=None,
                   help="alternative output for contrastive targets")
    a.add_argument("--json", default=None, metavar="PATH", help="also save the result as JSON")
    a.add_argument("--html", default=None, metavar="PATH", help="also write an HTML report")
    a.add_argument("--no-color", action="store_true", help="plain text even on a terminal")
    _add_common(a)

    d = sub.add_parser("attribute-dataset", help="attribute every row of a file (resumable)",
                       description="Attribute a .jsonl/.csv/.txt file into a JSON-lines file, "
                                   "batched; rerun the same command to resume.")
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
    return kw


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
            if args.contrast_target is not None:
                kwargs["contrast_targets"] = args.contrast_target
            out = model.attribute(args.input, args.generated, show_progress=False, **kwargs)
            from .render import to_text
            sys.stdout.write(to_text(out, color=False if args.no_color else None))
            if args.json:
                out.save(args.json)
                print(f"saved {args.json}")
            if args.html:
                from .render import save_html
                save_html(out, args.html)
                print(f"wrote {args.html}")
            return 0
        from .dataset import attribute_dataset
        counts = attribute_dataset(
            model, args.input_file, args.output, input_field=args.input_field,
            generated_field=args.generated_field, batch_size=args.batch_size,
            show_progress=not args.no_progress, max_batches=args.max_batches, **kwargs)
        print(f"{counts['done']} rows attributed, {counts['errors']} rows skipped with errors, "
              f"{counts['skipped']} already done, {counts['total']} in the input -> "
              f"{args.output}", file=sys.stderr)
        return 0
    except (ValueError, TypeError, OSError) as e:
        print(f"jaxattr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
