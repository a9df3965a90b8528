"""Attribution targets: per-step scores computed from the logits of the single forward pass.

A target is a pure function ``target(logits, batch, **kwargs) -> scores[B, T]`` where
``logits[B, T, V]`` are *step-aligned*: ``logits[b, t]`` is the model's prediction for the
t-th attributed token of sequence ``b``, whose id is ``batch.target_ids[b, t]``. The same
functions serve as ``attributed_fn`` (differentiated) and as ``step_scores`` (recorded).
Options are keyword-only with defaults, so the pipeline can route user keywords to the
target that declares them.

Formulas and sign conventions follow Inseq 0.7.1's step functions (``inseq/attr/step_functions.py``)
with one deliberate difference: ``perplexity`` is ``exp`` of the natural-log cross-entropy, i.e.
``1 / p(y)`` (Inseq computes ``2 ** CE`` with a natural-log CE). Softmaxes run in float32.

Contrastive targets read the *contrast* run from the batch: ``contrast_logits`` (the logits of a
second, step-aligned forward: other/no context, or the prefix of a contrast target) and
``contrast_ids`` (the contrast token at each step). In Inseq's terms the original run is the
``model.attribute`` input and the contrast run is the one built from ``contrast_sources`` /
``contrast_targets``. Missing pieces fall back as Inseq does: ``contrast_ids=None`` scores the
original target token in the contrast run; ``contrast_logits=None`` means the contrast run *is*
the original run (same prefix, different token: the classic Yin & Neubig foil). Where
``contrast_mask`` is given, contrastive scores are 0 at steps without a contrast token.

Each target carries ``fn.needs``: the :class:`TargetBatch` inputs beyond ``target_ids`` it
requires (see :func:`target_needs`), so the pipeline knows which extra forwards to run.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct

from .methods import deeplift_rules as rules
from .methods.separable import separable

__all__ = ["TargetBatch", "logit", "probability", "logprob", "entropy", "crossentropy",
           "perplexity", "contrast_logits", "contrast_prob", "contrast_logits_diff",
           "contrast_prob_diff", "pcxmi", "kl_divergence", "in_context_pvi",
           "mc_dropout_prob_avg", "top_p_size", "filter_logits", "top_p_mask", "top_k_mask",
           "TARGETS", "get_target", "register_target", "target_needs", "separable"]


@struct.dataclass
class TargetBatch:
    """What a target sees besides the logits. All arrays are step-aligned ``[B, T]``.

    Attributes:
      target_ids: ``[B, T]`` id of the token predicted at each attributed step.
      step_mask: ``[B, T]`` 1.0 for real steps, 0.0 for padding.
      contrast_ids: ``[B, T]`` foil / contrast token ids (contrastive targets), or ``None``.
      contrast_logits: ``[B, T, V]`` step-aligned logits of the contrastive forward, or ``None``.
      contrast_mask: ``[B, T]`` 1.0 where the contrast step exists, or ``None``.
      dropout_logits: ``[K, B, T, V]`` step-aligned logits of ``K`` forwards with dropout
        active (independent dropout keys), for ``mc_dropout_prob_avg``; or ``None``.
    """
    target_ids: jax.Array
    step_mask: jax.Array
    contrast_ids: Optional[jax.Array] = None
    contrast_logits: Optional[jax.Array] = None
    contrast_mask: Optional[jax.Array] = None
    dropout_logits: Optional[jax.Array] = None


# --------------------------------------------------------------------------- helpers
def _needs(*fields: str):
    """Tag a built-in target with the extra inputs it requires (read by
    :func:`target_needs`) and as step-separable (:func:`jaxattr.methods.separable`): every
    built-in target scores step ``t`` from ``logits[:, t]`` alone."""
    def deco(fn):
        fn.needs = frozenset(fields)
        return separable(fn)
    return deco


def target_needs(fn: Callable) -> frozenset:
    """Extra inputs a target requires, beyond ``logits`` and ``target_ids``:

    - ``"contrast"``: ``contrast_ids`` and/or ``contrast_logits`` (at least one);
    - ``"contrast_logits"``: ``contrast_logits`` (a second forward);
    - ``"dropout_logits"``: ``dropout_logits`` (``n_mcd_steps`` forwards with dropout).

    User-defined targets without a ``needs`` attribute need nothing extra.
    """
    return frozenset(getattr(fn, "needs", ()))


def _gather(values: jax.Array, ids: jax.Array) -> jax.Array:
    """``values[B, T, V]``, ``ids[B, T]`` -> ``[B, T]``."""
    return jnp.take_along_axis(values, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _log_softmax(logits: jax.Array) -> jax.Array:
    # DeepLIFT's rules apply when the forward runs paired with a reference (method="deeplift")
    return rules.log_softmax(logits.astype(jnp.float32), axis=-1)


def _contrast_run(batch: TargetBatch, logits: jax.Array, name: str):
    """``(contrast_logits, contrast_ids)`` with Inseq's fallbacks (see module docstring)."""
    if batch.contrast_ids is None and batch.contrast_logits is None:
        raise ValueError(
            f"target {name!r} is contrastive: the TargetBatch needs contrast_ids and/or "
            "contrast_logits (pass contrast_targets / a contrast context).")
    c_logits = logits if batch.contrast_logits is None else batch.contrast_logits
    c_ids = batch.target_ids if batch.contrast_ids is None else batch.contrast_ids
    return c_logits, c_ids


def _contrast_masked(scores: jax.Array, batch: TargetBatch) -> jax.Array:
    if batch.contrast_mask is None:
        return scores
    return jnp.where(batch.contrast_mask > 0, scores, jnp.zeros_like(scores))


# --------------------------------------------------------------------------- filtering
def top_p_mask(logits: jax.Array, top_p: float, min_tokens_to_keep: int = 1) -> jax.Array:
    """Boolean ``[..., V]`` mask of the tokens *kept* by nucleus (top-p) filtering.

    As Inseq's ``top_p_logits_mask`` (adapted from Hugging Face): sort ascending, remove the
    tokens whose cumulative probability is ``<= 1 - top_p``, always keep the
    ``min_tokens_to_keep`` most probable ones.
    """
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"`top_p` has to be a float in [0, 1], but is {top_p}")
    if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is "
                         f"{min_tokens_to_keep}")
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    order = jnp.argsort(logits, axis=-1)                       # ascending
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = (cum <= 1.0 - top_p) & (jnp.arange(vocab) < vocab - min_tokens_to_keep)
    inverse = jnp.argsort(order, axis=-1)
    return ~jnp.take_along_axis(remove_sorted, inverse, axis=-1)


def top_k_mask(logits: jax.Array, top_k: int, min_tokens_to_keep: int = 1) -> jax.Array:
    """Boolean ``[..., V]`` mask of the tokens kept by top-k filtering: logits ``>=`` the
    ``max(top_k, min_tokens_to_keep)``-th largest (ties at the threshold are kept, as in
    Inseq / Hugging Face)."""
    k = max(int(top_k), int(min_tokens_to_keep))
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return logits >= kth


def filter_logits(original: jax.Array, contrast: Optional[jax.Array] = None, *,
                  top_k: int = 0, top_p: float = 1.0, min_tokens_to_keep: int = 1,
                  filter_strategy: Optional[str] = None) -> jax.Array:
    """Mask ``[..., V]`` of the tokens kept by Inseq's ``filter_logits``.

    The mask is computed on ``original`` (strategy ``"original"``), ``contrast``
    (``"contrast"``) or their sum ``original + contrast`` (``"merged"``; the default when
    ``contrast`` is given, as in Inseq), first with top-p (when ``top_p < 1``) then with top-k
    (when ``top_k > 0``) on what top-p kept. The same mask applies to both distributions.
    """
    vocab = original.shape[-1]
    if top_k < 0 or top_k > vocab:
        raise ValueError(f"`top_k` has to be a non-negative integer <= {vocab}, but is {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"`top_p` has to be a float in [0, 1], but is {top_p}")
    if filter_strategy is None:
        filter_strategy = "original" if contrast is None else "merged"
    if filter_strategy not in ("original", "contrast", "merged"):
        raise ValueError(f"unknown filter_strategy {filter_strategy!r}: use 'original', "
                         "'contrast' or 'merged'")
    if filter_strategy != "original" and contrast is None:
        raise ValueError(f"filter_strategy {filter_strategy!r} needs contrast logits")
    ref = {"original": lambda: original, "contrast": lambda: contrast,
           "merged": lambda: original.astype(jnp.float32) + contrast.astype(jnp.float32)}
    ref = ref[filter_strategy]().astype(jnp.float32)
    keep = jnp.ones(ref.shape, dtype=bool)
    if top_p < 1.0:
        keep = top_p_mask(ref, top_p, min_tokens_to_keep)
    if top_k > 0:
        keep = keep & top_k_mask(jnp.where(keep, ref, -jnp.inf), top_k, min_tokens_to_keep)
    return keep


def _masked_log_softmax(logits: jax.Array, keep: jax.Array) -> jax.Array:
    """log-softmax over the kept entries; finite (meaningless) values elsewhere, so gradients
    stay finite (no ``-inf - -inf``)."""
    x = logits.astype(jnp.float32)
    m = jax.lax.stop_gradient(jnp.max(jnp.where(keep, x, -jnp.inf), axis=-1, keepdims=True))
    z = jnp.where(keep, x - m, 0.0)
    lse = jnp.log(jnp.sum(jnp.where(keep, jnp.exp(z), 0.0), axis=-1, keepdims=True))
    return z - lse


# --------------------------------------------------------------------------- targets
@_needs()
def logit(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Raw logit of the target token: ``z[y]``. Returns ``[B, T]``."""
    return _gather(logits, batch.target_ids)


@_needs()
def probability(logits: jax.Array, batch: TargetBatch, *, logprob: bool = False) -> jax.Array:
    """Probability of the target token ``softmax(z)[y]`` (``log_softmax(z)[y]`` when
    ``logprob=True``). Computed in float32. Returns ``[B, T]``."""
    lp = _gather(_log_softmax(logits), batch.target_ids)
    return lp if logprob else rules.exp(lp)


@_needs()
def logprob(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Natural-log probability of the target token, ``log_softmax(z)[y]``. Returns ``[B, T]``."""
    return probability(logits, batch, logprob=True)


@_needs()
def entropy(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Entropy of the predictive distribution (nats): ``H = -sum_v p_v log p_v``.
    Does not depend on the target token. Returns ``[B, T]``."""
    lp = _log_softmax(logits)
    return -jnp.sum(jnp.exp(lp) * lp, axis=-1)


@_needs()
def crossentropy(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Cross-entropy of the target token (nats), ``-log p(y)`` (Inseq 0.7.1 uses
    ``F.cross_entropy``, natural log). Returns ``[B, T]``."""
    return -_gather(_log_softmax(logits), batch.target_ids)


@_needs()
def perplexity(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Per-token perplexity ``exp(CE) = exp(-log p(y)) = 1 / p(y)``.

    Note: Inseq 0.7.1 returns ``2 ** CE`` with a natural-log CE, which mixes bases; jaxattr uses
    the consistent natural ``exp``. Returns ``[B, T]``."""
    return jnp.exp(crossentropy(logits, batch))


@_needs("contrast")
def contrast_logits(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Logit of the contrast token in the contrast run: ``z_c[y_c]`` (``z_c`` =
    ``contrast_logits`` or ``logits``; ``y_c`` = ``contrast_ids`` or ``target_ids``).
    Returns ``[B, T]``."""
    c_logits, c_ids = _contrast_run(batch, logits, "contrast_logits")
    return _contrast_masked(_gather(c_logits, c_ids), batch)


@_needs("contrast")
def contrast_prob(logits: jax.Array, batch: TargetBatch, *, logprob: bool = False) -> jax.Array:
    """Probability of the contrast token in the contrast run: ``softmax(z_c)[y_c]``
    (``log_softmax`` when ``logprob=True``). Returns ``[B, T]``."""
    c_logits, c_ids = _contrast_run(batch, logits, "contrast_prob")
    lq = _gather(_log_softmax(c_logits), c_ids)
    return _contrast_masked(lq if logprob else jnp.exp(lq), batch)


@_needs("contrast")
def contrast_logits_diff(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Logit difference ``z[y] - z_c[y_c]`` (original minus contrast; the target function of
    Yin & Neubig 2022). Returns ``[B, T]``."""
    c_logits, c_ids = _contrast_run(batch, logits, "contrast_logits_diff")
    return _contrast_masked(_gather(logits, batch.target_ids) - _gather(c_logits, c_ids), batch)


@_needs("contrast")
def contrast_prob_diff(logits: jax.Array, batch: TargetBatch, *,
                       logprob: bool = False) -> jax.Array:
    """Probability difference ``p(y) - p_c(y_c)`` (original minus contrast; log-probabilities
    when ``logprob=True``). Answers "why ``y`` rather than ``y_c``?". Returns ``[B, T]``."""
    c_logits, c_ids = _contrast_run(batch, logits, "contrast_prob_diff")
    lp = _gather(_log_softmax(logits), batch.target_ids)
    lq = _gather(_log_softmax(c_logits), c_ids)
    diff = lp - lq if logprob else jnp.exp(lp) - jnp.exp(lq)
    return _contrast_masked(diff, batch)


@_needs("contrast")
def pcxmi(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """Pointwise conditional cross-mutual information, in bits, as Inseq:
    ``-log2(p(y) / p_c(y_c)) = log2 p_c(y_c) - log2 p(y)``.

    Inseq's context attribution (PECoRe) runs the *context-less* input as the original and the
    *contextual* one as the contrast, so this is ``log2 p(y | ctx) - log2 p(y | no ctx)``:
    positive when the context makes the token more likely. Returns ``[B, T]``."""
    c_logits, c_ids = _contrast_run(batch, logits, "pcxmi")
    lp = _gather(_log_softmax(logits), batch.target_ids)
    lq = _gather(_log_softmax(c_logits), c_ids)
    return _contrast_masked((lq - lp) / math.log(2.0), batch)


@_needs("contrast")
def in_context_pvi(logits: jax.Array, batch: TargetBatch) -> jax.Array:
    """In-context pointwise V-usable information (Lu et al. 2023), in nats, as Inseq:
    ``-log p(y) + log p_c(y_c)`` (the natural-log counterpart of ``pcxmi``). Returns ``[B, T]``."""
    c_logits, c_ids = _contrast_run(batch, logits, "in_context_pvi")
    lp = _gather(_log_softmax(logits), batch.target_ids)
    lq = _gather(_log_softmax(c_logits), c_ids)
    return _contrast_masked(lq - lp, batch)


@_needs("contrast_logits")
def kl_divergence(logits: jax.Array, batch: TargetBatch, *, top_k: int = 0, top_p: float = 1.0,
                  min_tokens_to_keep: int = 1, filter_strategy: str = "merged") -> jax.Array:
    """KL divergence of the original from the contrast distribution (nats), as Inseq:
    ``KL(P || Q) = sum_v P_v (log P_v - log Q_v)`` with ``P = softmax(z)``,
    ``Q = softmax(z_c)`` (Inseq: ``F.kl_div(log Q, log P, log_target=True, reduction="sum")``).

    With ``top_p < 1`` and/or ``top_k > 0`` both distributions are restricted to the same token
    set and renormalised; the set is chosen (top-p first, then top-k) on ``z + z_c`` by default
    (``filter_strategy="merged"``, Inseq's default when contrast logits exist), or on ``z``
    (``"original"``) or ``z_c`` (``"contrast"``); ``min_tokens_to_keep`` tokens always stay.
    Only kept tokens contribute (``0 log 0 = 0``). Needs ``contrast_logits``. Returns ``[B, T]``.
    """
    if batch.contrast_logits is None:
        raise ValueError("target 'kl_divergence' needs contrast_logits (a contrastive forward "
                         "with another context); without them it is identically 0.")
    keep = filter_logits(logits, batch.contrast_logits, top_k=top_k, top_p=top_p,
                         min_tokens_to_keep=min_tokens_to_keep, filter_strategy=filter_strategy)
    lp = _masked_log_softmax(logits, keep)
    lq = _masked_log_softmax(batch.contrast_logits, keep)
    terms = jnp.where(keep, jnp.exp(lp) * (lp - lq), 0.0)
    return _contrast_masked(jnp.sum(terms, axis=-1), batch)


@_needs("dropout_logits")
def mc_dropout_prob_avg(logits: jax.Array, batch: TargetBatch, *, n_mcd_steps: int = 5,
                        logprob: bool = False) -> jax.Array:
    """Target probability z-scored against Monte-Carlo-dropout predictions, as Inseq:
    ``(p(y) - mean_k p_k(y)) / std_k p_k(y)`` where ``p`` comes from ``logits`` (no dropout) and
    ``p_k`` from ``batch.dropout_logits[k]`` (``K = n_mcd_steps`` forwards with dropout on);
    ``std`` is the sample standard deviation (``ddof=1``, torch's default). Log-probabilities
    when ``logprob=True``. ``n_mcd_steps`` tells the pipeline how many dropout forwards to run;
    it must equal ``dropout_logits.shape[0]``. A model without dropout gives ``std = 0`` (inf /
    NaN, as in Inseq); padded steps (``step_mask == 0``) divide by 1 instead. Returns ``[B, T]``.
    """
    if batch.dropout_logits is None:
        raise ValueError("target 'mc_dropout_prob_avg' needs TargetBatch.dropout_logits "
                         "[n_mcd_steps, B, T, V] from forwards with dropout enabled.")
    k = batch.dropout_logits.shape[0]
    if k != n_mcd_steps:
        raise ValueError(f"mc_dropout_prob_avg: dropout_logits holds {k} dropout forwards but "
                         f"n_mcd_steps={n_mcd_steps}")
    if k < 2:
        raise ValueError("mc_dropout_prob_avg needs n_mcd_steps >= 2 (sample std)")
    orig = probability(logits, batch, logprob=logprob)
    noisy = jax.vmap(lambda z: probability(z, batch, logprob=logprob))(batch.dropout_logits)
    std = jnp.std(noisy, axis=0, ddof=1)
    std = jnp.where(batch.step_mask > 0, std, 1.0)
    return (orig - jnp.mean(noisy, axis=0)) / std


@_needs()
def top_p_size(logits: jax.Array, batch: TargetBatch, *,
               top_p: Optional[float] = None) -> jax.Array:
    """Size of the nucleus: number of tokens kept by top-p filtering of ``softmax(z)``
    (``min_tokens_to_keep=1``), as Inseq's ``top_p_size`` (computed per step; float32).
    ``top_p`` is required, as in Inseq. Piecewise constant: its gradient is 0. Returns ``[B, T]``.
    """
    if top_p is None:
        raise ValueError("target 'top_p_size' needs the keyword top_p (e.g. top_p=0.9)")
    return jnp.sum(top_p_mask(logits, top_p, 1), axis=-1).astype(jnp.float32)


TARGETS: dict[str, Callable[..., jax.Array]] = {
    "logit": logit,
    "probability": probability,
    "logprob": logprob,
    "entropy": entropy,
    "crossentropy": crossentropy,
    "perplexity": perplexity,
    "contrast_logits": contrast_logits,
    "contrast_prob": contrast_prob,
    "contrast_logits_diff": contrast_logits_diff,
    "contrast_prob_diff": contrast_prob_diff,
    "pcxmi": pcxmi,
    "kl_divergence": kl_divergence,
    "in_context_pvi": in_context_pvi,
    "mc_dropout_prob_avg": mc_dropout_prob_avg,
    "top_p_size": top_p_size,
}


def register_target(name: str, fn: Callable[..., jax.Array]) -> None:
    """Make ``fn`` available by ``name`` (for the CLI and string arguments)."""
    TARGETS[name] = fn


def get_target(target: Any) -> Callable[..., jax.Array]:
    """Resolve a target name, or pass a callable ``(logits, batch, **kw) -> [B, T]`` through."""
    if callable(target):
        return target
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(
            f"Unknown attributed function / step score {target!r}. Available: {sorted(TARGETS)}; "
            "or pass a function `(logits[B,T,V], batch, **kwargs) -> scores[B,T]`.") from None
