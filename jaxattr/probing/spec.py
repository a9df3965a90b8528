"""The frozen options of a probing run: how probes train and how the data are split."""
from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = ["TrainSpec", "MDL_FRACTIONS"]

#: Block boundaries of the online code (Voita & Titov, 2020), as fractions of the training
#: split: 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25, 50 and 100 percent.
MDL_FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """How every probe of a run is trained (AdamW with early stopping).

    Attributes:
      optimizer: ``"adamw"`` (optax AdamW, the default) or ``"lbfgs"`` (optax L-BFGS with
        a zoom line search; full batch only). With ``early_stopping=False`` L-BFGS runs to the
        optimum of the objective (largest absolute gradient entry ``<= tol``): with ``l2 > 0``
        the unique L2-penalised optimum that scikit-learn's ``LogisticRegression`` fits, in
        tens of full-batch passes where AdamW needs hundreds to thousands.
      learning_rate: AdamW step size.
      weight_decay: AdamW decoupled weight decay.
      hidden: hidden-layer widths of the ``"mlp"`` probe (ReLU between layers); the
        ``"linear"`` probe ignores it.
      max_steps: most optimiser steps per probe.
      eval_every: optimiser steps between two validation evaluations.
      patience: validation evaluations without improvement before a probe stops; the
        parameters with the lowest validation loss are kept.
      early_stopping: monitor the validation loss and keep the best parameters (default);
        ``False``: monitor the training objective and train until it stops improving.
      l2: an L2 penalty ``l2 / 2 * |W|^2`` on the weights (not the biases) inside the
        objective. scikit-learn's ``LogisticRegression(C=c)`` on ``n_train`` rows is
        ``l2 = 1 / (c * n_train)`` with three or more classes, and ``l2 = 2 / (c * n_train)``
        with two (scikit-learn fits one weight vector ``d``; the probe's two softmax columns
        ``±d / 2`` carry half its squared norm).
      tol: L-BFGS without early stopping stops when the largest absolute entry of the
        objective's gradient is at most ``tol`` (scikit-learn's ``tol=1e-4`` criterion; the
        default is ten times tighter).
      min_delta: the monitored loss must fall by more than this to count as an improvement.
      val_fraction / test_fraction: shares of the examples held out for early stopping and for
        the reported scores (the rest trains).
      split_seed: seed of the random split and of the control task's labels.
      mdl_fractions: block boundaries of the online code (``mdl=True``).
      batch_size: rows per optimiser step, drawn uniformly (with replacement) from the
        probe's training rows; ``None``: every step sees all of them (full batch). Minibatches
        make a step's cost independent of ``N`` (much faster on large sets).
      whiten: after standardising, PCA-whiten each layer's features with the training rows'
        covariance (:func:`jaxattr.probing.train.standardize`): the same linear functions,
        much faster convergence on anisotropic states.
      layer_batch: train this many layers at a time (``lax.map`` over groups of layers inside
        the one compiled program) to bound memory; ``None``: all layers at once.
    """
    optimizer: str = "adamw"
    learning_rate: float = 1e-2
    weight_decay: float = 1e-2
    hidden: tuple = (256,)
    max_steps: int = 1000
    eval_every: int = 10
    patience: int = 5
    min_delta: float = 1e-4
    early_stopping: bool = True
    l2: float = 0.0
    tol: float = 1e-5
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    mdl_fractions: tuple = MDL_FRACTIONS
    batch_size: Optional[int] = None
    whiten: bool = False
    layer_batch: Optional[int] = None

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"TrainSpec.{name}={getattr(self, name)!r}: {why}")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if self.optimizer not in ("adamw", "lbfgs"):
            bad("optimizer", "choose 'adamw' or 'lbfgs'")
        if self.optimizer == "lbfgs" and self.batch_size is not None:
            bad("optimizer", "L-BFGS needs the full batch; drop batch_size")
        if not self.tol > 0:
            bad("tol", "must be > 0")
        if not self.l2 >= 0:
            bad("l2", "must be >= 0")
        if not self.weight_decay >= 0:
            bad("weight_decay", "must be >= 0")
        for name in ("max_steps", "eval_every", "patience"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be a positive integer")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"TrainSpec: val_fraction={self.val_fraction} and test_fraction="
                             f"{self.test_fraction} must be in (0, 1) and sum to less than 1.")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h < 1 for h in self.hidden):
            bad("hidden", "widths must be positive")
        fr = tuple(float(f) for f in self.mdl_fractions)
        if len(fr) < 2 or fr[-1] != 1.0 or any(b <= a for a, b in zip(fr, fr[1:])) or fr[0] <= 0:
            bad("mdl_fractions", "needs increasing fractions in (0, 1] ending at 1.0")
        object.__setattr__(self, "mdl_fractions", fr)
        if self.batch_size is not None and int(self.batch_size) < 1:
            bad("batch_size", "must be None or a positive integer")
        if self.layer_batch is not None and int(self.layer_batch) < 1:
            bad("layer_batch", "must be None or a positive integer")
