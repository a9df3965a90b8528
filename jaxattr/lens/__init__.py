"""Logit lens and tuned lens: what each layer already predicts.

The logit lens decodes the residual stream after every block with the model's own final norm
and head; the tuned lens (Belrose et al., 2023) first applies a learned affine translator per
layer (:class:`TunedLens`), trained with :func:`train_tuned_lens` (or :func:`fit` on any
:class:`LensSource`).
"""
from .api import evaluate_tuned_lens, logit_lens, train_tuned_lens
from .checkpoint import lens_metadata, load_lens, load_state, save_lens, save_state
from .core import Readout, kl_rows, lens_log_probs, row_log_probs, row_statistics
from .train import (LensSource, TrainState, evaluate_lens, fit, lens_loss, make_train_step,
                    tuned_lens_optimizer)
from .readout import ReadoutError, model_readout, model_source
from .trajectory import LensTrajectory
from .tuned import TunedLens
from .steps import STEP_SCORE_NAMES, STEP_SCORES, add_step_scores, lens_step_scores

__all__ = ["add_step_scores", "lens_step_scores", "STEP_SCORES", "STEP_SCORE_NAMES", "logit_lens", "train_tuned_lens", "evaluate_tuned_lens", "LensTrajectory",
           "model_readout", "model_source", "ReadoutError", "TunedLens", "Readout", "LensSource", "TrainState", "row_log_probs",
           "lens_log_probs", "kl_rows", "row_statistics", "lens_loss", "make_train_step", "fit",
           "evaluate_lens", "tuned_lens_optimizer", "save_lens", "load_lens", "lens_metadata",
           "save_state", "load_state"]
