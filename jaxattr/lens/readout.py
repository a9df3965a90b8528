"""The model's own tail as a pure function, and the residual states a lens reads.

:func:`model_readout` finds, in one traced forward of a transformers Flax model, the
language-model head (the ``nn.Dense`` with ``vocab_size`` features), the final norm feeding
it (the last norm module outside the blocks; none for post-norm stacks such as BART or
Marian, whose last block already ends in a norm), the factor between the two (T5's tied head
scales by ``d_model ** -0.5``) and any bias added to the logits afterwards (BART's
``final_logits_bias``). :func:`model_source` pairs it with the residual states from the
backend's site capture (``blocks.0.resid_pre`` and ``blocks.*.resid_post``, decoder side on
encoder-decoder models). Both are checked against the model's own logits when built: a readout
that does not reproduce them is an error, never a silent approximation.
"""
from __future__ import annotations

import re
import weakref
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..internals.sites import resolve_sites
from .core import Readout
from .train import LensSource

__all__ = ["model_readout", "model_source", "state_sites", "ReadoutError"]

_CACHE: dict = {}


def _cache_for(model) -> dict:
    """Per-model memo (built functions are reused so compiled programs are too), keyed by the
    identity of the underlying model object and dropped with it."""
    obj, key = model.hf_model, id(model.hf_model)
    entry = _CACHE.get(key)
    if entry is None or entry["ref"]() is not obj:
        entry = {"ref": weakref.ref(obj, lambda _, k=key: _CACHE.pop(k, None))}
        _CACHE[key] = entry
    return entry
_NORM = re.compile(r"norm", re.IGNORECASE)


class ReadoutError(RuntimeError):
    """The model's final norm and head could not be separated from its forward."""


def _probe_batch(model) -> dict:
    ids = jnp.asarray([[model.decoder_start_token_id if model.is_encoder_decoder else 1,
                        2, 3, 4]], jnp.int32) % model.config.vocab_size
    out = {"target_ids": ids, "target_mask": jnp.ones_like(ids)}
    if model.is_encoder_decoder:
        out.update(source_ids=ids, source_mask=jnp.ones_like(ids))
    return out


def _trace_tail(adapter, batch: dict) -> tuple:
    """Run the Hugging Face model once, recording every module call: ``(calls, logits)``
    with ``calls`` a list of ``(path, module, variables, kwargs, input, output)``."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and args and isinstance(args[0], jax.Array):
            mod = context.module
            calls.append((tuple(mod.path), mod.clone(parent=None), mod.variables, kwargs,
                          args[0], out))
        return out

    hf = adapter.hf_model
    with nn.intercept_methods(interceptor):
        if adapter.is_encoder_decoder:
            res = hf(input_ids=batch["source_ids"], attention_mask=batch["source_mask"],
                     decoder_input_ids=batch["target_ids"],
                     decoder_attention_mask=batch["target_mask"], params=adapter.params)
        else:
            res = hf(input_ids=batch["target_ids"], attention_mask=batch["target_mask"],
                     params=adapter.params)
    return calls, res.logits


def _find_tail(calls, logits, vocab: int) -> dict:
    heads = [c for c in calls if isinstance(c[1], nn.Dense) and c[1].features == vocab]
    if not heads:
        raise ReadoutError(f"no language-model head (an nn.Dense with {vocab} features) was "
                           "called in the forward; the lens cannot decode this model.")
    _, head_mod, head_vars, head_kw, head_in, head_out = heads[-1]
    before = calls[:calls.index(heads[-1])]
    in_block = [i for i, c in enumerate(before) if any(p.isdigit() for p in c[0])]
    after_blocks = before[in_block[-1] + 1:] if in_block else before
    norms = [c for c in after_blocks if _NORM.search(type(c[1]).__name__)
             and not any(p.isdigit() for p in c[0]) and np.shape(c[5]) == np.shape(head_in)]
    tail = {"head": (head_mod, head_vars, head_kw), "norm": None, "scale": None,
            "offset": None}
    if norms:
        path, mod, variables, kwargs, _, norm_out = norms[-1]
        tail["norm"] = (mod, variables, kwargs)
        if norm_out is not head_in:
            ratio = np.asarray(head_in) / np.where(np.asarray(norm_out) == 0, np.nan,
                                                   np.asarray(norm_out))
            scale = float(np.nanmedian(ratio))
            if not np.allclose(np.asarray(norm_out) * scale, np.asarray(head_in),
                               rtol=1e-4, atol=1e-5):
                raise ReadoutError(f"the head's input is not a multiple of the final norm "
                                   f"{'/'.join(path)}'s output; the lens cannot decode it.")
            tail["scale"] = scale
    if head_out is not logits:
        offset = np.asarray(logits - head_out)
        if not np.allclose(offset, offset[:1, :1], atol=1e-5):
            raise ReadoutError("the model changes its logits after the head in a "
                               "position-dependent way; the lens cannot decode it.")
        tail["offset"] = jnp.asarray(offset[0, 0])
    return tail


def model_readout(model) -> Readout:
    """The model's final norm and head, ``readout(h[..., H]) -> logits[..., V]``.

    The function is built once per model (so compiled programs are reused); its arrays are
    re-read when the model's parameters change (``model.with_params``)."""
    hit = _cache_for(model)
    if hit.get("params_id") == id(model.params):
        return hit["readout"]
    if hasattr(model.adapter, "spec"):          # the native decoder family
        readout = _native_readout(model.adapter)
        if "readout" in hit:
            readout = hit["readout"].replace(params=readout.params)
        hit.update(readout=readout, params_id=id(model.params))
        return readout
    calls, logits = _trace_tail(model.adapter, _probe_batch(model))
    tail = _find_tail(calls, logits, int(model.config.vocab_size))
    params = {"head": tail["head"][1]}
    if tail["norm"] is not None:
        params["norm"] = tail["norm"][1]
    if tail["offset"] is not None:
        params["offset"] = tail["offset"]
    if "readout" in hit:
        readout = hit["readout"].replace(params=params)
    else:
        (head_mod, _, head_kw), norm, scale = tail["head"], tail["norm"], tail["scale"]

        def fn(p, h):
            if norm is not None:
                h = norm[0].apply(p["norm"], h, **norm[2])
            if scale is not None:
                h = h * jnp.asarray(scale, h.dtype)
            out = head_mod.apply(p["head"], h, **head_kw)
            if "offset" in p:
                out = out + p["offset"].astype(out.dtype)
            return out

        readout = Readout(params=params, fn=fn)
    hit.update(readout=readout, params_id=id(model.params))
    return readout


def _native_readout(adapter) -> Readout:
    from ..models.decoder import head_logits, rms_norm
    spec = adapter.spec

    def fn(p, h):
        return head_logits(spec, {"head": p["head"]}, rms_norm(h, p["final_norm"], spec))

    params = {"final_norm": adapter.params["final_norm"],
              "head": adapter.params["embed"] if spec.tied else adapter.params["head"]}
    return Readout(params=params, fn=fn)


def state_sites(model) -> tuple:
    """Site names of the lens rows: the stream entering block 0, then leaving every block
    (the decoder's on encoder-decoder models)."""
    prefix = "decoder." if model.is_encoder_decoder else ""
    available = model.adapter.sites()
    return (resolve_sites(f"{prefix}blocks.0.resid_pre", available)
            + resolve_sites(f"{prefix}blocks.*.resid_post", available))


def _states_fn(model):
    adapter = model.adapter
    sites = state_sites(model)

    def states_fn(params, batch):
        ids = batch["target_ids"]
        out = adapter.replace(params=params).forward(
            target_ids=ids, target_mask=batch["target_mask"],
            source_ids=batch.get("source_ids"), source_mask=batch.get("source_mask"),
            positions=jnp.zeros((ids.shape[0], 1), jnp.int32), capture=sites)
        return jnp.stack([out["captured"][name] for name in sites])

    return states_fn


def model_source(model) -> LensSource:
    """A :class:`~jaxattr.lens.LensSource` over ``model``: the residual states from one
    forward with site capture (the head runs at one position only),
    decoded by :func:`model_readout`.

    Batches are dicts with ``target_ids``/``target_mask`` ``[B, L]`` (and ``source_ids``/
    ``source_mask`` on encoder-decoder models) plus ``mask`` (tokens to score).

    Raises:
      ReadoutError: the readout of the last state does not reproduce the model's logits.
    """
    readout = model_readout(model)
    hit = _cache_for(model)
    if "states_fn" not in hit:
        states_fn = _states_fn(model)
        probe = _probe_batch(model)
        states = states_fn(model.params, probe)
        logits = model.adapter.forward(**probe)["logits"]
        err = float(jnp.max(jnp.abs(readout(states[-1]) - logits)))
        scale = float(jnp.max(jnp.abs(logits)))
        if not err <= 1e-4 * max(scale, 1.0):
            raise ReadoutError(
                f"decoding the last residual state with the final norm and head gives logits "
                f"{err:.3g} away from the model's own (scale {scale:.3g}); the lens cannot "
                f"read {type(model.hf_model).__name__}.")
        hit.update(states_fn=states_fn, n_layers=int(states.shape[0]) - 1,
                   hidden=int(states.shape[-1]))
    return LensSource(params=model.params, readout=readout, states_fn=hit["states_fn"],
                      n_layers=hit["n_layers"], hidden=hit["hidden"])
