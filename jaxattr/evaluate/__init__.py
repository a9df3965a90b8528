"""Evaluating attributions: faithfulness per generated token and plausibility against ground truth.

    from jaxattr import evaluate
    out = model.attribute(prompts, texts, method="saliency")
    res = evaluate.faithfulness(model, out)            # comprehensiveness, sufficiency (AOPC)
    print(res.to_table()); res.per_sequence(); res.save("faith.npz")
"""
from .faithfulness import evaluate_items, faithfulness
from .metrics import aopc_mask, soft_keep, step_metrics
from .plausibility import (PLAUSIBILITY_METRICS, PlausibilityResult, plausibility,
                           step_plausibility)
from .perturb import ModelScorer, PerturbedChunk, score_rows
from .report import (RANDOM, EvalDataset, EvaluationReport, bootstrap_ci, evaluate_methods,
                     file_dataset, random_attribution, zoo_dataset)
from .rationale import DIRECTIONS, METRICS, FaithfulnessSpec, StepItem, step_items
from .result import FaithfulnessResult, load_faithfulness

__all__ = ["faithfulness", "evaluate_items", "FaithfulnessResult", "load_faithfulness",
           "FaithfulnessSpec", "StepItem", "step_items", "ModelScorer", "PerturbedChunk",
           "score_rows", "step_metrics", "plausibility", "PlausibilityResult",
           "PLAUSIBILITY_METRICS", "step_plausibility",
           "evaluate_methods", "EvaluationReport", "EvalDataset", "zoo_dataset", "file_dataset",
           "random_attribution", "bootstrap_ci", "RANDOM", "aopc_mask", "soft_keep", "METRICS", "DIRECTIONS"]
