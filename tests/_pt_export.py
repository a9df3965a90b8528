"""Write a Flax model's params as a PyTorch-layout ``model.safetensors`` without torch.

The inverse of transformers' PyTorch -> Flax renaming: ``kernel`` -> ``weight`` (transposed),
``embedding`` -> ``weight``, LayerNorm ``scale`` -> ``weight``; keys joined with ``.``. Loading
the result back with ``from_pt=True`` and comparing params is a round trip through
transformers' own converter.
"""
import os

import numpy as np
from flax.traverse_util import flatten_dict
from safetensors.numpy import save_file


def export_pt_safetensors(model, tokenizer, path, *, prefix_from_base=True):
    os.makedirs(path, exist_ok=True)
    flat = flatten_dict(model.params)
    state = {}
    for key, value in flat.items():
        value = np.asarray(value, np.float32)
        *mods, leaf = key
        if leaf == "kernel":
            leaf, value = "weight", value.T if value.ndim == 2 else value
        elif leaf in ("embedding", "scale"):
            leaf = "weight"
        state[".".join([*mods, leaf])] = np.ascontiguousarray(value)
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
