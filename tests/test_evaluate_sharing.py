"""Shared forwards of a faithfulness evaluation: a row whose input is a prefix of another row's
(same sequence, same source) is read from that row's forward. The shared evaluation equals the
unshared one, on hand-counted cases and on tiny real decoder-only and encoder-decoder models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxattr.evaluate import faithfulness
from jaxattr.evaluate.perturb import Row, plan_forwards, score_rows

from _scalar_scorer import ScalarTokens, decoder_output
from conftest import FULL, PROMPTS, SOURCES, TARGETS


class PrefixSum(ScalarTokens):
    """``m = Σ w[id]`` over the kept tokens up to the scored position; token ``v``'s embedding
    is the scalar ``w[v]`` (zero baseline). ``causal=False`` is a scorer of the old protocol
    (``[N]`` positions, summing the whole row, which is the row's own prefix)."""
    causal: bool = struct.field(pytree_node=False, default=True)

    def score(self, chunk, embeds):
        x = embeds["target"][..., 0] * chunk.target_mask
        if not self.causal:
            assert chunk.positions.ndim == 1
            return x.sum(-1)
        assert chunk.positions.ndim == 2 and chunk.position_mask.shape == chunk.positions.shape
        return jnp.take_along_axis(jnp.cumsum(x, -1), chunk.positions, 1)


W = np.array([0.0, 1.0, -2.0, 4.0, 0.5, 3.0], np.float32)   # w[0] = 0: the fill token


def _output(attrs, ids=(1, 2, 3, 4, 5), n_prompt=3):
    return decoder_output([ids] * len(attrs), attrs, n_prompt)


# Sequence 0 ranks position 0, then 2, at both steps; sequence 1 ranks the newest token first.
ATTRS = [np.array([0.9, 0.1, 0.5, 0.2]), np.array([0.1, 0.2, 0.3, 0.9])]
METRICS = ("comprehensiveness", "sufficiency", "norm_sufficiency")


@pytest.mark.parametrize("erase, n_forwards", [
    # keep vectors (1 kept) of the full F, top-1 erased E, top-1 kept K and null N rows:
    # seq 0: F 111 ⊂ 1111, E 011 ⊂ 0111, K 100 ⊂ 1000, N 000 ⊂ 0000 -> 4 forwards;
    # seq 1: maximal 1111, E1 1110, E0 110, K0 001, K1 0001, N1 0000 -> 6 (F0 ⊂ F1,
    # N0 ⊂ N1) — and nothing shared with seq 0 although both read the same ids.
    ("mask", 10),
    # compacted ids: seq 0: F [1,2,3] ⊂ [1,2,3,4]; E [2,3] ⊂ [2,3,4]; K [1] = [1] ⊂ F1;
    # N [0] = [0] -> 3 forwards; seq 1: E0 [1,2] ⊂ F0 ⊂ F1, E1 [1,2,3] ⊂ F1; K0 [3], K1 [4],
    # N [0] -> 4.
    ("delete", 7),
])
def test_hand_counted_forwards(erase, n_forwards):
    out = _output(ATTRS)
    kw = dict(metrics=METRICS, bins=(1,), erase=erase)
    shared = faithfulness(PrefixSum(w=jnp.asarray(W)), out, **kw)
    assert shared.info["n_rows"] == 16
    assert shared.info["n_forwards"] == n_forwards
    unshared = faithfulness(PrefixSum(w=jnp.asarray(W)), out, share_forwards=False, **kw)
    old = faithfulness(PrefixSum(w=jnp.asarray(W), causal=False), out, **kw)
    assert unshared.info["n_forwards"] == old.info["n_forwards"] == 16
    for m in METRICS:
        np.testing.assert_allclose(shared.values[m], unshared.values[m], atol=1e-6)
        np.testing.assert_allclose(shared.values[m], old.values[m], atol=1e-6)
    # independent truth: erasing the top token removes its weight
    ids = np.array([1, 2, 3, 4])
    for i, attr in enumerate(ATTRS):
        for t, pos in enumerate((3, 4)):
            top = int(np.argmax(attr[:pos]))
            np.testing.assert_allclose(shared.values["comprehensiveness"][i, t], W[ids[top]],
                                       atol=1e-6)


def _row(ids, keep, *, group=0, soft=False, src=None, src_keep=None, token=9):
    return Row(target_ids=np.asarray(ids), target_keep=np.asarray(keep, np.float32),
               source_ids=None if src is None else np.asarray(src),
               source_keep=None if src_keep is None else np.asarray(src_keep, np.float32),
               token=token, soft=soft, group=group)


def test_plan_forwards_rules():
    rows = [_row([1, 2], [1, 1]),                     # 0: prefix of 1 and 2
            _row([1, 2, 3], [1, 1, 1]),               # 1: prefix of 2
            _row([1, 2, 3, 4], [1, 1, 1, 0]),         # 2: maximal
            _row([1, 2, 3], [1, 0, 1]),               # 3: maximal (keep differs)
            _row([1, 2], [1, 1], soft=True),          # 4: soft: never shared
            _row([1, 2], [1, 1], group=1),            # 5: another sequence
            _row([1, 2, 3], [1, 1, 1], group=1)]      # 6: extends 5
    plan = plan_forwards(rows, share=True)
    assert [(f.row, f.answers) for f in plan] == [(2, (0, 1, 2)), (3, (3,)), (4, (4,)),
                                                  (6, (5, 6))]
    assert [f.answers for f in plan_forwards(rows, share=False)] == [(j,) for j in range(7)]
    # the source side must be equal (ids and keep) for the target prefix to be shared
    src = [_row([1, 2], [1, 1], src=[7, 8], src_keep=[1, 1]),
           _row([1, 2, 3], [1, 1, 1], src=[7, 8], src_keep=[1, 0]),
           _row([1, 2, 3], [1, 1, 1], src=[7, 8], src_keep=[1, 1])]
    assert [(f.row, f.answers) for f in plan_forwards(src, share=True)] == [(1, (1,)),
                                                                             (2, (0, 2))]


def test_score_rows_share_needs_causal_scorer():
    rows = [_row([1, 2], [1, 1]), _row([1, 2, 3], [1, 1, 1])]
    with pytest.raises(ValueError, match="share=True"):
        score_rows(PrefixSum(w=jnp.asarray(W), causal=False), rows, share=True)
    vals, stats = score_rows(PrefixSum(w=jnp.asarray(W)), rows, return_stats=True)
    np.testing.assert_allclose(vals, [W[1] + W[2], W[1] + W[2] + W[3]], rtol=1e-6)
    assert (stats["n_rows"], stats["n_forwards"], stats["forward_tokens"]) == (2, 1, 3)


# erased, kept and fully erased (null) rows
SOME = ("comprehensiveness", "sufficiency", "norm_sufficiency")


def _assert_same(a, b):
    for m in a.values:
        np.testing.assert_allclose(a.values[m], b.values[m], atol=1e-6, err_msg=m)
    for m in a.curves:
        np.testing.assert_allclose(a.curves[m], b.curves[m], atol=1e-6, err_msg=m)


@pytest.mark.parametrize("erase", ["mask", "delete"])
def test_decoder_only_shared_equals_unshared(gpt2, erase):
    # three sequences of different lengths (right-padded in the attribution batch)
    out = gpt2.attribute(PROMPTS, FULL, show_progress=False)
    kw = dict(metrics=SOME, bins=(0.2, 0.5), erase=erase)
    shared = faithfulness(gpt2, out, max_tokens=256, **kw)   # several chunks per shape
    unshared = faithfulness(gpt2, out, share_forwards=False, **kw)
    _assert_same(shared, unshared)
    assert shared.info["n_rows"] == unshared.info["n_rows"] == unshared.info["n_forwards"]
    # at least the unperturbed rows of each sequence collapse into one forward
    n_steps = sum(s.attr_pos_end - s.attr_pos_start for s in out.sequence_attributions)
    assert shared.info["n_forwards"] <= unshared.info["n_forwards"] - n_steps + len(PROMPTS)


@pytest.mark.parametrize("erase", ["mask", "delete"])
def test_encoder_decoder_shared_equals_unshared(marian, erase):
    # source and target prefix candidates: target rows share only under an equal source
    out = marian.attribute(SOURCES[:1], TARGETS[:1], show_progress=False,
                           attribute_target=True)
    kw = dict(metrics=SOME, bins=(0.5,), erase=erase)
    shared = faithfulness(marian, out, **kw)
    unshared = faithfulness(marian, out, share_forwards=False, **kw)
    _assert_same(shared, unshared)
    n_steps = sum(s.attr_pos_end - s.attr_pos_start for s in out.sequence_attributions)
    assert shared.info["n_forwards"] <= unshared.info["n_forwards"] - n_steps + 1
