"""Quadrature rules on [0, 1]: each integrates polynomials to its known order."""
import math

import numpy as np
import pytest

from jaxattr.methods import QUADRATURE_RULES, quadrature


def integrate(rule, n, degree):
    alphas, weights = quadrature(n, rule)
    return float(np.sum(weights * alphas ** degree))


def exact(degree):
    return 1.0 / (degree + 1)  # ∫_0^1 a^k da


@pytest.mark.parametrize("rule", QUADRATURE_RULES)
@pytest.mark.parametrize("n", [2, 3, 7, 16])
def test_nodes_in_unit_interval_and_weights_sum_to_one(rule, n):
    alphas, weights = quadrature(n, rule)
    assert alphas.shape == weights.shape == (n,)
    assert np.all((alphas >= 0) & (alphas <= 1))
    assert np.all(weights > 0)
    assert abs(weights.sum() - 1.0) < 1e-13


@pytest.mark.parametrize("n", range(1, 11))
def test_gauss_legendre_exact_to_degree_2n_minus_1_and_not_beyond(n):
    for degree in range(2 * n):
        assert integrate("gausslegendre", n, degree) == pytest.approx(exact(degree), abs=1e-13)
    # Degree 2n is not integrated exactly, so the order above is tight: the error is the
    # Gauss–Legendre remainder on [0, 1], (n!)^4 / ((2n+1) ((2n)!)^3) · f^(2n), f^(2n) = (2n)!.
    err = exact(2 * n) - integrate("gausslegendre", n, 2 * n)
    expected = math.factorial(n) ** 4 / ((2 * n + 1) * math.factorial(2 * n) ** 2)
    if n <= 8:  # beyond, the remainder (< 1e-11) nears float64 rounding of the sum
        assert err == pytest.approx(expected, rel=1e-5)
    assert err > 0


@pytest.mark.parametrize("rule", ["riemann_trapezoid", "riemann_middle"])
@pytest.mark.parametrize("n", [2, 5, 16])
def test_trapezoid_and_midpoint_exact_for_affine(rule, n):
    for degree in (0, 1):
        assert integrate(rule, n, degree) == pytest.approx(exact(degree), abs=1e-14)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 50])
def test_trapezoid_error_for_square_is_h2_over_6(n):
    h = 1.0 / (n - 1)
    assert integrate("riemann_trapezoid", n, 2) - exact(2) == pytest.approx(h * h / 6, rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 50])
def test_midpoint_error_for_square_is_minus_h2_over_12(n):
    h = 1.0 / n
    assert integrate("riemann_middle", n, 2) - exact(2) == pytest.approx(-h * h / 12, rel=1e-9)


def test_trapezoid_and_midpoint_converge_at_second_order():
    for rule in ("riemann_trapezoid", "riemann_middle"):
        e1 = abs(integrate(rule, 21, 2) - exact(2))
        e2 = abs(integrate(rule, 41, 2) - exact(2))
        assert 3.5 < e1 / e2 < 4.5


@pytest.mark.parametrize("n", [1, 2, 5, 10, 50])
def test_left_and_right_exact_for_constants_with_known_error_for_identity(n):
    for rule in ("riemann_left", "riemann_right"):
        assert integrate(rule, n, 0) == pytest.approx(1.0, abs=1e-14)
    # Σ_{i<n} i/n² = 1/2 − 1/(2n);  Σ_{i=1..n} i/n² = 1/2 + 1/(2n).
    assert integrate("riemann_left", n, 1) - 0.5 == pytest.approx(-0.5 / n, rel=1e-12)
    assert integrate("riemann_right", n, 1) - 0.5 == pytest.approx(0.5 / n, rel=1e-12)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Unknown quadrature"):
        quadrature(5, "simpson")
    with pytest.raises(ValueError, match="n_steps"):
        quadrature(0)
    with pytest.raises(ValueError, match="riemann_trapezoid"):
        quadrature(1, "riemann_trapezoid")
