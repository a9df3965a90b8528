"""DeepLIFT (Shrikumar et al., 2017): the rescale rule (default) and a Captum-compatible mode."""
from __future__ import annotations

from typing import Any, Callable

import jax

from . import deeplift_rules
from ._common import resolve_baseline
from ._vjp import per_output_grads
from .integrated_gradients import convergence_delta
from .needs import declare

__all__ = ["deeplift", "DEEPLIFT_MODES", "DEEPLIFT_RULES", "RESCALE_NEEDS_NATIVE"]

#: Modes of :func:`deeplift`. ``"rescale"``: DeepLIFT's multipliers through the rule-aware
#: operations of :mod:`jaxattr.methods.deeplift_rules`. ``"captum"``: Captum's DeepLift on a
#: network none of whose nonlinearities are modules in Captum's list (ReLU, ELU, LeakyReLU,
#: Sigmoid, Tanh, Softplus, MaxPool, Softmax) — GPT-2's GELU, Marian's and Llama's SiLU and
#: every functional softmax get plain gradients there — i.e. ``(x − x') ⊙ ∂s/∂x``.
DEEPLIFT_MODES = ("rescale", "captum")
DEEPLIFT_RULES = DEEPLIFT_MODES  # the name before the rescale rule existed

RESCALE_NEEDS_NATIVE = (
    "method='deeplift' (rescale rule, the default) needs a forward whose nonlinearities are "
    "jaxattr's own (the native model family: jaxattr.load_model(path) on a llama-like "
    "checkpoint); this model runs through transformers' Flax classes, whose GELU/SiLU/softmax "
    "cannot carry DeepLIFT's multipliers. Use method='deeplift' with mode='captum' "
    "((x − baseline) ⊙ gradient, what Inseq computes) or a native model.")


@declare(baseline=True, completeness=True)
def deeplift(
    score_fn: Callable[..., Any],
    x: Any,
    baseline: Any = None,
    *,
    multiply_by_inputs: bool = True,
    mode: str = "rescale",
    return_convergence_delta: bool = False,
    has_aux: bool = False,
    output_batch_size: int | None = None,
):
    """DeepLIFT attributions ``(x − x') ⊙ m`` for every output of ``score_fn``.

    ``mode="rescale"`` (default): the multipliers ``m`` are DeepLIFT's. ``score_fn`` runs on
    the input and the baseline together (:func:`jaxattr.methods.deeplift_rules.paired`: one
    ``vmap`` over the pair), and every rule-aware operation in it
    (:mod:`jaxattr.methods.deeplift_rules`: elementwise nonlinearities with the rescale rule
    ``Δy/Δx``, products of two activations with the midpoint/Shapley rule, softmax and
    log-softmax) back-propagates its multiplier instead of its derivative. When all of a
    function's nonlinearities are such operations and the rest is affine — the native model
    family's forward and the ``probability`` / ``logprob`` / ``logit`` targets — the
    attributions satisfy **summation-to-delta**: ``Σ attributions[t] = s(x)[t] − s(x')[t]``.
    Operations that are not rule-aware (``jax.nn.gelu`` written directly, transformers' Flax
    modules) back-propagate their gradient at the input, as in Captum; through
    ``model.attribute`` that case is refused (:data:`RESCALE_NEEDS_NATIVE`).

    ``mode="captum"``: ``(x − x') ⊙ ∂s/∂x``, what Captum's DeepLift (hence Inseq 0.7.1)
    computes on transformers, whose GELU/SiLU/softmax are not modules in Captum's list; equal
    to Inseq on the same weights. It does not satisfy summation-to-delta.

    Args:
      score_fn: ``x -> scores[..., T]`` (``(scores, aux)`` when ``has_aux``).
      x: array or pytree of arrays.
      baseline: like ``x`` (or one array/scalar broadcast to every leaf); ``None``: zeros.
        Through ``model.attribute`` the default is integrated gradients' (UNK/PAD embeddings,
        special tokens kept), as in Inseq.
      multiply_by_inputs: return ``(x − x') ⊙ m`` (Captum's default, "global" attribution);
        ``False`` returns the multipliers ``m`` ("local").
      mode: ``"rescale"`` or ``"captum"`` (:data:`DEEPLIFT_MODES`).
      return_convergence_delta: also return ``δ[T] = Σ attributions[t] − Σ_{leading}
        (s(x)[..., t] − s(x')[..., t])`` (float rounding for the rescale rule on a rule-aware
        forward; only with ``multiply_by_inputs``).
      has_aux: ``score_fn`` returns ``(scores, aux)``; ``aux`` at ``x`` is returned last.
      output_batch_size: bound on simultaneous backward passes (memory).

    Returns:
      ``attributions`` (``[T, *leaf.shape]`` per leaf of ``x``), then ``delta`` if
      requested, then ``aux`` if ``has_aux`` — as a tuple when more than one is returned.
    """
    if mode not in DEEPLIFT_MODES:
        raise ValueError(f"mode={mode!r} is not a DeepLIFT mode; choose one of "
                         f"{DEEPLIFT_MODES} ('rescale': DeepLIFT's multipliers, summation-to-"
                         "delta; 'captum': (x − baseline) ⊙ gradient, what Inseq computes).")
    if return_convergence_delta and not multiply_by_inputs:
        raise ValueError("return_convergence_delta needs multiply_by_inputs=True (the "
                         "multipliers alone do not add up to the change of the score).")
    base = resolve_baseline(x, baseline)

    if mode == "captum":
        scores_x, grads, aux = per_output_grads(score_fn, x, has_aux=has_aux,
                                                output_batch_size=output_batch_size)
        scores_b = None
        if return_convergence_delta:
            out_b = score_fn(base)
            scores_b = out_b[0] if has_aux else out_b
    else:
        def pair_fn(xd):
            out = deeplift_rules.paired(score_fn, xd, base)
            scores, aux = out if has_aux else (out, None)
            first = jax.tree_util.tree_map(lambda v: v[0], aux)
            return scores[0], (first, scores[1])

        scores_x, grads, (aux, scores_b) = per_output_grads(
            pair_fn, x, has_aux=True, output_batch_size=output_batch_size)
    attr = grads
    if multiply_by_inputs:
        attr = jax.tree_util.tree_map(lambda g, xi, bi: g * (xi - bi)[None], grads, x, base)
    outputs = [attr]
    if return_convergence_delta:
        outputs.append(convergence_delta(attr, scores_x, scores_b))
    if has_aux:
        outputs.append(aux)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
