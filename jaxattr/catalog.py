"""What can be asked for by name: attribution methods and targets (Inseq's
``list_feature_attribution_methods`` / ``list_step_functions``)."""
from __future__ import annotations

from .methods import METHODS, NOISE_TUNNEL_TYPES
from .targets import TARGETS

__all__ = ["list_methods", "list_targets", "LAYER_METHODS", "MODEL_METHODS"]

# Model-level names: layer methods are the gradient methods applied to a site's activation.
LAYER_METHODS = {"layer_integrated_gradients": "integrated_gradients",
                 "layer_gradient_x_activation": "input_x_gradient",
                 "layer_saliency": "saliency",
                 "layer_deeplift": "deeplift"}
# Methods that need a model (not pure functions of a score function).
MODEL_METHODS = tuple(sorted(LAYER_METHODS)) + ("attention", "attention_rollout", "attention_flow",
                                                "value_zeroing", "alti")


def list_methods() -> list[str]:
    """Every method name ``model.attribute(method=...)`` accepts: the functional methods
    (``saliency`` …, and the noise tunnels ``smoothgrad`` / ``smoothgrad_sq`` / ``vargrad``
    around saliency), the layer methods, ``attention``, ``attention_rollout``,
    ``attention_flow``, ``value_zeroing`` and ``alti``; sorted."""
    return sorted(set(METHODS) | set(NOISE_TUNNEL_TYPES) | set(MODEL_METHODS))


def list_targets() -> list[str]:
    """Every target name usable as ``attributed_fn`` or in ``step_scores`` (including ones
    added with :func:`jaxattr.register_target`); sorted."""
    return sorted(TARGETS)
