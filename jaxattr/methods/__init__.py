"""Attribution methods: pure functions over score functions ``x -> scores[..., T]``.

Nothing here imports transformers or flax: every method works on any JAX function.
"""
from ._vjp import per_output_grads
from .attention_flow import attention_flow
from .attention_rollout import attention_rollout, encoder_decoder_rollout
from . import deeplift_rules
from .deeplift import DEEPLIFT_MODES, DEEPLIFT_RULES, deeplift
from .discretized_integrated_gradients import dig_paths, discretized_integrated_gradients
from .gradient import input_x_gradient, saliency
from .gradient_shap import gradient_shap
from .integrated_gradients import integrated_gradients
from .lime import lime
from .needs import MethodNeeds, declare, needs_of
from .reagent import reagent
from .noise_tunnel import NOISE_TUNNEL_TYPES, noise_tunnel, smoothgrad, smoothgrad_sq, vargrad
from .occlusion import occlusion
from .quadrature import QUADRATURE_RULES, quadrature
from .separable import is_separable, separable, step_separable
from .sequential_integrated_gradients import sequential_integrated_gradients

__all__ = ["per_output_grads", "step_separable", "separable", "is_separable", "saliency",
           "input_x_gradient", "integrated_gradients",
           "gradient_shap", "sequential_integrated_gradients", "occlusion",
           "smoothgrad", "smoothgrad_sq", "vargrad", "noise_tunnel", "NOISE_TUNNEL_TYPES",
           "quadrature", "QUADRATURE_RULES", "METHODS", "get_method", "attention_rollout",
           "encoder_decoder_rollout", "attention_flow",
           "deeplift", "DEEPLIFT_MODES", "DEEPLIFT_RULES", "deeplift_rules", "lime",
           "MethodNeeds", "declare", "needs_of", "discretized_integrated_gradients",
           "dig_paths", "reagent"]

METHODS = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": integrated_gradients,
    "gradient_shap": gradient_shap,
    "sequential_integrated_gradients": sequential_integrated_gradients,
    "occlusion": occlusion,
    # the noise tunnels by name (Captum's NoiseTunnel around saliency; Inseq's spelling)
    "smoothgrad": smoothgrad(saliency),
    "smoothgrad_sq": smoothgrad_sq(saliency),
    "vargrad": vargrad(saliency),
    "deeplift": deeplift,
    "lime": lime,
    "discretized_integrated_gradients": discretized_integrated_gradients,
    "reagent": reagent,
}


def get_method(method):
    """Resolve a method name (or pass a callable through)."""
    if callable(method):
        return method
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(
            f"Unknown attribution method {method!r}. Available: {sorted(METHODS)}; with a "
            "model also layer_integrated_gradients, layer_gradient_x_activation, "
            "layer_saliency, attention, attention_rollout, attention_flow and value_zeroing "
            "(jaxattr.list_methods()); or pass a function "
            "`method(score_fn, x, *, has_aux, ...)`.") from None
