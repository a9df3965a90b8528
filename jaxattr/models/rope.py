"""Rotary position embeddings: every ``rope_type`` of transformers 4.57, as pure functions.

:func:`inv_freq` gives the inverse frequencies ``[B, dim/2]`` and the attention factor that
multiplies cos and sin; dynamic NTK and LongRoPE depend on the sequence length, which here is
each sequence's own number of tokens (PyTorch uses the padded batch length, so a sequence
alone and inside a batch give the same numbers here, and the same as PyTorch run alone).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .spec import RopeSpec

__all__ = ["inv_freq", "rope_tables", "apply_rope"]


def _default(spec: RopeSpec, theta=None):
    base = spec.theta if theta is None else theta
    return 1.0 / (base ** (np.arange(0, spec.dim, 2, dtype=np.float64) / spec.dim))


def _llama3(spec: RopeSpec):
    freq = _default(spec)
    factor, lo, hi = spec.get("factor"), spec.get("low_freq_factor"), spec.get("high_freq_factor")
    old = spec.get("original_max_position_embeddings")
    wavelen = 2 * math.pi / freq
    scaled = np.where(wavelen > old / lo, freq / factor, freq)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    return np.where(medium, smoothed, scaled)


def _yarn(spec: RopeSpec):
    dim, base, factor = spec.dim, spec.theta, spec.get("factor")
    original = spec.get("original_max_position_embeddings") or spec.max_positions

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = spec.get("attention_factor")
    if attention is None:
        m, m_all = spec.get("mscale"), spec.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if (m and m_all) else mscale(factor)
    fast, slow = spec.get("beta_fast") or 32, spec.get("beta_slow") or 1

    def corr(rot):
        return dim * math.log(original / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr(fast), corr(slow)
    if spec.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extra = 1 - ramp
    pos = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    return (1 / (factor * pos)) * (1 - extra) + (1 / pos) * extra, float(attention)


def _longrope_attention(spec: RopeSpec):
    factor, original = spec.get("factor"), spec.original_max
    if original:
        factor = spec.max_positions / original
    else:
        original = spec.max_positions
    attention = spec.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return float(attention), original


def inv_freq(spec: RopeSpec, seq_len: jax.Array):
    """``(inv_freq [B, dim/2] float32, attention_factor)`` for sequences of ``seq_len [B]``
    tokens."""
    b = seq_len.shape[0]
    kind = spec.kind
    attention = 1.0
    if kind == "dynamic":
        factor, maxp, dim = spec.get("factor"), spec.max_positions, spec.dim
        n = jnp.maximum(seq_len.astype(jnp.float32), maxp)
        base = spec.theta * ((factor * n / maxp) - (factor - 1)) ** (dim / (dim - 2))
        expo = jnp.asarray(np.arange(0, dim, 2) / dim, jnp.float32)
        return 1.0 / (base[:, None] ** expo[None]), attention
    if kind == "longrope":
        attention, original = _longrope_attention(spec)
        expo = np.arange(0, spec.dim, 2, dtype=np.float64) / spec.dim
        short = 1.0 / (np.asarray(spec.get("short_factor")) * spec.theta ** expo)
        long = 1.0 / (np.asarray(spec.get("long_factor")) * spec.theta ** expo)
        use_long = (seq_len > original)[:, None]
        freq = jnp.where(use_long, jnp.asarray(long, jnp.float32), jnp.asarray(short, jnp.float32))
        return freq, attention
    if kind == "yarn":
        freq, attention = _yarn(spec)
    elif kind == "llama3":
        freq = _llama3(spec)
    elif kind == "linear":
        freq = _default(spec) / spec.get("factor")
    else:
        freq = _default(spec)
    return jnp.broadcast_to(jnp.asarray(freq, jnp.float32), (b, spec.dim // 2)), attention


def rope_tables(spec: RopeSpec, positions: jax.Array, seq_len: jax.Array):
    """``(cos, sin)`` ``[B, L, dim]`` float32 at integer ``positions [B, L]``."""
    freq, attention = inv_freq(spec, seq_len)
    angles = positions.astype(jnp.float32)[:, :, None] * freq[:, None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles) * attention, jnp.sin(angles) * attention


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the first ``cos.shape[-1]`` dims of ``x [B, L, heads, head_dim]`` (the rest
    pass through: partial rotary); ``cos, sin [B, L, rot]``."""
    rot = cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    c, s = cos[:, :, None].astype(x.dtype), sin[:, :, None].astype(x.dtype)
    half = rot // 2
    rotated = jnp.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    out = xr * c + rotated * s
    return jnp.concatenate([out, xp], axis=-1) if xp.shape[-1] else out
