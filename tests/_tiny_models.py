"""Tiny models shared by the value-site tests (value zeroing, its options, ALTI): the native
checkpoints of ``benchmarks/native_side/ckpt`` (``"native:llama"``) or a random transformers
Flax model of :func:`jaxattr.testing.make_model` (``"gpt2"``), loaded once per process."""
import functools
import os

import jaxattr
from jaxattr.testing import make_model

CKPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "native_side", "ckpt")


def native(name: str):
    """The native checkpoint ``name`` (``"llama"``, ``"qwen3"``, ...)."""
    return jaxattr.load_model(os.path.join(CKPT, name))


@functools.lru_cache(maxsize=None)
def tiny_model(arch: str):
    """``"native:<name>"`` or a :func:`make_model` architecture, loaded with jaxattr."""
    if arch.startswith("native:"):
        return native(arch.split(":")[1])
    model, tok = make_model(arch)
    return jaxattr.load_model(model, tokenizer=tok)
