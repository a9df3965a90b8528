"""DeepLIFT's rules as drop-in operations for a forward written in JAX.

Each operation here computes its ordinary value. Inside :func:`paired` (a ``vmap`` over the
pair ``(input, reference)`` with the named axis :data:`PAIR_AXIS`, which
:func:`jaxattr.methods.deeplift` sets up), it also sees its reference value (the same
operation in the reference forward, through ``all_gather`` over the pair) and replaces its
derivative by a DeepLIFT multiplier, with the value unchanged::

    y = stop_gradient(f(z)) + m · (z − stop_gradient(z))        # value f(z), derivative m

The rules (``x`` the input member, ``r`` the reference member, ``Δ = x − r``):

* **rescale** (elementwise nonlinearities: GELU, SiLU, ReLU, tanh, sigmoid, exp, log, 1/t,
  rsqrt…): ``m = Δf / Δz`` (Shrikumar et al., 2017, §3.5.1); where ``|Δz|`` is below
  ``1e-4·(1 + |z̄|)`` the derivative at the midpoint ``z̄`` (its error on ``Δf`` is
  ``O(Δz³)``).
* **product** (two activations multiplied: attention ``QKᵀ`` and ``probs·V``, SwiGLU's
  ``act(gate)·up``, RMSNorm's ``x·rsqrt(·)``): any bilinear ``B(a, b)`` gets the multipliers
  ``∂/∂a = B(·, b̄)`` and ``∂/∂b = B(ā, ·)`` at the midpoints ``ā = (a_x + a_r)/2``,
  ``b̄ = (b_x + b_r)/2`` (the Shapley value of the two-player game ``a``, ``b``:
  ``Δ(ab) = ā·Δb + Δa·b̄`` exactly). Shrikumar et al. leave products open; DeepExplain and
  Captum back-propagate gradients through them, which breaks summation-to-delta. RMSNorm's
  ``x·(1/rms(x))`` takes the one-order term instead (``order="b_first"``:
  ``Δ = (1/rms)_x·Δx + x_r·Δ(1/rms)``), also exact: with a zero reference (``baseline=
  "zeros"``) ``1/rms`` is ``1/sqrt(eps)`` there, and the midpoint terms would be huge and
  cancel.
* **softmax** / **log-softmax** (the attention weights; the target's ``softmax`` over the
  vocabulary): written as rescaled ``exp`` (shifted by one stop-gradient constant shared by
  input and reference: the mean of the two members' row maxima, so the shift itself changes
  nothing between the two), a sum, a rescaled ``1/s`` (``log s``), and a product. This keeps
  summation-to-delta exact, which Shrikumar et al.'s softmax adjustment (subtract the mean
  contribution over classes, §3.6) and Captum's softmax rule do not guarantee for a softmax
  inside the network.

Every other operation of the forward must be affine in the activations (matmuls with
weights, sums, residual additions, RoPE rotations, masking by constants, gathers), so the
chain of multipliers gives ``Σ_i m_i·Δx_i = f(x) − f(r)`` (summation-to-delta) to float
rounding. Outside :func:`paired` the operations are the plain ones (same values, ordinary
derivatives).

Caveat: the shared softmax shift makes each member's ``exp`` underflow when the two members'
row maxima differ by more than ~170 (float32); attention scores and logits of one model on
an input and its baseline stay far below that.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["PAIR_AXIS", "active", "paired", "rescale", "product", "softmax", "log_softmax",
           "relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "exp"]

#: The named ``vmap`` axis over ``(input, reference)``.
PAIR_AXIS = "jaxattr_deeplift_pair"
_TOL = 1e-4
_sg = jax.lax.stop_gradient


def active() -> bool:
    """Whether the caller runs inside :func:`paired` (so the rules apply). Trace-time."""
    try:
        jax.lax.axis_index(PAIR_AXIS)
    except NameError:
        return False
    return True


def paired(fn: Callable[[Any], Any], x: Any, reference: Any) -> Any:
    """Run ``fn`` on the input and the reference together, the rules active.

    Args:
      fn: any function of one pytree argument built from these operations.
      x, reference: pytrees of the same structure and shapes.

    Returns:
      ``fn``'s output with a leading pair axis of size 2 (``[0]`` the input's, ``[1]`` the
      reference's). Differentiating ``out[0]`` with respect to ``x`` gives the DeepLIFT
      multipliers.
    """
    z = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, jnp.asarray(b, a.dtype)]),
                               x, reference)
    return jax.vmap(fn, axis_name=PAIR_AXIS)(z)


def _members(v: jax.Array):
    both = jax.lax.all_gather(_sg(v), PAIR_AXIS)
    return both[0], both[1]


def _with_derivative(y, z, m):
    return _sg(y) + _sg(m).astype(z.dtype) * (z - _sg(z))


def rescale(f: Callable[[jax.Array], jax.Array], z: jax.Array) -> jax.Array:
    """``f(z)`` for an elementwise ``f``, with the rescale multiplier ``Δf/Δz`` when paired."""
    y = f(z)
    if not active():
        return y
    zx, zr = _members(z.astype(jnp.float32))
    yx, yr = _members(y.astype(jnp.float32))
    d = zx - zr
    mid = zr + 0.5 * d  # no overflow where both are float32's minimum (masked scores)
    small = jnp.abs(d) <= _TOL * (1.0 + jnp.abs(mid))
    deriv = jax.jvp(lambda t: f(t.astype(z.dtype)).astype(jnp.float32), (mid,),
                    (jnp.ones_like(mid),))[1]
    m = jnp.where(small, deriv, (yx - yr) / jnp.where(small, 1.0, d))
    return _with_derivative(y, z, m)


def product(op: Callable[[jax.Array, jax.Array], jax.Array], a: jax.Array,
            b: jax.Array, *, order: str = "shapley") -> jax.Array:
    """``op(a, b)`` for a bilinear ``op`` (``jnp.multiply``, an ``einsum``…), with exact
    multipliers when paired.

    ``order="shapley"``: ``Δop = op(Δa, b̄) + op(ā, Δb)`` at the midpoints (both orders of
    changing ``a`` and ``b`` averaged). ``order="b_first"``: ``Δop = op(Δa, b_x) +
    op(a_r, Δb)`` (``b`` changes first, at ``a``'s reference value) — used for a normaliser
    ``b = 1/rms(a)``, whose reference value is huge (``1/sqrt(eps)``) when the reference
    activations are zero: averaging it in would make both terms huge and cancel in floating
    point, layer after layer.
    """
    y = op(a, b)
    if not active():
        return y
    ax, ar = _members(a)
    bx, br = _members(b)
    if order == "b_first":
        a_w, b_w = ar, bx
    elif order == "shapley":
        a_w, b_w = ar + 0.5 * (ax - ar), br + 0.5 * (bx - br)
    else:
        raise ValueError(f"order={order!r}: use 'shapley' or 'b_first'.")
    return _sg(y) + op(a - _sg(a), b_w) + op(a_w, b - _sg(b))


def _shift(z: jax.Array, axis: int) -> jax.Array:
    zx, zr = _members(z)
    return 0.5 * (jnp.max(zx, axis=axis, keepdims=True) + jnp.max(zr, axis=axis, keepdims=True))


def softmax(z: jax.Array, axis: int = -1) -> jax.Array:
    """``jax.nn.softmax``; paired: rescaled ``exp`` and ``1/s`` and a product (see above)."""
    if not active():
        return jax.nn.softmax(z, axis=axis)
    e = rescale(jnp.exp, z - _shift(z, axis))
    inv = rescale(lambda s: 1.0 / s, jnp.sum(e, axis=axis, keepdims=True))
    return product(jnp.multiply, e, inv)


def log_softmax(z: jax.Array, axis: int = -1) -> jax.Array:
    """``jax.nn.log_softmax``; paired: ``z − c − log Σ exp(z − c)`` with rescaled ``exp`` and
    ``log`` and the shared constant shift ``c``."""
    if not active():
        return jax.nn.log_softmax(z, axis=axis)
    shifted = z - _shift(z, axis)
    lse = rescale(jnp.log, jnp.sum(rescale(jnp.exp, shifted), axis=axis, keepdims=True))
    return shifted - lse


def relu(z):
    """ReLU with the rescale rule when paired."""
    return rescale(jax.nn.relu, z)


def gelu(z):
    """Exact (erf) GELU with the rescale rule when paired."""
    return rescale(lambda t: jax.nn.gelu(t, approximate=False), z)


def gelu_tanh(z):
    """tanh-approximated GELU with the rescale rule when paired."""
    return rescale(lambda t: jax.nn.gelu(t, approximate=True), z)


def silu(z):
    """SiLU (swish) with the rescale rule when paired."""
    return rescale(jax.nn.silu, z)


def tanh(z):
    """tanh with the rescale rule when paired."""
    return rescale(jnp.tanh, z)


def sigmoid(z):
    """Logistic sigmoid with the rescale rule when paired."""
    return rescale(jax.nn.sigmoid, z)


def exp(z):
    """exp with the rescale rule when paired."""
    return rescale(jnp.exp, z)
