"""The adapter's forward as composable pieces: the LM-head gather finds the head at the path
the architecture table names (not "the nn.Dense with vocab-size features"), and without it
the forward still gives the same logits (gathered after the head)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr.adapters import ARCHITECTURES, make_adapter


def _ids(model, text):
    ids = jnp.asarray([model.tokenizer(text)["input_ids"]], jnp.int32)
    return ids, jnp.ones_like(ids)


@pytest.mark.parametrize("fixture", ["gpt2", "marian", "t5"])
def test_head_piece_finds_the_table_head_and_splits_it_off(request, fixture):
    model = request.getfixturevalue(fixture)
    adapter = model.adapter
    assert adapter.head_path == ARCHITECTURES[type(model.hf_model).__name__].head
    ids, mask = _ids(model, "The cat sat on the mat")
    kw = dict(target_ids=ids, target_mask=mask)
    if adapter.is_encoder_decoder:
        kw.update(source_ids=ids, source_mask=mask)
    positions = jnp.asarray([[0, 2, 3]], jnp.int32)
    full = adapter.forward(**kw)["logits"]
    split = adapter.forward(**kw, positions=positions, return_head=True)
    assert split["head"] is not None and split["hidden"].shape[:2] == positions.shape
    gathered = np.take_along_axis(np.asarray(full), np.asarray(positions)[..., None], 1)
    np.testing.assert_allclose(np.asarray(split["logits"]), gathered, rtol=1e-5, atol=1e-6)
    # the split-off head maps the gathered hidden states back to those logits
    again = split["head"](split["hidden"], split["head_params"])
    np.testing.assert_allclose(np.asarray(again), gathered, rtol=1e-5, atol=1e-6)

    # A head path that names nothing: no head is split off, the logits are still right.
    blind = adapter.replace(head_path="no/such/head")
    out = blind.forward(**kw, positions=positions, return_head=True)
    assert out["head"] is None
    np.testing.assert_allclose(np.asarray(out["logits"]), gathered, rtol=1e-5, atol=1e-6)


def test_make_adapter_takes_a_head_path(gpt2):
    adapter = make_adapter(gpt2.hf_model, head_path="lm_head")
    assert adapter.head_path == "lm_head"
    assert make_adapter(gpt2.hf_model, head_path="elsewhere").head_path == "elsewhere"
