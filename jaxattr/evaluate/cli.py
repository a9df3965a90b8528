"""``jaxattr evaluate``: run attribution methods on a model and dataset and print one table of
faithfulness and plausibility per method, with bootstrap confidence intervals."""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def _csv(text: str) -> list:
    return [t.strip() for t in text.split(",") if t.strip()]


def _bins(text: str) -> tuple:
    vals = _csv(text)
    try:
        return tuple(int(v) for v in vals)
    except ValueError:
        return tuple(float(v) for v in vals)


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand on an ``argparse`` subparsers object."""
    e = sub.add_parser(
        "evaluate", help="compare attribution methods: faithfulness and plausibility table",
        description="Attribute a dataset with several methods and print faithfulness "
                    "(comprehensiveness, sufficiency, ...) and, with ground truth, "
                    "plausibility per method, with bootstrap confidence intervals and a "
                    "random attribution as the floor.")
    e.add_argument("--model", default="toy-recall",
                   help="hub id, local directory or bundled model (default: toy-recall)")
    e.add_argument("--dataset", default=None,
                   help="bundled task with ground truth: toy-recall or toy-mt "
                        "(default: the model's own when it is bundled)")
    e.add_argument("--input-file", default=None,
                   help=".jsonl dataset instead of --dataset (see --input-field ...)")
    e.add_argument("--input-field", default="input")
    e.add_argument("--generated-field", default=None)
    e.add_argument("--cue-field", default=None,
                   help="field with ground-truth cue rows (list, or {step: rows})")
    e.add_argument("--side", default=None, choices=("source", "target"),
                   help="the token side the cue rows index")
    e.add_argument("--n", type=int, default=200, help="examples (bundled task or file limit)")
    e.add_argument("--seed", type=int, default=123, help="held-out seed of the bundled task")
    e.add_argument("--methods", default="saliency,input_x_gradient,integrated_gradients,"
                                        "attention", help="comma-separated methods")
    e.add_argument("--ig-steps", type=int, default=64,
                   help="integration steps of integrated_gradients")
    e.add_argument("--metrics", default="comprehensiveness,sufficiency",
                   help="comma-separated faithfulness metrics")
    e.add_argument("--bins", default="0.1,0.2,0.5",
                   help="rationale sizes: fractions or token counts (comma-separated)")
    e.add_argument("--erase", default="mask", choices=("mask", "delete"))
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--n-boot", type=int, default=2000)
    e.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return e


def run(args) -> int:
    """Run the ``evaluate`` subcommand for parsed ``args``; returns the exit status."""
    import jaxattr
    from . import evaluate_methods, file_dataset, zoo_dataset
    try:
        model = jaxattr.load_model(args.model)
        if args.input_file:
            data = file_dataset(args.input_file, input_field=args.input_field,
                                generated_field=args.generated_field,
                                cue_field=args.cue_field, side=args.side, limit=args.n)
        else:
            name = args.dataset or (args.model if args.model in jaxattr.zoo.BUNDLED else None)
            if name is None:
                raise ValueError("give --dataset (toy-recall, toy-mt) or --input-file.")
            data = zoo_dataset(name, n=args.n, seed=args.seed)
        methods = _csv(args.methods)
        report = evaluate_methods(
            model, data, methods=methods,
            method_kwargs={"integrated_gradients": {"n_steps": args.ig_steps}},
            metrics=_csv(args.metrics), bins=_bins(args.bins), erase=args.erase,
            batch_size=args.batch_size, n_boot=args.n_boot)
        sys.stdout.write(report.to_table(markdown=args.markdown))
        return 0
    except (ValueError, TypeError, OSError, KeyError) as e:
        print(f"jaxattr: error: {e}", file=sys.stderr)
        return 2
