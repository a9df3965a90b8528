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

from . import xla_safety
xla_safety.install_env_flag()  # before anything starts a JAX backend (see xla_safety)
from . import _compat, aggregate, methods, targets, zoo
_compat.silence_flax_deprecation()
from ._cache import enable_compilation_cache
from .compile_effort import get_compile_effort, set_compile_effort
from .adapters import ModelAdapter, make_adapter
from .encoding import InputError
from .loading import UnsupportedModelError, supported_architectures
from .methods import input_x_gradient, integrated_gradients, per_output_grads, saliency
from .methods import attention_flow, attention_rollout, deeplift, discretized_integrated_gradients, lime, reagent
from .methods import (gradient_shap, occlusion, sequential_integrated_gradients, smoothgrad,
                      smoothgrad_sq, vargrad)
from .catalog import list_methods, list_targets
from .model import AttributionModel
from .model_loading import load_model
from .spec import PreparedRun, RunSpec
from .pipeline import ModelBatch, attribute_batch
from .results import AttributionOutput, BatchAttribution, SequenceAttribution
from . import io
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
    "smoothgrad", "smoothgrad_sq", "vargrad", "deeplift", "attention_rollout", "attention_flow", "lime",
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

# Result objects dispatch their renderings by name (jaxattr.views); the renderers are wired
# here, lazily, so that neither the results nor `import jaxattr` import jaxattr.render.
from . import views as _views  # noqa: E402

for _name, _target in (
        ("to_text", "jaxattr.render:to_text"), ("to_html", "jaxattr.render:to_html"),
        ("show", "jaxattr.render:show"), ("to_figure", "jaxattr.render:to_figure"),
        ("lens_text", "jaxattr.render.lens:lens_text"),
        ("lens_html", "jaxattr.render.lens:lens_html"),
        ("lens_figure", "jaxattr.render.lens:lens_figure"),
        ("lens_show", "jaxattr.render:lens_show"),
        ("probe_table", "jaxattr.render.probing:probe_table"),
        ("probe_figure", "jaxattr.render.probing:probe_figure"),
        ("context_to_text", "jaxattr.render.context:context_to_text"),
        ("context_to_html", "jaxattr.render.context:context_to_html"),
        ("context_show", "jaxattr.render:context_show"),
        ("grid_text", "jaxattr.render.grid:grid_text"),
        ("grid_html", "jaxattr.render.grid:grid_html"),
        ("grid_figure", "jaxattr.render.grid:grid_figure")):
    _views.provide_lazy(_name, _target)
del _name, _target
