"""A Hugging Face Flax model as pure functions of token embeddings.

:class:`ModelAdapter` is a ``flax.struct.PyTreeNode``: the parameters are its leaves, the
Hugging Face model object and the configuration are static fields. New parameters therefore
never retrace a jitted function that takes the adapter as an argument.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from ..internals.sites import SiteError, is_raw_path, parse_site, resolve_sites, site_names
from .architectures import Architecture, StackPaths
from .dropout import is_key_batch, keyed_dropout
from .hooks import (HEAD_KEY, SiteState, embedding_interceptor, head_fn, head_interceptor,
                    site_interceptor)

__all__ = ["ModelAdapter"]


def _get_path(tree, path):
    for key in path:
        tree = tree[key]
    return tree


class ModelAdapter(struct.PyTreeNode):
    """Pure functions over a Hugging Face Flax model.

    Attributes:
      params: the model parameters (pytree leaves).
      hf_model: the ``transformers`` Flax model object (static; only its ``__call__`` is used).
      encoder_path, decoder_path: module paths of the token-embedding lookups (static).
      is_encoder_decoder: static flag.
      embed_scale: factor the model applies to its embedding lookup (``sqrt(d_model)`` for
        configs with ``scale_embedding=True``: BART, mBART, Marian, Pegasus, XGLM). Attributed
        embeddings include it, as in PyTorch/Inseq, where it is part of the embedding layer.
      max_length: the longest sequence (real tokens) the Flax class computes like PyTorch
        (``None``: no limit; Flax Mistral: its sliding window). Checked host side where
        sequences are encoded.
      arch: the site table of the class (:mod:`jaxattr.adapters.architectures`; static),
        ``None`` for a class jaxattr has no table for.
      head_path: module path of the language-model head ``nn.Dense`` (the table's
        ``Architecture.head``; ``"lm_head"``, the Hugging Face name, for a class without a
        table unless ``make_adapter(head_path=...)`` says otherwise). Tied heads are applied
        unbound and recognised by this module name.
    """
    params: Any
    hf_model: Any = struct.field(pytree_node=False)
    decoder_path: tuple = struct.field(pytree_node=False)
    encoder_path: Optional[tuple] = struct.field(pytree_node=False, default=None)
    is_encoder_decoder: bool = struct.field(pytree_node=False, default=False)
    embed_scale: float = struct.field(pytree_node=False, default=1.0)
    max_length: Optional[int] = struct.field(pytree_node=False, default=None)
    arch: Optional[Architecture] = struct.field(pytree_node=False, default=None)
    head_path: str = struct.field(pytree_node=False, default="lm_head")

    # ------------------------------------------------------------------ embeddings
    def embedding_matrix(self, side: str = "decoder") -> jax.Array:
        """``[V, H]`` token-embedding table of ``side`` (``"encoder"`` or ``"decoder"``)."""
        path = self.encoder_path if side == "encoder" else self.decoder_path
        return _get_path(self.params, path)["embedding"]

    def embed(self, ids: jax.Array, *, side: str = "decoder") -> jax.Array:
        """Attributed token embeddings ``[B, L, H]`` for ``ids[B, L]``: the model's
        ``nn.Embed`` output times ``embed_scale``, before position embeddings."""
        table = self.embedding_matrix(side)
        dtype = getattr(self.hf_model, "dtype", table.dtype)
        out = jnp.take(table, ids.astype(jnp.int32), axis=0).astype(dtype)
        return out * self.embed_scale if self.embed_scale != 1.0 else out

    # ------------------------------------------------------------------ sites
    def sites(self) -> tuple:
        """Every site name this model offers, in canonical order
        (:mod:`jaxattr.internals.sites`; ``model.sites()``)."""
        cfg = self.hf_model.config
        if self.arch is None:
            if self.is_encoder_decoder:
                return ("encoder.embed", "decoder.embed", "decoder.final_norm")
            return ("embed", "final_norm")
        n_layers = {stack: _n_layers(cfg, sp) for stack, sp in self.arch.stacks}
        norms = {stack: stack in (None, "decoder") or sp.final_norm is not None
                 for stack, sp in self.arch.stacks}
        if not self.is_encoder_decoder:
            return site_names(n_layers[None], final_norm=True)
        return site_names(n_layers, final_norm=norms)

    def _stack(self, stack) -> StackPaths:
        return dict(self.arch.stacks)[stack]

    def _plan_sites(self, names) -> tuple:
        """``({module key: ((name, mode), ...)}, {head_out name: n_heads})`` for ``names``."""
        plan: dict = {}
        heads: dict = {}
        for name in names:
            if is_raw_path(name):
                plan.setdefault(name, []).append((name, "out"))
                continue
            site = parse_site(name)
            if site.kind in ("embed", "attn_pattern"):
                continue
            if site.kind == "final_norm" and site.stack != "encoder":
                plan.setdefault(HEAD_KEY, []).append((name, "in"))
                continue
            sp = self._stack(site.stack)
            path, mode = {"resid_pre": (sp.block, "in"), "resid_post": (sp.block, "out"),
                          "attn_out": (sp.attn, "out"), "mlp_out": (sp.mlp, "out"),
                          "cross_attn_out": (sp.cross, "out"),
                          "head_out": (sp.out_proj, "in"),
                          "value": (sp.value, "out"),
                          "final_norm": (sp.final_norm, "out")}[site.kind]
            if site.kind == "value" and sp.value_layout != "plain":
                # the values are a part of a fused projection's output
                mode = f"out:{sp.value_layout}:{int(getattr(self.hf_model.config, sp.n_heads))}"
            if site.kind == "head_out":
                heads[name] = int(getattr(self.hf_model.config, sp.n_heads))
            plan.setdefault(path.format(l=site.layer), []).append((name, mode))
        return plan, heads

    def _requests(self, capture, patch, delta) -> tuple:
        """Resolve names and globs: ``(capture names, {name: fn}, {name: array})``."""
        available = self.sites()
        capture = resolve_sites(capture, available, allow_raw=True) if capture else ()
        patches: dict = {}
        for key, fn in (patch or {}).items():
            if not callable(fn):
                raise TypeError(f"patch[{key!r}] must be a function value -> value; got "
                                f"{type(fn).__name__} (wrap an array v as `lambda _: v`).")
            for name in resolve_sites(key, available, allow_raw=True, patchable=True):
                patches[name] = fn
        deltas: dict = {}
        for key, value in (delta or {}).items():
            names = resolve_sites(key, available, patchable=True)
            if names != (key,):
                raise SiteError(f"delta needs one array per site; {key!r} is not a single "
                                f"site name (it matches {list(names)}).")
            deltas[key] = value
        return capture, patches, deltas

    # ------------------------------------------------------------------ forward
    def logits(self, **kwargs) -> jax.Array:
        """Teacher-forced logits ``[B, L, V]``; see :meth:`forward` for the arguments."""
        return self.forward(**kwargs)["logits"]

    def forward(
        self,
        *,
        target_ids: jax.Array,
        target_mask: jax.Array,
        target_embeds: Optional[jax.Array] = None,
        source_ids: Optional[jax.Array] = None,
        source_mask: Optional[jax.Array] = None,
        source_embeds: Optional[jax.Array] = None,
        dropout_rng: Optional[jax.Array] = None,
        positions: Optional[jax.Array] = None,
        return_head: bool = False,
        output_attentions: bool = False,
        capture: Sequence[str] = (),
        patch: Optional[Mapping[str, Callable]] = None,
        delta: Optional[Mapping[str, jax.Array]] = None,
    ) -> dict:
        """One teacher-forced forward; ``logits[:, i]`` predicts target token ``i+1``.

        Decoder-only: ``target_*`` is the whole sequence (prompt + continuation). Encoder-
        decoder: ``source_*`` feeds the encoder, ``target_*`` (starting with the decoder start
        token) the decoder. Given ``*_embeds`` replace the embedding lookup of that side
        (intercepted inside the traced function), which is what attribution differentiates.
        ``dropout_rng`` turns dropout on (train mode), e.g. for MC-dropout targets: one key
        (the model's own dropout, masks drawn over the whole batch) or typed keys ``[B]``, one
        per example (:mod:`jaxattr.adapters.dropout`: each example's masks from its own key
        and positions, so they do not depend on its row, its batch or the padding).

        Sites (:mod:`jaxattr.internals.protocol`): ``capture`` names or globs (or raw module
        paths, whose output — its first element for a tuple — is taken) are returned in
        ``"captured"`` as ``[B, L, ...]``; ``patch`` ``{name or glob: fn}`` replaces a site's
        value by ``fn(value)``; ``delta`` ``{name: array}`` adds to it (after ``patch``).
        Everything happens in this one traced forward.

        ``positions[B, T]`` asks for the logits at those positions only: the hidden states are
        gathered *before* the language-model head (the table's head path), so neither the
        head's matmul nor its backward pass runs over positions that are not scored.
        The forward is composed of three interceptors (:mod:`jaxattr.adapters.hooks`):
        embedding replacement, sites, and the LM-head gather.
        ``return_head`` (with ``positions``) also returns the head split off the network:
        ``"hidden"`` ``[B, T, H]``, the head's input at the scored positions, ``"head"``, a
        pure function ``(hidden, head_params) -> logits [B, T, V]`` (the head ``nn.Dense``
        plus whatever the model adds afterwards, e.g. BART's ``final_logits_bias``) and
        ``"head_params"``. Then ``"logits"`` is computed from the stop-gradient of
        ``"hidden"``: differentiate through ``head``. All three are ``None`` when no head
        was found. ``output_attentions`` adds the model's attention weights under
        ``"attentions"``.

        Returns ``{"logits": [B, L, V] (or [B, T, V] with positions), "captured": {name:
        array}, "attentions": dict or None}`` (plus ``"hidden"``, ``"head"``,
        ``"head_params"`` with ``return_head``).
        """
        capture, patches, deltas = self._requests(capture, patch, delta)
        wanted = tuple(dict.fromkeys(capture + tuple(patches) + tuple(deltas)))
        plan, heads = self._plan_sites(wanted)
        shapes = ({"encoder": source_ids.shape, "decoder": target_ids.shape}
                  if self.is_encoder_decoder else {None: target_ids.shape})
        state = SiteState(plan, shapes, heads, capture, patches, deltas)
        embed_icpt, roles, calls = self._embedding_piece(state, wanted, source_embeds,
                                                         target_embeds)
        patterns = tuple(n for n in capture
                         if not is_raw_path(n) and parse_site(n).kind == "attn_pattern")
        pieces = [embed_icpt, site_interceptor(state, self.head_path)]
        parts = None
        if positions is not None:
            head_icpt, parts = head_interceptor(positions, return_head, self.head_path,
                                                target_ids.shape[1])
            pieces.append(head_icpt)
        out = self._call_model(pieces, target_ids, target_mask, source_ids, source_mask,
                               dropout_rng=dropout_rng,
                               output_attentions=output_attentions or bool(patterns))
        self._check_calls(roles, calls, state, wanted)
        captured = dict(state.captured)
        for name in patterns:
            site = parse_site(name)
            captured[name] = getattr(out, self._stack(site.stack).attentions)[site.layer]
        captured = {name: captured[name] for name in capture}
        return self._result(out, positions, parts, return_head, output_attentions, captured)

    def _embedding_piece(self, state: SiteState, wanted: tuple, source_embeds,
                         target_embeds) -> tuple:
        """``(interceptor, roles, calls)``: the embedding replacement, feeding the ``embed``
        sites through ``state`` (:func:`~jaxattr.adapters.hooks.embedding_interceptor`)."""
        embed_names = {role: (f"{role}.embed" if self.is_encoder_decoder else "embed")
                       for role in ("encoder", "decoder")}
        embed_roles = frozenset(r for r, n in embed_names.items() if n in wanted)
        roles: dict[tuple, list] = {}
        if self.is_encoder_decoder:
            roles.setdefault(tuple(self.encoder_path), []).append("encoder")
        roles.setdefault(tuple(self.decoder_path), []).append("decoder")
        icpt, calls = embedding_interceptor(
            roles, {"encoder": source_embeds, "decoder": target_embeds}, self.embed_scale,
            lambda role, emb: (state.apply(embed_names[role], emb)
                               if embed_names[role] in wanted else emb), embed_roles)
        return icpt, roles, calls

    def _call_model(self, interceptors, target_ids, target_mask, source_ids, source_mask, *,
                    dropout_rng, output_attentions: bool):
        """One call of the Hugging Face model inside the given interceptors (outermost
        first)."""
        kwargs = dict(params=self.params)
        per_example = is_key_batch(dropout_rng)
        if dropout_rng is not None:  # per example: the model's own draws are never used
            kwargs.update(dropout_rng=jax.random.PRNGKey(0) if per_example else dropout_rng,
                          train=True)
        if output_attentions:
            kwargs["output_attentions"] = True
        with contextlib.ExitStack() as stack:
            for icpt in interceptors:
                stack.enter_context(nn.intercept_methods(icpt))
            if per_example:  # innermost: the site hooks see the dropped-out values
                stack.enter_context(keyed_dropout(dropout_rng))
            if self.is_encoder_decoder:
                return self.hf_model(
                    input_ids=source_ids, attention_mask=source_mask,
                    decoder_input_ids=target_ids, decoder_attention_mask=target_mask, **kwargs)
            return self.hf_model(input_ids=target_ids, attention_mask=target_mask, **kwargs)

    def _check_calls(self, roles, calls, state, wanted) -> None:
        for path, role_list in roles.items():
            if calls.get(path, 0) < len(role_list):
                raise RuntimeError(
                    f"The embedding module {'/'.join(path)} was called {calls.get(path, 0)} "
                    f"time(s) but {len(role_list)} call(s) were expected; this model class does "
                    "not use the path of jaxattr's table. Pass `embedding_paths=` to load_model.")
        for name in wanted:
            if name in state.hit:
                continue
            if is_raw_path(name):
                raise ValueError(f"No module at layer path {name!r} was called. Module "
                                 f"paths called in a forward pass: {state.called}.")
            if parse_site(name).kind not in ("embed", "attn_pattern"):
                raise RuntimeError(f"site {name!r} was not reached in the forward of "
                                   f"{type(self.hf_model).__name__}: jaxattr's site table "
                                   "does not match this class.")

    def _result(self, out, positions, parts, return_head, output_attentions, captured):
        logits = out.logits
        if positions is not None and len(parts["calls"]) != 1:
            if parts["calls"]:
                raise RuntimeError(f"found {len(parts['calls'])} language-model heads "
                                   f"{parts['calls']}; expected one.")
            logits = jnp.take_along_axis(logits, positions[..., None].astype(jnp.int32), 1)
        attentions = None
        if output_attentions:
            keys = ("attentions", "encoder_attentions", "decoder_attentions", "cross_attentions")
            attentions = {k: getattr(out, k) for k in keys if getattr(out, k, None) is not None}
        result = {"logits": logits, "captured": captured, "attentions": attentions}
        if return_head:
            result.update(hidden=None, head=None, head_params=None)
            if parts is not None and "out" in parts:
                if parts["out"].shape != logits.shape:
                    raise RuntimeError(
                        f"the language-model head's output {parts['out'].shape} and the "
                        f"model's logits {logits.shape} differ; attribute with "
                        "split_head=False for this model.")
                head, head_params = head_fn(parts, logits)
                result.update(hidden=parts["hidden"], head=head, head_params=head_params)
        return result


def _n_layers(cfg, sp: StackPaths) -> int:
    n = getattr(cfg, sp.n_layers, None)
    if n is None and sp.n_layers == "num_decoder_layers":  # T5: same as the encoder
        n = cfg.num_layers
    return int(n)


