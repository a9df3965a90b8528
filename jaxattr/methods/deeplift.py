"""DeepLIFT in its Captum-compatible mode (what Inseq 0.7.1 computes on transformers)."""
from __future__ import annotations

from typing import Any, Callable

import jax

from ._common import resolve_baseline
from ._vjp import per_output_grads
from .needs import declare

__all__ = ["deeplift", "DEEPLIFT_RULES"]

#: Rules :func:`deeplift` implements. ``"captum"`` is Captum's DeepLift on a network none of
#: whose nonlinearities are modules in Captum's list (ReLU, ELU, LeakyReLU, Sigmoid, Tanh,
#: Softplus, MaxPool, Softmax): GPT-2's GELU, Marian's and Llama's SiLU, and every functional
#: softmax are back-propagated with plain gradients there.
DEEPLIFT_RULES = ("captum",)


@declare(baseline=True)
def deeplift(
    score_fn: Callable[..., Any],
    x: Any,
    baseline: Any = None,
    *,
    multiply_by_inputs: bool = True,
    rule: str = "captum",
    has_aux: bool = False,
    output_batch_size: int | None = None,
):
    """DeepLIFT (Shrikumar et al., 2017), Captum-compatible mode: ``(x − x') ⊙ ∂s/∂x``.

    **This is not the rescale rule.** DeepLIFT's multipliers replace each nonlinearity's
    derivative by ``Δy/Δx`` between input and baseline; Captum (and so Inseq) applies that
    rule only at nonlinearity *modules* in its list and uses plain gradients elsewhere, which
    on GPT-2 (GELU), Marian (SiLU) and the other transformers means the multipliers are the
    gradient at ``x``. This mode reproduces those numbers (equal to Inseq 0.7.1 on the same
    weights); it does not satisfy DeepLIFT's summation-to-delta property. The rescale rule
    itself is not implemented yet: ``rule`` accepts only ``"captum"`` so that a later default
    change is explicit.

    Args:
      score_fn: ``x -> scores[..., T]`` (``(scores, aux)`` when ``has_aux``).
      x: array or pytree of arrays.
      baseline: like ``x`` (or one array/scalar broadcast to every leaf); ``None``: zeros.
        Through ``model.attribute`` the default is integrated gradients' (UNK/PAD embeddings,
        special tokens kept), as in Inseq.
      multiply_by_inputs: return ``(x − x') ⊙ m`` (Captum's default, "global" attribution);
        ``False`` returns the multipliers ``m = ∂s/∂x`` ("local").
      rule: ``"captum"`` (the only one: see above).
      has_aux: ``score_fn`` returns ``(scores, aux)``; then ``(attributions, aux)`` is returned.
      output_batch_size: bound on simultaneous backward passes (memory).

    Returns:
      ``[T, *leaf.shape]`` per leaf of ``x`` (and ``aux`` at ``x`` when ``has_aux``).
    """
    if rule not in DEEPLIFT_RULES:
        raise ValueError(f"rule={rule!r} is not implemented; choose one of {DEEPLIFT_RULES} "
                         "(Captum-compatible: (x − baseline) ⊙ ∂s/∂x, what Inseq computes on "
                         "transformers). The rescale rule is not available yet.")
    _, grads, aux = per_output_grads(score_fn, x, has_aux=has_aux,
                                     output_batch_size=output_batch_size)
    if multiply_by_inputs:
        base = resolve_baseline(x, baseline)
        grads = jax.tree_util.tree_map(lambda g, xi, bi: g * (xi - bi)[None], grads, x, base)
    return (grads, aux) if has_aux else grads
