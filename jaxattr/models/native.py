"""The native decoder as a model backend: :class:`NativeDecoder` (the internals protocol over
our own forward) and :class:`NativeModel` (config, generation) from :func:`load_native`."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from ..internals.sites import parse_site, resolve_sites, site_names
from .checkpoint import params_from_tensors, read_tensors
from .decoder import head_logits, hidden_states, lookup, split_layers, stack_layers
from .spec import DecoderSpec, spec_from_config

__all__ = ["NativeDecoder", "NativeModel", "load_native", "LAYER_LOOPS"]

#: how the layers run: ``lax.scan`` over stacked weights, or a Python loop over per-layer ones
LAYER_LOOPS = ("scan", "unroll")

_KINDS = ("resid_pre", "value", "attn_pattern", "head_out", "attn_out", "mlp_out", "resid_post")
#: mixture-of-experts models add the router's probabilities before the MLP output
_MOE_KINDS = ("resid_pre", "value", "attn_pattern", "head_out", "attn_out", "router_probs",
              "mlp_out", "resid_post")


class NativeDecoder(struct.PyTreeNode):
    """Pure functions of a llama-like decoder (:class:`~jaxattr.internals.ModelFunctions`).

    Attributes:
      params: the parameter pytree (:mod:`jaxattr.models.decoder`): ``params["layers"]`` a
        dict of weights stacked ``[n_layers, ...]`` (the layers run under ``lax.scan``) or a
        tuple of per-layer dicts (a Python loop); see :attr:`layer_loop`.
      spec: the static :class:`~jaxattr.models.spec.DecoderSpec`.
    """
    params: Any
    spec: DecoderSpec = struct.field(pytree_node=False)
    is_encoder_decoder: bool = struct.field(pytree_node=False, default=False)
    #: every nonlinearity of the forward is rule-aware (jaxattr.methods.deeplift_rules), so
    #: method="deeplift" can use the rescale rule
    deeplift_rules = True

    @property
    def layer_loop(self) -> str:
        """``"scan"`` (weights stacked ``[n_layers, ...]``, one ``lax.scan`` iteration per
        layer: compile time independent of depth) or ``"unroll"`` (a tuple of per-layer
        weights, the layers unrolled: compile time grows with depth; on XLA CPU 5-9% faster
        warm at GPT-2 size, because no layer's weights are first copied out of a stack)."""
        return "unroll" if isinstance(self.params["layers"], (tuple, list)) else "scan"

    def with_layer_loop(self, loop: str) -> "NativeDecoder":
        """The same model with its layer weights stacked (``"scan"``) or split per layer
        (``"unroll"``); equal results (tested), a copy of the layer weights.

        Raises:
          ValueError: ``loop`` is neither.
        """
        params = dict(self.params)
        params["layers"] = _layers_for(loop, params["layers"], self.spec.n_layers)
        return self.replace(params=params)

    @property
    def embed_scale(self) -> float:
        """The factor PyTorch's embedding module applies (Gemma 3: ``sqrt(H)``; else 1)."""
        return self.spec.embed_scale if self.spec.embed_scale_in_lookup else 1.0

    def embedding_matrix(self, side: str = "decoder") -> jax.Array:
        """``[V, H]`` token-embedding table."""
        return self.params["embed"]

    def embed(self, ids: jax.Array, *, side: str = "decoder") -> jax.Array:
        """Attributed embeddings ``[B, L, H]``: what ``get_input_embeddings()(ids)`` returns."""
        return lookup(self.spec, self.params, ids)

    def sites(self) -> tuple:
        """Every site name, in canonical order."""
        return site_names(self.spec.n_layers,
                          kinds=_MOE_KINDS if self.spec.n_experts else _KINDS)

    def logits(self, **kwargs) -> jax.Array:
        """``forward(**kwargs)["logits"]``."""
        return self.forward(**kwargs)["logits"]

    def forward(self, *, target_ids: jax.Array, target_mask: jax.Array,
                target_embeds: Optional[jax.Array] = None, source_ids=None, source_mask=None,
                source_embeds=None, dropout_rng=None, positions: Optional[jax.Array] = None,
                return_head: bool = False, output_attentions: bool = False,
                capture: Sequence[str] = (), patch: Optional[Mapping[str, Callable]] = None,
                delta: Optional[Mapping[str, jax.Array]] = None, site=None,
                site_value: Optional[jax.Array] = None) -> dict:
        """One teacher-forced forward (see :class:`~jaxattr.internals.ModelFunctions`).

        ``target_embeds`` replaces the embedding lookup (what attribution differentiates).
        ``positions [B, T]`` gathers the final-norm output before the head. ``site`` /
        ``site_value`` (the pipeline's layer attribution: a one-element tuple holding a site
        name) capture that site as ``"site"`` and, with a value, replace it. Dropout is not
        part of these models (inference); ``dropout_rng`` must be ``None``.

        Returns ``{"logits", "captured", "attentions", "site"}`` (+ ``"hidden"``, ``"head"``,
        ``"head_params"`` with ``return_head``).
        """
        if dropout_rng is not None:
            raise ValueError("the native decoder has no dropout (its configs' dropout rates "
                             "apply to training only); drop the MC-dropout target.")
        spec = self.spec
        patch, delta = dict(patch or {}), dict(delta or {})
        avail = self.sites()
        capture = resolve_sites(capture, avail) if capture else ()
        legacy = None
        if site is not None:
            legacy = "/".join(site) if isinstance(site, (tuple, list)) else str(site)
            legacy = resolve_sites(legacy, avail)[0]
            capture = tuple(dict.fromkeys(capture + (legacy,)))
            if site_value is not None:
                value = site_value
                patch[legacy] = lambda v: value.astype(v.dtype)
        # glob keys ("blocks.*.mlp_out") apply to every site they match
        patch = {n: fn for key, fn in patch.items()
                 for n in resolve_sites(key, avail, patchable=True)}
        delta = {n: d for key, d in delta.items()
                 for n in resolve_sites(key, avail, patchable=True)}
        if output_attentions:
            capture = tuple(dict.fromkeys(capture + tuple(
                f"blocks.{l}.attn_pattern" for l in range(spec.n_layers))))
        want = set(capture)
        captured: dict = {}

        def apply(name, value):
            if name in patch:
                new = patch[name](value)
                if tuple(new.shape) != tuple(value.shape):
                    raise ValueError(f"the patch at {name!r} returned shape {new.shape}; the "
                                     f"site has shape {value.shape}.")
                value = new.astype(value.dtype)
            if name in delta:
                value = value + delta[name].astype(value.dtype)
            if name in want:
                captured[name] = value
            return value

        parsed = {n: parse_site(n) for n in list(patch) + list(delta) + list(want)}
        patched_layers = (frozenset(range(spec.n_layers)) if self.layer_loop == "unroll"
                          else frozenset(s.layer for n, s in parsed.items()
                                         if n in patch and s.layer is not None))
        scan_deltas = {}
        for n, s in parsed.items():
            if n in delta and s.layer is not None and s.layer not in patched_layers:
                if s.kind not in scan_deltas:
                    scan_deltas[s.kind] = [None] * spec.n_layers
                scan_deltas[s.kind][s.layer] = delta[n]
        for kind, items in scan_deltas.items():
            ref = next(d for d in items if d is not None)
            scan_deltas[kind] = jnp.stack([jnp.zeros_like(ref) if d is None else d
                                           for d in items])
        scan_capture = frozenset(s.kind for n, s in parsed.items()
                                 if n in want and s.layer is not None
                                 and s.layer not in patched_layers)
        embeds = self.embed(target_ids) if target_embeds is None else target_embeds
        if tuple(embeds.shape[:2]) != tuple(target_ids.shape):
            raise ValueError(f"target_embeds of shape {embeds.shape} do not match the ids "
                             f"{target_ids.shape}.")
        h, scanned = hidden_states(
            spec, self.params, embeds, target_mask, top_hook=apply,
            layer_hook=lambda l, kind, v: apply(f"blocks.{l}.{kind}", v),
            patched_layers=patched_layers, scan_deltas=scan_deltas, scan_capture=scan_capture)
        for kind, per_layer in scanned.items():
            for layer, value in per_layer.items():
                name = f"blocks.{layer}.{kind}"
                if name in want:
                    captured[name] = value
        head_params = {"head": self.params["embed"] if spec.tied else self.params["head"]}
        hidden = h
        if positions is not None:
            hidden = jnp.take_along_axis(h, positions[..., None].astype(jnp.int32), axis=1)
        out = {"captured": {n: captured[n] for n in capture if n in captured},
               "attentions": None, "site": captured.get(legacy) if legacy else None}
        if output_attentions:
            out["attentions"] = {"attentions": tuple(
                captured[f"blocks.{l}.attn_pattern"] for l in range(spec.n_layers))}
        if return_head:
            out["logits"] = head_logits(spec, head_params, jax.lax.stop_gradient(hidden))
            out.update(hidden=hidden, head=functools.partial(_head, spec),
                       head_params=head_params)
        else:
            out["logits"] = head_logits(spec, head_params, hidden)
        return out


    def causal_step_grads(self, *, target_ids: jax.Array, target_mask: jax.Array,
                          target_embeds: Optional[jax.Array], positions: jax.Array,
                          score_of: Callable, groups: tuple):
        """Per-step input gradients with exact causal truncation
        (:mod:`jaxattr.models.causal_chunks`): each step back-propagates only through the
        positions it sees, from one forward.

        Args:
          target_ids, target_mask: ``[B, L]``; target_embeds: ``[B, L, H]`` (the lookup of
            the ids when ``None``).
          positions: ``[B, T]`` the position whose logits score each step.
          score_of: ``logits [B, T, V] -> scores [B, T]``, step ``t`` reading
            ``logits[:, t]`` only (a step-separable target).
          groups: static ``((a, b, P), ...)`` from
            :func:`jaxattr.models.causal_chunks.plan_causal_chunks`.

        Returns:
          ``(scores [B, T], logits [B, T, V] (no gradient), grads [T, B, L, H])``.
        """
        from .causal_chunks import causal_step_grads
        spec = self.spec
        embeds = self.embed(target_ids) if target_embeds is None else target_embeds
        head_params = {"head": self.params["embed"] if spec.tied else self.params["head"]}
        scores, hidden, grads = causal_step_grads(
            spec, self.params, embeds, target_mask, positions,
            lambda h: score_of(head_logits(spec, head_params, h)), groups)
        logits = head_logits(spec, head_params, jax.lax.stop_gradient(hidden))
        return scores, logits, grads


def _check_layer_loop(loop: str) -> None:
    if loop not in LAYER_LOOPS:
        raise ValueError(f"layer_loop={loop!r}: use 'scan' (stacked weights, compile time "
                         "independent of depth; the default) or 'unroll' (per-layer weights, "
                         "faster warm on CPU, compile time grows with depth).")


def _layers_for(loop: str, layers, n_layers: int):
    """``layers`` (stacked dict or tuple of per-layer dicts) in the form ``loop`` needs."""
    _check_layer_loop(loop)
    return split_layers(layers, n_layers) if loop == "unroll" else stack_layers(layers)


def _head(spec, hidden, head_params):
    return head_logits(spec, head_params, hidden)


@dataclasses.dataclass
class NativeModel:
    """A loaded native checkpoint: the Hugging Face ``config`` and ``generation_config`` (token
    ids, lengths, greedy decoding settings) and ``functions`` (the :class:`NativeDecoder`).

    Attributes:
      config: the ``transformers`` config; functions: :class:`NativeDecoder`;
      generation_config: ``transformers.GenerationConfig``; name: the path.
    """
    config: Any
    functions: NativeDecoder
    generation_config: Any = None
    name: str = ""

    def __post_init__(self):
        if self.generation_config is None:
            from transformers import GenerationConfig
            self.generation_config = GenerationConfig.from_model_config(self.config)

    @property
    def params(self):
        """The parameter pytree."""
        return self.functions.params

    def generate(self, input_ids, **generation_args):
        """Only greedy decoding exists for native models, run by
        :mod:`jaxattr.generation` over :class:`NativeDecoder`; this is reached for anything
        else (sampling, beams, other processors).

        Raises:
          ValueError: always, naming the arguments.
        """
        args = sorted(k for k in generation_args if k not in ("attention_mask", "params"))
        raise ValueError(f"native models generate greedily only (max_new_tokens, eos/pad ids, "
                         f"min_length, forced BOS/EOS, suppress_tokens); got {args}. Pass "
                         "generated_texts to attribute sampled or beam-searched outputs.")


def load_native(path: str, *, dtype: Any = None, layer_loop: str = "scan") -> NativeModel:
    """Load a local Hugging Face checkpoint directory (``config.json`` + safetensors) into
    the native family, without torch.

    Args:
      path: the directory.
      dtype: parameter / computation dtype (default float32; ``jnp.bfloat16`` keeps bf16).
      layer_loop: ``"scan"`` (default: weights stacked, compile time independent of depth) or
        ``"unroll"`` (per-layer weights: faster warm on XLA CPU, compile time grows with
        depth); see :attr:`NativeDecoder.layer_loop`.

    Raises:
      UnsupportedConfigError: a config setting the native family does not implement.
      CheckpointError: missing, mis-shaped or unused tensors.
    """
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(path)
    spec = spec_from_config(config)
    _check_layer_loop(layer_loop)          # before reading the weights
    params = params_from_tensors(spec, read_tensors(path), dtype=dtype, source=path,
                                 stack=layer_loop == "scan")
    generation = None
    if os.path.isfile(os.path.join(path, "generation_config.json")):
        from transformers import GenerationConfig
        generation = GenerationConfig.from_pretrained(path)
    return NativeModel(config=config, functions=NativeDecoder(params=params, spec=spec),
                       generation_config=generation, name=path)
