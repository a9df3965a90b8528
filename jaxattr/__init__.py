"""jaxattr: feature attribution for sequence-generation models, natively in JAX.

Functional core (any JAX function ``x -> scores[..., T]``)::

    attr = jaxattr.saliency(score_fn, x)                 # [T, *x.shape]
    attr = jaxattr.input_x_gradient(score_fn, x)
    attr = jaxattr.integrated_gradients(score_fn, x, baseline, n_steps=50)

Models::

    model = jaxattr.load_model("gpt2")
    out = model.attribute("The capital of France is", "The capital of France is Paris")
"""
__version__ = "0.1.0"

from . import _compat, aggregate, methods, targets, zoo
_compat.silence_flax_deprecation()
from ._cache import enable_compilation_cache
from .compile_effort import get_compile_effort, set_compile_effort
from .adapters import ModelAdapter, make_adapter
from .encoding import InputError
from .loading import UnsupportedModelError, supported_architectures
from .methods import input_x_gradient, integrated_gradients, per_output_grads, saliency
from .methods import attention_rollout, deeplift, discretized_integrated_gradients, lime, reagent
from .methods import (gradient_shap, occlusion, sequential_integrated_gradients, smoothgrad,
                      smoothgrad_sq, vargrad)
from .catalog import list_methods, list_targets
from .model import AttributionModel
from .model_loading import load_model
from .spec import PreparedRun, RunSpec
from .pipeline import ModelBatch, attribute_batch
from .results import AttributionOutput, BatchAttribution, SequenceAttribution
from . import io
from . import render  # fills jaxattr.views: results dispatch show/to_html/… by name
from . import evaluate
from . import context
from .context import attribute_context
from . import probing
from . import lens
from .lens import logit_lens
from . import interventions
from .interventions import activation_patching, causal_mediation, causal_trace
from .io import ResultFileError, load
from .targets import TargetBatch, get_target, register_target

__all__ = [
    "__version__",
    # functional core
    "saliency", "input_x_gradient", "integrated_gradients", "per_output_grads",
    "gradient_shap", "sequential_integrated_gradients", "occlusion",
    "smoothgrad", "smoothgrad_sq", "vargrad", "deeplift", "attention_rollout", "lime",
    "discretized_integrated_gradients", "reagent",
    # models
    "load_model", "AttributionModel", "list_methods", "list_targets", "enable_compilation_cache", "set_compile_effort", "get_compile_effort", "ModelAdapter", "make_adapter", "supported_architectures",
    "ModelBatch", "attribute_batch", "PreparedRun", "RunSpec",
    # targets
    "TargetBatch", "get_target", "register_target",
    # results
    "AttributionOutput", "BatchAttribution", "SequenceAttribution",
    "load", "ResultFileError",
    # context attribution (PECoRe)
    "attribute_context", "context",
    # errors
    "InputError", "UnsupportedModelError",
    # submodules
    "methods", "targets", "aggregate", "io", "zoo", "probing", "evaluate", "lens",
    # analyses
    "logit_lens", "interventions", "activation_patching", "causal_mediation", "causal_trace",
]
