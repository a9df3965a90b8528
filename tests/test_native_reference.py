"""The native decoder family against PyTorch records (benchmarks/native_side): logits at every
real position of a right-padded batch longer than the windows, input x gradient, IG
completeness, a sequence alone equal to it inside a batch. The records were made by
transformers' PyTorch classes in float64 from the committed checkpoints; nothing here imports
torch."""
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.models import NATIVE_TYPES, NativeDecoder

CKPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "native_side", "ckpt")
FAMILIES = sorted(os.listdir(CKPT))
#: dynamic NTK / LongRoPE: PyTorch's frequencies follow the padded batch length; ours each
#: sequence's own length, which PyTorch gives for the sequence run alone.
LENGTH_DEPENDENT = {"qwen3", "phi3"}


def test_every_native_family_has_a_record():
    assert sorted(FAMILIES) == sorted(NATIVE_TYPES)


@jax.jit
def _logits(fns, ids, mask):
    return fns.logits(target_ids=ids, target_mask=mask)


@functools.lru_cache(maxsize=None)
def _load(family):
    path = os.path.join(CKPT, family)
    return jaxattr.load_model(path), dict(np.load(os.path.join(path, "record.npz"))), \
        json.load(open(os.path.join(path, "texts.json")))


def test_torch_is_not_needed():
    assert "torch" not in sys.modules


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_pytorch(family):
    model, rec, _ = _load(family)
    assert isinstance(model.adapter, NativeDecoder)
    assert all(np.asarray(x).dtype == np.float32 for x in
               jax.tree_util.tree_leaves(model.params))
    logits = np.asarray(_logits(model.adapter, jnp.asarray(rec["ids"]),
                                jnp.asarray(rec["mask"])))
    real = rec["mask"] > 0
    np.testing.assert_allclose(logits[real], rec["logits_alone"][real], atol=1e-4, rtol=0)
    if family not in LENGTH_DEPENDENT:
        np.testing.assert_allclose(logits[real], rec["logits_batch"][real], atol=1e-4, rtol=0)
    else:   # the record really depends on the batch: the alone comparison is the test
        assert np.abs(rec["logits_batch"] - rec["logits_alone"])[real].max() > 1e-2
    # a sequence alone (unpadded) equals it inside the padded batch
    i = int(np.argmin(rec["length"]))
    n = int(rec["length"][i])
    alone = np.asarray(_logits(model.adapter, jnp.asarray(rec["ids"][i:i + 1, :n]),
                               jnp.ones((1, n), jnp.int32)))
    np.testing.assert_allclose(alone[0], logits[i, :n], atol=2e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_input_x_gradient_equals_pytorch(family):
    model, rec, texts = _load(family)
    out = model.attribute(texts["prompts"], texts["texts"], method="input_x_gradient",
                          attributed_fn="logprob", show_progress=False, prefix_groups=1)
    for i, seq in enumerate(out.sequence_attributions):
        n = int(rec["length"][i])
        assert list(seq.target_ids) == list(rec["ids"][i, :n])
        steps = n - int(rec["prompt_len"][i])
        ref = np.transpose(rec["ixg"][i, :steps, :n], (1, 0, 2))      # [L, S, H]
        got = seq.target_attributions
        assert got.shape == ref.shape
        known = ~np.isnan(got)      # jaxattr: NaN where the token is not yet generated
        assert not np.isnan(ref).any()
        assert np.all(ref[np.isnan(got)] == 0)   # PyTorch: those gradients are exactly 0
        scale = np.abs(ref[known]).max()
        assert np.abs(got[known] - ref[known]).max() <= 1e-4 * scale


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3", "smollm3"])
def test_integrated_gradients_complete(family):
    model, _, texts = _load(family)
    out = model.attribute(texts["prompts"], texts["texts"], method="integrated_gradients",
                          attributed_fn="logprob", n_steps=64, show_progress=False,
                          prefix_groups=1)
    for seq in out.sequence_attributions:
        delta, change = jaxattr.model.completeness(seq)
        assert np.all(np.abs(delta) <= 1e-2 * np.maximum(np.abs(change), 1e-3))
