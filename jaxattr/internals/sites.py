"""One naming of model sites for every architecture.

A *site* is a named activation inside a forward pass. The same names serve every model family,
so analyses (lenses, patching, probing, layer attribution) never spell architecture-specific
module paths::

    embed                          attributed token embeddings            [B, L, H]
    blocks.{l}.resid_pre           residual stream entering block l       [B, L, H]
    blocks.{l}.value               self-attention value vectors, all
                                   (key-value) heads side by side         [B, L, kv_heads*d_head]
    blocks.{l}.attn_out            attention sublayer output, as added    [B, L, H]
    blocks.{l}.router_probs        mixture-of-experts models only: the
                                   router's softmax over the experts,
                                   before top-k (float32)                 [B, L, experts]
    blocks.{l}.mlp_out             MLP sublayer output, as added          [B, L, H]
    blocks.{l}.resid_post          residual stream leaving block l        [B, L, H]
    blocks.{l}.attn_pattern        attention weights (capture only)       [B, heads, L, L]
    blocks.{l}.head_out            each head's output before the output
                                   projection                             [B, L, heads, d_head]
    final_norm                     the input of the language-model head   [B, L, H]

Encoder-decoder models put ``encoder.`` or ``decoder.`` before every name
(``encoder.embed``, ``decoder.blocks.3.mlp_out``) and add
``decoder.blocks.{l}.cross_attn_out`` ``[B, L, H]``. Encoder-decoder models have
``decoder.final_norm`` (the head's input) and ``encoder.final_norm`` where the encoder ends in a
norm.

Patterns use shell-style globs (``blocks.*.mlp_out``, ``decoder.blocks.*.resid_post``) wherever
a list of sites is accepted; :func:`resolve_sites` expands them against the names a model
offers, keeping the model's order (by stack, then layer, then kind as listed above).

This module only names sites. The forward that captures, patches and differentiates them is
each backend's (:mod:`jaxattr.internals.protocol`).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Iterable, Optional, Sequence, Union

__all__ = ["Site", "SiteError", "BLOCK_KINDS", "MOE_KINDS", "CAPTURE_ONLY", "parse_site",
           "site_names",
           "resolve_sites", "is_raw_path", "summarize"]

#: Per-block site kinds in their canonical order.
BLOCK_KINDS = ("resid_pre", "value", "attn_pattern", "head_out", "attn_out", "cross_attn_out",
               "router_probs", "mlp_out", "resid_post")
#: Kinds only mixture-of-experts models have (not in :func:`site_names`' default).
MOE_KINDS = ("router_probs",)
_DEFAULT_KINDS = tuple(k for k in BLOCK_KINDS if k not in MOE_KINDS)
#: Kinds that can be captured but not patched or given a delta.
CAPTURE_ONLY = frozenset({"attn_pattern"})
_STACKS = ("encoder", "decoder")
_TOP_LEVEL = ("embed", "final_norm")
_NAME = re.compile(r"^(?:(?P<stack>encoder|decoder)\.)?"
                   r"(?:(?P<top>embed|final_norm)|blocks\.(?P<layer>\d+)\.(?P<kind>[a-z_]+))$")


class SiteError(ValueError):
    """A site name or pattern that the model does not offer."""


@dataclasses.dataclass(frozen=True, order=True)
class Site:
    """A parsed site name.

    Attributes:
      stack: ``None`` (decoder-only), ``"encoder"`` or ``"decoder"``.
      layer: block index, ``None`` for ``embed`` and ``final_norm``.
      kind: ``"embed"``, ``"final_norm"`` or one of :data:`BLOCK_KINDS`.
    """
    stack: Optional[str]
    layer: Optional[int]
    kind: str

    @property
    def name(self) -> str:
        """The canonical string, e.g. ``"decoder.blocks.3.mlp_out"``."""
        base = self.kind if self.layer is None else f"blocks.{self.layer}.{self.kind}"
        return base if self.stack is None else f"{self.stack}.{base}"

    @property
    def patchable(self) -> bool:
        """Whether ``patch`` / ``delta`` may target this site (attention patterns may not)."""
        return self.kind not in CAPTURE_ONLY

    def __str__(self) -> str:
        return self.name


def is_raw_path(name: str) -> bool:
    """A raw module path (``"transformer/h/3/mlp"``) of the legacy adapter, not a site name."""
    return "/" in name


def parse_site(name: str) -> Site:
    """Parse a canonical site name (no globs).

    Raises:
      SiteError: the string is not of the site grammar (the message shows the grammar).
    """
    if not isinstance(name, str):
        raise SiteError(f"a site name must be a string, got {type(name).__name__} {name!r}.")
    m = _NAME.match(name)
    if m is None or (m["kind"] is not None and m["kind"] not in BLOCK_KINDS):
        raise SiteError(
            f"{name!r} is not a site name. Sites are 'embed', 'final_norm' or "
            f"'blocks.<layer>.<kind>' with kind one of {list(BLOCK_KINDS)}, prefixed by "
            "'encoder.' or 'decoder.' on encoder-decoder models (e.g. 'blocks.3.mlp_out', "
            "'decoder.blocks.0.resid_pre'); model.sites() lists the model's own.")
    layer = None if m["layer"] is None else int(m["layer"])
    return Site(stack=m["stack"], layer=layer, kind=m["top"] or m["kind"])


def site_names(n_layers: Union[int, dict], *, kinds: Sequence[str] = _DEFAULT_KINDS,
               final_norm: Union[bool, dict] = True) -> tuple:
    """Every site name of a model, in canonical order.

    Args:
      n_layers: number of blocks (decoder-only), or ``{"encoder": n, "decoder": m}``.
      kinds: the per-block kinds the model offers (``cross_attn_out`` is only ever listed for
        a decoder stack of an encoder-decoder model); default every kind but
        :data:`MOE_KINDS`.
      final_norm: whether the stack ends in a norm whose output is offered as ``final_norm``
        (per stack with a dict).

    Returns:
      A tuple of names such as ``("embed", "blocks.0.resid_pre", ..., "final_norm")``.
    """
    stacks = n_layers if isinstance(n_layers, dict) else {None: n_layers}
    names = []
    for stack, n in stacks.items():
        prefix = "" if stack is None else f"{stack}."
        names.append(f"{prefix}embed")
        for layer in range(n):
            for kind in kinds:
                if kind == "cross_attn_out" and stack != "decoder":
                    continue
                names.append(f"{prefix}blocks.{layer}.{kind}")
        has_norm = final_norm.get(stack, True) if isinstance(final_norm, dict) else final_norm
        if has_norm:
            names.append(f"{prefix}final_norm")
    return tuple(names)


def resolve_sites(patterns: Union[str, Iterable[str]], available: Sequence[str], *,
                  allow_raw: bool = False, patchable: bool = False) -> tuple:
    """Expand names and globs against the sites a model offers.

    Args:
      patterns: a name or glob, or an iterable of them (``"blocks.*.mlp_out"``).
      available: the model's site names (``model.sites()``), in canonical order.
      allow_raw: pass raw module paths (strings with ``/``) through unchanged, after the
        named sites (the legacy adapter accepts them).
      patchable: refuse capture-only sites (attention patterns), for ``patch`` / ``delta``.

    Returns:
      The matched names without duplicates, in the order of ``available``.

    Raises:
      SiteError: a pattern matches nothing (the message lists the valid names, compressed as
        globs over layers), or a capture-only site was asked to be patched.
    """
    if isinstance(patterns, str):
        patterns = (patterns,)
    patterns = tuple(patterns)
    if not patterns:
        raise SiteError("no site given; model.sites() lists the valid names, and globs such "
                        "as 'blocks.*.resid_post' select several.")
    chosen, raw = set(), []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise SiteError(f"site names are strings; got {type(pattern).__name__} {pattern!r}.")
        if is_raw_path(pattern):
            if not allow_raw:
                raise SiteError(f"{pattern!r} is a raw module path; here sites are named "
                                f"({summarize(available)}).")
            raw.append(pattern)
            continue
        hits = fnmatch.filter(available, pattern)
        if not hits:
            raise SiteError(f"no site matches {pattern!r}. This model's sites: "
                            f"{summarize(available)}.")
        chosen.update(hits)
    out = tuple(name for name in available if name in chosen)
    if patchable:
        bad = [n for n in out if not parse_site(n).patchable]
        if bad:
            raise SiteError(f"{bad} can be captured but not patched or differentiated; "
                            "patch 'blocks.<l>.head_out' or 'blocks.<l>.attn_out' instead.")
    return out + tuple(dict.fromkeys(raw))


def summarize(names: Sequence[str]) -> str:
    """The names with layer numbers folded into globs: ``'embed', 'blocks.{0..11}.mlp_out',
    …`` (for error messages)."""
    groups: dict = {}
    for name in names:
        site = parse_site(name)
        key = (site.stack, site.kind if site.layer is not None else None, name)
        if site.layer is None:
            groups[key] = None
        else:
            key = (site.stack, site.kind, None)
            groups.setdefault(key, []).append(site.layer)
    parts = []
    for (stack, kind, name), layers in groups.items():
        if layers is None:
            parts.append(repr(name))
        else:
            prefix = "" if stack is None else f"{stack}."
            span = f"{min(layers)}..{max(layers)}" if len(layers) > 1 else str(layers[0])
            parts.append(f"'{prefix}blocks.{{{span}}}.{kind}'")
    return ", ".join(parts)
