"""Quadrature rules on [0, 1] for path integrals (integrated gradients)."""
from __future__ import annotations

import warnings

import numpy as np

from ._common import count

__all__ = ["QUADRATURE_RULES", "quadrature", "quadrature_rule"]

QUADRATURE_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                    "riemann_trapezoid")


def quadrature(n_steps: int, rule: str = "gausslegendre", *,
               method: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alphas[n_steps]`` in [0, 1] and weights ``[n_steps]`` summing to 1.

    ``sum(w * f(alphas)) ≈ ∫_0^1 f(a) da``. Gauss–Legendre with ``n`` nodes is exact for
    polynomials of degree ``2n - 1``; the trapezoid rule for degree 1; the midpoint rule for
    degree 1; left/right Riemann sums for constants.

    ``riemann_trapezoid`` is the textbook rule (weights ``1/(n-1)``, halved at both ends; they
    sum to 1). Captum's ``riemann_trapezoid`` (used by Inseq) has weights summing to
    ``(n-1)/n``, so its integrated gradients are ours times ``(n-1)/n``: multiply Captum's by
    ``n/(n-1)`` (or divide ours) to compare them.
    """
    method = quadrature_rule(rule, method, where="quadrature", keyword="rule")
    n = count(n_steps, "n_steps")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (nodes + 1.0) / 2.0, weights / 2.0
    if method == "riemann_left":
        return np.arange(n) / n, np.full(n, 1.0 / n)
    if method == "riemann_right":
        return np.arange(1, n + 1) / n, np.full(n, 1.0 / n)
    if method == "riemann_middle":
        return (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n)
    if method == "riemann_trapezoid":
        if n < 2:
            raise ValueError("riemann_trapezoid needs n_steps >= 2.")
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
        return np.linspace(0.0, 1.0, n), w
    raise ValueError(f"Unknown quadrature method {method!r}; choose one of {QUADRATURE_RULES}.")


def quadrature_rule(quadrature: str, method: str | None, *, where: str,
                    keyword: str = "quadrature") -> str:
    """The rule named by ``quadrature``, or by the deprecated ``method=`` spelling (with a
    ``DeprecationWarning``); both given and different is an error."""
    if method is None:
        return quadrature
    warnings.warn(f"{where}(method=...) is deprecated: name the quadrature rule with "
                  f"{keyword}={method!r} (method= will be removed).", DeprecationWarning,
                  stacklevel=3)
    if quadrature not in ("gausslegendre", method):
        raise ValueError(f"{where} got {keyword}={quadrature!r} and the deprecated "
                         f"method={method!r}; give only {keyword}=.")
    return method
