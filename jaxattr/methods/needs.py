"""What a method needs from whoever calls it, declared by the method itself.

A caller such as the model pipeline reads ``needs_of(method)`` instead of a method's parameter
names::

    @declare(baseline=True, completeness=True)
    def integrated_gradients(score_fn, x, baseline=None, *, n_steps=50, ...): ...

    needs_of(integrated_gradients).baseline      # True: pass ``baseline=``
    needs_of(integrated_gradients).completeness  # True: ``return_convergence_delta`` holds
    needs_of(integrated_gradients).options       # keywords a user may set (n_steps, …)

Wrappers (the noise tunnel) build their own :class:`MethodNeeds` from the wrapped method's,
so nothing has to forge a signature. A user's own function without a declaration is read
once from its signature (:meth:`MethodNeeds.of_signature`), the only place that does so.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

__all__ = ["MethodNeeds", "declare", "needs_of", "CALLER_KEYWORDS", "TOKEN_INPUTS"]

#: Token-level inputs a caller with a model supplies (read from these parameter names):
#: ``token_ids`` / ``baseline_ids`` ``{side: [B, L]}``, ``vocabulary`` ``{side: [V, H]}``,
#: ``knn`` (DIG's cached neighbour lists), ``logits_fn`` (``x -> [B, T, V]``),
#: ``target_ids`` ``[B, T]``, ``visible`` ``{side: [B, T, L]}``.
TOKEN_INPUTS = frozenset({"token_ids", "baseline_ids", "vocabulary", "knn", "logits_fn",
                          "target_ids", "visible"})

#: Keywords the caller sets itself; never user options of a method.
CALLER_KEYWORDS = frozenset({"has_aux", "baseline", "position_mask",
                             "return_convergence_delta"}) | TOKEN_INPUTS


@dataclasses.dataclass(frozen=True)
class MethodNeeds:
    """A method's declaration (frozen, hashable).

    Attributes:
      baseline: takes ``baseline=`` (a pytree like ``x``; the caller builds it).
      baseline_sets: ``baseline=`` may also be a set to sample from, each leaf with a
        leading ``[n_baselines]`` axis (gradient SHAP's distribution of baselines).
      completeness: takes ``return_convergence_delta=True`` and then returns
        ``δ[T] = Σ attributions − (s(x) − s(baseline))`` (Captum's sign).
      key: draws random numbers from ``key=`` (one key, or one per example ``[B]``).
      key_default: the key (or integer seed) used when the caller gives none.
      position_mask: takes ``position_mask=`` (1 real token / 0 padding per attributed side),
        for methods whose result depends on which positions exist (LIME's regression).
      token_inputs: which of :data:`TOKEN_INPUTS` it takes (DIG, ReAGent: their inputs
        run through the vocabulary).
      options: keyword options a user may set through ``model.attribute(**kwargs)``.
    """
    baseline: bool = False
    baseline_sets: bool = False
    completeness: bool = False
    key: bool = False
    key_default: Any = 0
    position_mask: bool = False
    token_inputs: frozenset = frozenset()
    options: frozenset = frozenset()

    @classmethod
    def of_signature(cls, fn: Callable) -> "MethodNeeds":
        """The needs of an undeclared function, read from its parameter names."""
        params = inspect.signature(fn).parameters
        keywords = {p.name for p in params.values()
                    if p.kind == p.KEYWORD_ONLY
                    or (p.kind == p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)}
        key = params.get("key")
        return cls(baseline="baseline" in params,
                   completeness="return_convergence_delta" in params,
                   key=key is not None,
                   key_default=0 if key is None or key.default is key.empty else key.default,
                   position_mask="position_mask" in params,
                   token_inputs=frozenset(set(params) & TOKEN_INPUTS),
                   options=frozenset(keywords - CALLER_KEYWORDS))


def declare(**needs: Any) -> Callable[[Callable], Callable]:
    """Decorator: attach :class:`MethodNeeds` to a method as ``method.needs``. Options and the
    key default come from the method's own keywords unless given."""
    def mark(fn: Callable) -> Callable:
        read = MethodNeeds.of_signature(fn)
        fn.needs = dataclasses.replace(read, **needs)
        return fn
    return mark


def needs_of(method: Callable) -> MethodNeeds:
    """``method.needs`` when the method declares it, else read from its signature."""
    needs = getattr(method, "needs", None)
    if isinstance(needs, MethodNeeds):
        return needs
    return MethodNeeds.of_signature(method)
