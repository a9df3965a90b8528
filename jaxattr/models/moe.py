"""Sparse mixture-of-experts MLPs (Mixtral, Qwen 3 MoE) as pure functions.

One layer's parameters (stacked ``[n_layers, ...]`` in the model tree, weights ``[in, out]``)::

    {"router": [H, E], "gate": [E, H, F], "up": [E, H, F], "down": [E, F, H]}

Routing follows transformers' PyTorch classes exactly: router logits ``h @ router`` in the
activation dtype, softmax over all ``E`` experts in float32, the ``k`` largest kept
(``lax.top_k``: exact ties go to the lower index; ``torch.topk`` does not promise an order, so
near-tied routings can differ from PyTorch's), renormalised
to sum to 1 when ``spec.norm_topk_prob``, cast back; the output is the routing-weighted sum of
the selected experts' ``down(act(gate(h)) * up(h))``.

Three exact formulations of the same function (:func:`moe_mlp` picks ``spec.moe_impl``):

* ``"dense"``: every expert on every token, weighted by the ``[..., E]`` routing matrix that is
  zero off the selected experts (``E / k`` times the MLP FLOPs a grouped matmul needs). It
  is an ordinary einsum, so it works under ``jit``, ``grad`` and ``vmap`` (IG steps and
  one-hot cotangents are vmapped through the forward).
* ``"ragged"``: the ``N·k`` (token, expert) assignments sorted by expert and multiplied group by
  group with ``jax.lax.ragged_dot``, scattered back with ``.at[].add``. It differentiates
  under ``jit``, but JAX 0.10.2 has no batching rule for ``ragged_dot`` with unbatched expert
  weights (``NotImplementedError: ragged_dot vmap over any dim but 0``), so it serves plain
  forwards and single gradients only; and XLA's CPU lowering computes every expert for every
  sorted row (``k`` times the dense FLOPs; ``benchmarks/native_moe.py``). It is kept for
  accelerators whose grouped-matmul lowering skips the unselected experts.
* ``"blocked"``: the sorted assignments padded per expert into blocks of rows that each belong
  to one expert, under ``lax.scan`` (:func:`moe_blocked`): the selected experts' FLOPs plus
  padding, ``vmap``-able; 1.6x faster than ``"dense"`` for logits in the benchmark, slower for
  gradients, and under ``vmap`` it gathers expert weights per vmapped element.

Routing is piecewise: the gradient treats the selected experts as constants (as PyTorch's
autograd does); DeepLIFT's rescale rules do not cover a discrete choice, so the paired DeepLIFT
forward refuses MoE layers.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ..methods import deeplift_rules as rules
from .spec import MOE_IMPLS, DecoderSpec

__all__ = ["route", "routing_matrix", "moe_dense", "moe_ragged", "moe_blocked", "moe_mlp"]


def _same(kind, value):
    return value


def route(spec: DecoderSpec, router: jax.Array, h: jax.Array, hook: Callable = _same):
    """The routing of tokens ``h [..., H]`` by ``router [H, E]``.

    ``hook("router_probs", probs [..., E])`` sees (and may replace) the float32 softmax before
    the top-k: the ``blocks.{l}.router_probs`` site.

    Returns:
      ``(weights [..., k], experts [..., k] int32)``: the kept (renormalised when
      ``spec.norm_topk_prob``) probabilities in ``h``'s dtype and the experts' indices, largest
      first.
    """
    probs = jax.nn.softmax((h @ router).astype(jnp.float32), axis=-1)
    probs = hook("router_probs", probs)
    top, experts = jax.lax.top_k(probs, spec.experts_per_token)
    if spec.norm_topk_prob:
        top = top / jnp.sum(top, axis=-1, keepdims=True)
    return top.astype(h.dtype), experts.astype(jnp.int32)


def routing_matrix(spec: DecoderSpec, router: jax.Array, h: jax.Array,
                   hook: Callable = _same) -> jax.Array:
    """``[..., E]``: each token's routing weight per expert (zero off the selected ones)."""
    weights, experts = route(spec, router, h, hook)
    onehot = jax.nn.one_hot(experts, spec.n_experts, dtype=weights.dtype)    # [..., k, E]
    return jnp.einsum("...k,...ke->...e", weights, onehot)


def moe_dense(spec: DecoderSpec, p: dict, h: jax.Array, *, act: Callable,
              hook: Callable = _same) -> jax.Array:
    """``[..., H]``: every expert on every token ``h [..., H]``, weighted by
    :func:`routing_matrix`."""
    r = routing_matrix(spec, p["router"], h, hook)
    gate = jnp.einsum("...h,ehf->...ef", h, p["gate"])
    up = jnp.einsum("...h,ehf->...ef", h, p["up"])
    return jnp.einsum("...ef,...e,efh->...h", act(gate) * up, r, p["down"])


def moe_ragged(spec: DecoderSpec, p: dict, h: jax.Array, *, act: Callable,
               hook: Callable = _same) -> jax.Array:
    """``[..., H]``: the selected experts only, grouped by expert with
    ``jax.lax.ragged_dot`` (not ``vmap``-able in JAX 0.10.2; see the module docstring)."""
    shape, k = h.shape, spec.experts_per_token
    x = h.reshape(-1, shape[-1])                                  # [N, H]
    weights, experts = route(spec, p["router"], h, hook)          # [..., k]
    weights, flat = weights.reshape(-1), experts.reshape(-1)      # [N k]
    order = jnp.argsort(flat, stable=True)                        # assignments by expert
    token = order // k
    sizes = jnp.bincount(flat, length=spec.n_experts).astype(jnp.int32)
    xs = x[token]                                                 # [N k, H]
    gate = jax.lax.ragged_dot(xs, p["gate"], sizes)
    up = jax.lax.ragged_dot(xs, p["up"], sizes)
    ys = jax.lax.ragged_dot(act(gate) * up, p["down"], sizes)     # [N k, H]
    ys = ys * weights[order][:, None]
    return jnp.zeros_like(x).at[token].add(ys).reshape(shape)


def _block_rows(m: int, e: int) -> int:
    """Rows per block of :func:`moe_blocked`: about the mean group size ``m / e``, a power of
    two in ``[8, 128]``."""
    return int(min(128, max(8, 1 << max(0, (-(-m // e) - 1).bit_length()))))


def moe_blocked(spec: DecoderSpec, p: dict, h: jax.Array, *, act: Callable,
                hook: Callable = _same) -> jax.Array:
    """``[..., H]``: the selected experts only, in blocks of rows that each belong to one
    expert, under ``lax.scan`` (``vmap``-able and differentiable, unlike ``ragged_dot``; but
    under ``vmap`` each block gathers its expert's weights per batch element, so vmapped IG
    steps copy weights: ``"dense"`` stays the default).

    The ``M = N·k`` (token, expert) assignments are sorted by expert and each expert's group is
    padded to a multiple of ``b`` rows (:func:`_block_rows`), so a static
    ``ceil((M + E (b - 1)) / b)`` blocks cover every group; block ``j`` multiplies its ``b``
    rows by its expert's weights (padding rows read a zero token and carry weight 0). MLP FLOPs:
    at most ``(M + E b) / (N E)`` of :func:`moe_dense`'s.
    """
    shape, k, e = h.shape, spec.experts_per_token, spec.n_experts
    x = h.reshape(-1, shape[-1])                                  # [N, H]
    n = x.shape[0]
    weights, experts = route(spec, p["router"], h, hook)
    weights, flat = weights.reshape(-1), experts.reshape(-1)      # [M]
    m = flat.shape[0]
    b = _block_rows(m, e)
    n_blocks = -(-(m + e * (b - 1)) // b)
    sizes = jnp.bincount(flat, length=e)
    padded = -(-sizes // b) * b
    start, pstart = jnp.cumsum(sizes) - sizes, jnp.cumsum(padded) - padded
    order = jnp.argsort(flat, stable=True)
    group = flat[order]
    dest = pstart[group] + jnp.arange(m) - start[group]           # row in the padded layout
    rows = n_blocks * b
    token = jnp.full((rows,), n, jnp.int32).at[dest].set((order // k).astype(jnp.int32))
    weight = jnp.zeros((rows,), weights.dtype).at[dest].set(weights[order])
    owner = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded), jnp.arange(n_blocks) * b,
                                         side="right"), e - 1)
    xs = jnp.concatenate([x, jnp.zeros_like(x[:1])])[token].reshape(n_blocks, b, -1)

    def one(args):
        xb, ex = args
        gate, up = xb @ p["gate"][ex], xb @ p["up"][ex]
        return (act(gate) * up) @ p["down"][ex]

    _, ys = jax.lax.scan(lambda c, a: (c, one(a)), None, (xs, owner))
    ys = ys.reshape(rows, -1) * weight[:, None]
    out = jnp.zeros((n + 1, x.shape[-1]), x.dtype).at[token].add(ys)
    return out[:n].reshape(shape)


def moe_mlp(spec: DecoderSpec, p: dict, h: jax.Array, *, act: Callable,
            hook: Callable = _same) -> jax.Array:
    """The MoE MLP of ``h [B, L, H]`` in the formulation ``spec.moe_impl`` -> ``[B, L, H]``;
    ``hook(kind, value)`` receives the ``router_probs`` ``[B, L, E]`` (see :func:`route`).

    Raises:
      ValueError: ``spec.moe_impl`` unknown, or called inside DeepLIFT's paired forward.
    """
    if rules.active():
        raise ValueError("method='deeplift' (rescale rules) does not cover mixture-of-experts "
                         "routing (a discrete top-k choice that can differ between the input "
                         "and the baseline); use integrated_gradients or another method on "
                         f"{spec.model_type}.")
    if spec.moe_impl == "dense":
        return moe_dense(spec, p, h, act=act, hook=hook)
    if spec.moe_impl == "ragged":
        return moe_ragged(spec, p, h, act=act, hook=hook)
    if spec.moe_impl == "blocked":
        return moe_blocked(spec, p, h, act=act, hook=hook)
    raise ValueError(f"DecoderSpec.moe_impl={spec.moe_impl!r}: use one of {list(MOE_IMPLS)}.")
