"""Prefix groups: a causal decoder's steps attributed on the shortest prefix they need give the
one-pass attributions, with fewer FLOPs for long continuations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import pipeline
from jaxattr.methods import get_method
from jaxattr.prefix_groups import one_pass_flops, plan_prefix_groups
from jaxattr.targets import get_target

from conftest import FULL, PROMPTS


def test_plan_hand_computed():
    pos = np.arange(16, 32)[None]                        # 16 prompt + 16 generated tokens
    assert plan_prefix_groups(pos, 32, 1) == ((0, 16, 32),)
    assert plan_prefix_groups(pos, 32, 2) == ((0, 8, 24), (8, 16, 32))
    # cost 25*(1+8)... : 24*9 + 32*9 = 504 vs 32*17 = 544, a 7% saving: "auto" keeps one pass
    assert plan_prefix_groups(pos, 32, "auto") == ((0, 16, 32),)
    # two rows of different prompt lengths: the longer one sets each step's prefix;
    # prefixes round up to a multiple of 8 and never exceed L
    pos2 = np.stack([np.arange(3, 9), np.arange(5, 11)])
    assert plan_prefix_groups(pos2, 13, 2) == ((0, 3, 8), (3, 6, 13))
    # one step per group: step t needs 6 + t positions -> 8 for t <= 2, then 16 capped at 13
    assert plan_prefix_groups(pos2, 13, 10) == ((0, 1, 8), (1, 2, 8), (2, 3, 8), (3, 4, 13),
                                                (4, 5, 13), (5, 6, 13))


def test_plan_auto_splits_long_continuations():
    pos = np.arange(8, 108)[None]                        # 8 + 100 tokens, L = 108
    # equal splits, prefixes rounded up to multiples of 8 (cost = Σ P (1 + n)):
    # K=2: 64*51 + 108*51 = 8772; K=3 (bounds 0, 33, 67, 100): 48*34 + 80*35 + 108*34 = 8104;
    # K=4: 26 * (40 + 64 + 88 + 108) = 7800; one pass 108 * 101 = 10908.
    # K=3 is the fewest groups within 5% of the cheapest (7800 * 1.05 = 8190), saving 26%.
    groups = plan_prefix_groups(pos, 108, "auto")
    assert groups == ((0, 33, 48), (33, 67, 80), (67, 100, 108))
    assert plan_prefix_groups(pos, 108, 4) == ((0, 25, 40), (25, 50, 64), (50, 75, 88),
                                               (75, 100, 108))
    # a small program (here: a 100k-parameter model, batch 1) is not worth more compilations
    small = one_pass_flops(100_000, 1, 108, 100)
    assert plan_prefix_groups(pos, 108, "auto", flops=small) == ((0, 100, 108),)
    assert plan_prefix_groups(pos, 108, 3, flops=small) == groups
    # padded steps of a bucketed batch (at the prompt's end) get a short prefix of their own
    padded = np.concatenate([np.arange(16, 64), np.full(16, 16)])[None]
    assert plan_prefix_groups(padded, 64, "auto") == ((0, 16, 32), (16, 32, 48), (32, 48, 64),
                                                      (48, 64, 24))


@pytest.mark.parametrize("bad", [0, -1, "yes", 1.5, True, None])
def test_bad_values_say_what_to_pass(gpt2, bad):
    with pytest.raises(ValueError, match=r"'auto', 'exact' \(native decoders: exact causal truncation\) or an int >= 1"):
        gpt2.attribute(PROMPTS[0], FULL[0], prefix_groups=bad, show_progress=False)


def _assert_same(a, b, rtol=1e-5):
    for sa, sb in zip(a.sequence_attributions, b.sequence_attributions):
        x, y = np.asarray(sa.target_attributions), np.asarray(sb.target_attributions)
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(np.nan_to_num(y), np.nan_to_num(x), rtol=0,
                                   atol=rtol * np.nanmax(np.abs(x)))
        assert sa.step_scores.keys() == sb.step_scores.keys()
        for k in sa.step_scores:
            np.testing.assert_allclose(np.asarray(sb.step_scores[k]),
                                       np.asarray(sa.step_scores[k]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method,kw", [
    ("saliency", {}),
    ("input_x_gradient", {"granular": False}),
    ("integrated_gradients", {"n_steps": 8}),          # adds the 'deltas' step score
    ("occlusion", {}),
    ("sequential_integrated_gradients", {"n_steps": 2}),
])
def test_groups_equal_one_pass(gpt2, method, kw):
    kw = dict(kw, method=method, step_scores=["probability", "entropy"], show_progress=False)
    one = gpt2.attribute(PROMPTS, FULL, prefix_groups=1, **kw)
    for k in (2, 100):                                  # 100: one step per group
        _assert_same(one, gpt2.attribute(PROMPTS, FULL, prefix_groups=k, **kw))


def test_groups_equal_one_pass_contrastive(gpt2):
    # each foil differs from its target in the last word and has as many tokens
    n_tok = lambda t: len(gpt2.tokenizer(t)["input_ids"])    # noqa: E731
    foils, keep = [], []
    for i, f in enumerate(FULL):
        head, last = f.rsplit(" ", 1)
        same = [f"{head} {w}" for w in ("a", "and", "the", "has", "at")
                if w != last and n_tok(f"{head} {w}") == n_tok(f)]
        if same:
            foils.append(same[0])
            keep.append(i)
    assert len(keep) >= 2
    kw = dict(attributed_fn="contrast_prob_diff", step_scores=["contrast_prob_diff"],
              contrast_targets=foils, show_progress=False)
    prompts, full = [PROMPTS[i] for i in keep], [FULL[i] for i in keep]
    _assert_same(gpt2.attribute(prompts, full, prefix_groups=1, **kw),
                 gpt2.attribute(prompts, full, prefix_groups=3, **kw))


def _batch(model, prompts, full):
    return model.prepare(prompts, full, method="saliency").batch(0)


def test_traced_batch_falls_back_to_one_pass(gpt2):
    """Under an outer jit the step positions are unknown: the one-pass program runs."""
    batch = _batch(gpt2, PROMPTS, FULL)
    kw = dict(method=get_method("saliency"), target_fn=get_target("probability"),
              attribute_source=False, attribute_target=True)
    eager = pipeline.attribute_batch(gpt2.adapter, batch, prefix_groups=3, **kw)
    traced = jax.jit(lambda b: pipeline.attribute_batch(gpt2.adapter, b, prefix_groups=3,
                                                        **kw))(batch)
    np.testing.assert_allclose(np.asarray(traced.target_attributions),
                               np.asarray(eager.target_attributions), rtol=1e-5, atol=1e-7)


def test_groups_cut_flops_for_a_long_continuation(gpt2):
    """XLA's FLOP count of the group programs, summed, is below the one-pass program's, by
    at least half of what the token-pass cost model predicts."""
    prompt = "Kim has"
    full = prompt + " a red ball and Sam has a blue cup and Tom has a green hat too"
    batch = _batch(gpt2, [prompt], [full])
    groups = plan_prefix_groups(np.asarray(batch.step_positions), batch.target_ids.shape[1],
                                "auto")
    assert len(groups) > 1
    static = dict(method=get_method("saliency"), method_kwargs=(),
                  target_fn=get_target("probability"), target_kwargs=(), step_fns=(),
                  attribute_source=False, attribute_target=True)

    def flops(b):
        cost = pipeline._attribute_jit.lower(gpt2.adapter, b, None, **static).compile()
        cost = cost.cost_analysis()
        return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]

    from jaxattr.prefix_groups import truncate_batch
    one = flops(batch)
    split = sum(flops(truncate_batch(batch, a, b, p)) for a, b, p in groups)
    L, T = batch.target_ids.shape[1], batch.step_mask.shape[1]
    predicted = 1 - sum(p * (1 + b - a) for a, b, p in groups) / (L * (1 + T))
    assert 1 - split / one >= 0.5 * predicted, (one, split, predicted)
