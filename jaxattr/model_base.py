"""The model object's base: the model and tokenizer, their properties, tokenisation,
generation and the internals entry points (``sites``, ``run_with_cache``,
``run_with_patches``). :class:`~jaxattr.model.AttributionModel` adds attribution on top.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import jax

from . import _compat
from .adapters import make_adapter
from .batching import site_arrays
from .encoding import EncodedSequence, _as_list, encode_decoder_only, encode_encoder_decoder
from .spec import baseline_ids
from .text_generation import generate_ids

__all__ = ["ModelBase"]


class ModelBase:
    """Model, tokenizer and everything but attribution (see :class:`AttributionModel`)."""

    def __init__(self, hf_model, tokenizer, *, name: Optional[str] = None,
                 embedding_paths: Optional[dict] = None,
                 attribution_method: Union[str, Callable, None] = None):
        _compat.apply(getattr(hf_model.config, "model_type", None))
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.config = hf_model.config
        self.name = name or getattr(self.config, "_name_or_path", None) or type(hf_model).__name__
        from .models import NativeModel
        if isinstance(hf_model, NativeModel):   # our own forward: no adapter needed
            self.adapter = hf_model.functions
        else:
            self.adapter = make_adapter(hf_model, embedding_paths=embedding_paths)
        self.attribution_method = attribution_method or "saliency"

    # ------------------------------------------------------------------ properties
    @property
    def is_encoder_decoder(self) -> bool:
        return self.adapter.is_encoder_decoder

    @property
    def params(self):
        return self.adapter.params

    @property
    def max_positions(self) -> Optional[int]:
        """Longest sequence the model's position embeddings allow (``None``: no limit; the
        native RoPE family has no position table, ``max_position_embeddings`` is where its
        RoPE scaling starts, not a limit)."""
        from .models import NativeDecoder
        if isinstance(self.adapter, NativeDecoder):
            return None
        for key in ("n_positions", "max_position_embeddings"):
            value = getattr(self.config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def pad_token_id(self) -> int:
        for v in (self.tokenizer.pad_token_id, getattr(self.config, "pad_token_id", None),
                  self.tokenizer.eos_token_id):
            if v is not None:
                return int(v)
        return 0

    @property
    def decoder_start_token_id(self) -> int:
        v = getattr(self.config, "decoder_start_token_id", None)
        return self.pad_token_id if v is None else int(v)

    def with_params(self, params) -> "ModelBase":
        """A copy that uses ``params`` (same compiled programs: params are pytree leaves)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("_replicated", None)  # replicas of the old params are not these
        new.adapter = self.adapter.replace(params=params)
        return new

    # ------------------------------------------------------------------ internals
    def sites(self) -> tuple:
        """Every site name of this model (:mod:`jaxattr.internals.sites`), in order."""
        return self.adapter.sites()

    def run_with_cache(self, input_texts, generated_texts=None, *,
                       sites: Union[str, Sequence[str]] = ("blocks.*.resid_post",),
                       batch_size: Optional[int] = None):
        """Run the model on texts and capture activations at ``sites`` in the same forward.

        Args:
          input_texts: a text or list (decoder-only: the prompts; encoder-decoder: sources).
          generated_texts: forced outputs as for :meth:`attribute` (decoder-only: full texts
            starting with the prompt). ``None``: decoder-only runs on the inputs alone, an
            encoder-decoder decoder sees only its start token.
          sites: site names or globs (``model.sites()`` lists them); raw module paths too.
          batch_size: rows per compiled call (``None``: all at once); every batch is padded to
            the longest text, so the results stack.

        Returns:
          ``(logits, cache)``: ``logits`` ``[B, L, V]`` (``logits[:, i]`` predicts token
          ``i + 1``) and an :class:`~jaxattr.internals.ActivationCache` with ``cache[name]``
          ``[B, L, ...]`` right-padded, ``cache.mask`` and ``cache.tokens`` ``[B, L]``.

        Raises:
          SiteError: a name or glob matches no site (the message lists the valid ones).
        """
        return self.run_with_patches(input_texts, generated_texts, sites=sites,
                                     batch_size=batch_size)

    def run_with_patches(self, input_texts, generated_texts=None, *,
                         patch: Optional[dict] = None, delta: Optional[dict] = None,
                         sites: Union[str, Sequence[str]] = (),
                         batch_size: Optional[int] = None):
        """:meth:`run_with_cache` with site values patched or shifted in the same forward.

        Args:
          patch: ``{site or glob: value}``; an array ``[B, L, ...]`` (as a cache holds it,
            e.g. another run's ``cache[name]``) replaces the site's value, a function
            ``value -> value`` transforms it (``lambda o: o + mask * (v - o)``).
          delta: ``{site: array}`` added to the site's value (after ``patch``).
          sites, batch_size, input_texts, generated_texts: as for :meth:`run_with_cache`;
            with ``batch_size``, arrays are split by rows and functions see one batch.

        Returns:
          ``(logits, cache)`` as :meth:`run_with_cache` (the cache holds the patched values).
        """
        from .internals import resolve_sites
        from .internals.cache import run_sites
        names = resolve_sites(sites, self.sites(), allow_raw=True) if sites else ()
        arrays = site_arrays(self, _as_list(input_texts, "input_texts"), generated_texts)
        n = arrays["target_ids"].shape[0]
        bs = batch_size or n
        logits, caches = [], []
        for a in range(0, n, bs):
            rows = {k: (None if v is None else v[a:a + bs]) for k, v in arrays.items()}
            cut = {k: (v if callable(v) else v[a:a + bs]) for k, v in (patch or {}).items()}
            lg, cache = run_sites(self.adapter, capture=names, patch=cut,
                                  delta={k: v[a:a + bs] for k, v in (delta or {}).items()},
                                  **rows)
            logits.append(lg)
            caches.append(cache)
        if len(caches) == 1:
            return logits[0], caches[0]
        return (jax.numpy.concatenate(logits),
                jax.tree_util.tree_map(lambda *xs: jax.numpy.concatenate(xs), *caches))

    # ------------------------------------------------------------------ encoding
    def encode(self, input_texts, generated_texts, *, attr_pos_start=None,
               attr_pos_end=None) -> list[EncodedSequence]:
        """Tokenise inputs and forced outputs into :class:`EncodedSequence` (validated)."""
        if self.is_encoder_decoder:
            return encode_encoder_decoder(
                self.tokenizer, input_texts, generated_texts,
                decoder_start_token_id=self.decoder_start_token_id,
                max_positions=self.max_positions, attr_pos_start=attr_pos_start,
                attr_pos_end=attr_pos_end)
        return encode_decoder_only(self.tokenizer, input_texts, generated_texts,
                                   max_positions=self.max_positions,
                                   attr_pos_start=attr_pos_start, attr_pos_end=attr_pos_end)

    # ------------------------------------------------------------------ generation
    def generate(self, input_texts, *, batch_size: Optional[int] = None,
                 **generation_args) -> list[str]:
        """Generate continuations (greedy by default), batched. Returns output texts:
        decoder-only, the full text (prompt + continuation); encoder-decoder, the output."""
        gens = self._generate_ids(_as_list(input_texts, "input_texts"), batch_size=batch_size,
                                  **generation_args)
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for _, ids in gens]

    def _generate_ids(self, texts, *, batch_size=None, **generation_args):
        """:func:`jaxattr.text_generation.generate_ids` of this model."""
        return generate_ids(self, texts, batch_size=batch_size, **generation_args)


    def _baseline_ids(self, arrays: dict, kind: str) -> dict:
        """Id-based baseline arrays (:func:`jaxattr.spec.baseline_ids`) for ``kind``
        ``"unk"`` (PAD when the tokenizer has no UNK) or ``"pad"``."""
        tok = self.tokenizer
        token = tok.unk_token_id if kind == "unk" else None
        return baseline_ids(arrays, self.pad_token_id if token is None else token,
                            tok.all_special_ids)

    def _placed_adapter(self, mesh):
        """The adapter, with parameters replicated over ``mesh`` when one is given."""
        if mesh is None:
            return self.adapter
        cache = self.__dict__.setdefault("_replicated", {})
        hit = cache.get(mesh)
        if hit is None or hit[0] is not self.adapter:  # replicas only of these very params
            from jax.sharding import NamedSharding, PartitionSpec
            hit = cache[mesh] = (self.adapter, jax.device_put(
                self.adapter, NamedSharding(mesh, PartitionSpec())))
        return hit[1]
