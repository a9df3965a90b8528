"""Loading Hugging Face Flax checkpoints (Flax or PyTorch safetensors weights)."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Optional

from . import _compat

__all__ = ["load_hf_model", "load_pt_without_init", "load_flax_without_init",
           "weights_format", "supported_architectures", "UnsupportedModelError",
           "IncompleteCheckpointError"]


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture has no Flax class in transformers."""


class IncompleteCheckpointError(ValueError):
    """Loading would leave some parameter randomly initialised (missing or tied weights)."""


@contextlib.contextmanager
def _refuse_random_init(name: str):
    """Turn transformers' "newly initialized" warning (a parameter the checkpoint lacks, which
    ``from_pretrained`` fills at random) into :class:`IncompleteCheckpointError`."""
    import logging
    seen: list = []

    class _Catch(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if "newly initialized" in msg:
                seen.append(msg)

    logger = logging.getLogger("transformers.modeling_flax_utils")
    handler, level = _Catch(level=logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)   # seen even when the user silenced transformers
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    if seen:
        raise IncompleteCheckpointError(
            f"{name!r}: the checkpoint lacks parameters that transformers would initialise at "
            f"random (a missing or tied weight): {seen[0]}. Attributions of such a model are "
            "meaningless; use a complete checkpoint (for tied Llama heads, load the directory "
            "with jaxattr.load_model(path), whose native family ties them).")


def _auto_classes():
    from transformers import FlaxAutoModelForCausalLM, FlaxAutoModelForSeq2SeqLM
    return FlaxAutoModelForCausalLM, FlaxAutoModelForSeq2SeqLM


def supported_architectures() -> dict:
    """``{"decoder-only": [model types], "encoder-decoder": [model types]}`` with Flax classes."""
    causal, s2s = _auto_classes()
    names = lambda auto: sorted(cfg.model_type for cfg in auto._model_mapping.keys())  # noqa: E731
    return {"decoder-only": names(causal), "encoder-decoder": names(s2s)}


def weights_format(path: str) -> Optional[str]:
    """``"flax"`` or ``"pt"``: the framework of the weights in local directory ``path``
    (``flax_model.msgpack`` and Flax-saved ``model.safetensors`` are ``"flax"``; a safetensors
    file says which in its metadata, PyTorch's when it says nothing), ``None`` when it has none.
    """
    if any(os.path.exists(os.path.join(path, f))
           for f in ("flax_model.msgpack", "flax_model.msgpack.index.json")):
        return "flax"
    file = os.path.join(path, "model.safetensors")
    if os.path.isfile(file):
        from safetensors import safe_open
        with safe_open(file, framework="numpy") as f:
            meta = f.metadata() or {}
        return "flax" if meta.get("format") == "flax" else "pt"
    if any(os.path.exists(os.path.join(path, f)) for f in (
            "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        return "pt"
    return None


def load_hf_model(name_or_path: str, *, dtype: Any = None, **model_kwargs):
    """Load the Flax model for a hub id or a local directory.

    The auto class (causal LM or seq2seq) is chosen from the config. Flax weights
    (``flax_model.msgpack``, Flax ``model.safetensors``) are read straight into a model built
    without transformers' random initialisation (:func:`load_flax_without_init`); PyTorch
    ``model.safetensors`` are converted the same way (:func:`load_pt_without_init`; no torch
    needed). What those do not cover (a checkpoint missing some parameters, sharded PyTorch
    files) takes transformers' standard path. Returns ``(model, config)``.
    """
    from transformers import AutoConfig

    from .adapters.flax_guard import check_flax_config
    config = AutoConfig.from_pretrained(name_or_path)
    _compat.apply(config.model_type)
    check_flax_config(config)
    causal, s2s = _auto_classes()
    auto = s2s if getattr(config, "is_encoder_decoder", False) else causal
    if type(config) not in auto._model_mapping:
        kinds = supported_architectures()
        raise UnsupportedModelError(
            f"{name_or_path!r} is a {config.model_type!r} model "
            f"({'encoder-decoder' if config.is_encoder_decoder else 'decoder-only'}), which has "
            f"no Flax class in transformers. jaxattr attributes Flax models: supported "
            f"decoder-only types {kinds['decoder-only']}, encoder-decoder types "
            f"{kinds['encoder-decoder']}. Pick a checkpoint of one of these architectures.")
    kwargs = dict(model_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    local = os.path.isdir(name_or_path)
    fmt = weights_format(name_or_path) if local else None
    if "from_pt" not in kwargs and local:
        kwargs["from_pt"] = fmt == "pt"
    if not kwargs.get("from_pt") and (fmt == "flax" or not local):
        model = load_flax_without_init(auto, name_or_path, config, **kwargs)
        if model is not None:
            return model, config
    if kwargs.get("from_pt") or not local:
        pt_dir = name_or_path if local else _cached_pt_dir(name_or_path)
        if pt_dir is not None:
            model = load_pt_without_init(auto, pt_dir, config, **{
                k: v for k, v in kwargs.items() if k != "from_pt"})
            if model is not None:
                return model, config
    with _refuse_random_init(name_or_path):
        try:
            model = auto.from_pretrained(name_or_path, config=config, **kwargs)
        except (OSError, EnvironmentError):
            if kwargs.get("from_pt") or local:
                raise
            model = auto.from_pretrained(name_or_path, config=config, from_pt=True, **kwargs)
    return model, config


def load_flax_without_init(auto, name_or_path: str, config, **model_kwargs):
    """A Flax model with the Flax weights of ``name_or_path`` (local directory or hub id),
    without random initialisation.

    transformers' ``from_pretrained`` builds the model by initialising every parameter at
    random (about a hundred small compiled programs: seconds) and then overwrites them with the
    checkpoint. With ``_do_init=False`` it only reads the checkpoint (``flax_model.msgpack``,
    sharded msgpack or Flax ``model.safetensors``, with transformers' own handling of the
    base-model prefix); the parameters are then attached to the model and moved to the
    default device. Returns ``None`` — the caller then takes the standard path — when the
    checkpoint has no Flax weights or lacks some parameter (the standard path initialises
    those and warns).
    """
    import jax
    from flax.traverse_util import flatten_dict
    try:
        model, params = auto.from_pretrained(name_or_path, config=config, _do_init=False,
                                             **model_kwargs)
    except (OSError, EnvironmentError, ValueError, TypeError):
        return None
    if model.required_params - set(flatten_dict(params)):
        return None
    _compat.attach_params(model, jax.device_put(params, jax.devices()[0]))
    return model


def _cached_pt_dir(name: str) -> Optional[str]:
    """The local snapshot directory holding hub repo ``name``'s ``model.safetensors``
    (downloaded if needed), or ``None`` when it has none."""
    from transformers.utils import cached_file
    try:
        file = cached_file(name, "model.safetensors", _raise_exceptions_for_missing_entries=False)
    except (OSError, EnvironmentError):
        return None
    return os.path.dirname(file) if file else None


def load_pt_without_init(auto, path: str, config, **model_kwargs):
    """A Flax model with the weights of ``path/model.safetensors``, without random init.

    transformers' ``from_pretrained(from_pt=True)`` first initialises every parameter at random,
    op by op, then overwrites them with the converted checkpoint; for GPT-2-124M in a fresh
    process that takes ~8 of its ~10 s. Here the model is built with ``_do_init=False`` (shapes
    only), the safetensors tensors are converted by transformers' own PyTorch -> Flax converter
    against those shapes, and the result is attached to the model. Returns ``None`` — the
    caller then takes the standard path — for anything this does not cover: no single
    ``model.safetensors``, keyword arguments other than ``dtype``, or a checkpoint that lacks
    some parameter (the standard path then refuses it with
    :class:`IncompleteCheckpointError`).
    """
    file = os.path.join(path, "model.safetensors")
    if not os.path.isfile(file) or set(model_kwargs) - {"dtype"}:
        return None
    from flax.traverse_util import flatten_dict
    from safetensors import safe_open
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    model = auto.from_config(config, _do_init=False, **model_kwargs)

    class _Shapes:  # what the converter reads from a model: parameter shapes and prefix
        params = model.params_shape_tree
        base_model_prefix = model.base_model_prefix

    with safe_open(file, framework="flax") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    try:
        params = convert_pytorch_state_dict_to_flax(state, _Shapes)
    except ValueError:       # shape mismatch: let the standard path report it
        return None
    if model.required_params - set(flatten_dict(params)):
        return None
    _compat.attach_params(model, params)
    return model
