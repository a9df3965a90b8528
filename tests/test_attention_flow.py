"""Attention flow (Abnar & Zuidema, 2020): the max-flow maths and the model pipeline."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FULL, PROMPTS, SOURCES, TARGETS
from jaxattr.methods import attention_flow, attention_rollout
from jaxattr.methods.attention_flow import default_scale, flow_from_mixing


def _edmonds_karp(cap: dict, s, t) -> float:
    """Exact float max flow, independent of SciPy: BFS augmenting paths on a residual graph
    ``cap[u][v]`` (dict of dicts of capacities)."""
    res = collections.defaultdict(lambda: collections.defaultdict(float))
    for u, out in cap.items():
        for v, c in out.items():
            res[u][v] += c
    total = 0.0
    while True:
        parent, queue = {s: None}, collections.deque([s])
        while queue and t not in parent:
            u = queue.popleft()
            for v, c in res[u].items():
                if c > 1e-15 and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if t not in parent:
            return total
        path, v = [], t
        while parent[v] is not None:
            path.append((parent[v], v))
            v = parent[v]
        push = min(res[u][v] for u, v in path)
        for u, v in path:
            res[u][v] -= push
            res[v][u] += push
        total += push


def _numpy_mix(attentions):
    """Â per layer in float64 numpy from ``[heads, L, L]`` patterns (one example)."""
    out = []
    for a in attentions:
        a = np.asarray(a, np.float64).mean(0)
        a = 0.5 * a + 0.5 * np.eye(a.shape[-1])
        out.append(a / a.sum(-1, keepdims=True))
    return out


def _reference_flow(mix, i, j) -> float:
    """Edmonds–Karp max flow from (0, j) to (n, i) in the layered graph of ``mix``."""
    n, L = len(mix), mix[0].shape[-1]
    cap = {(l, b): {(l + 1, a): mix[l][a, b] for a in range(L) if mix[l][a, b] > 0}
           for l in range(n) for b in range(L)}
    return _edmonds_karp(cap, (0, j), (n, i))


def _causal_softmax(key, shape):
    logits = jax.random.normal(key, shape)
    L = shape[-1]
    logits = jnp.where(jnp.tril(jnp.ones((L, L), bool)), logits, -jnp.inf)
    return jax.nn.softmax(logits, -1)


def test_hand_computed_two_layers_three_tokens():
    # One head each and residual=0, so Â is the pattern itself (rows sum to 1):
    a0 = np.array([[[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]], np.float32)
    a1 = np.array([[[1.0, 0, 0], [0.6, 0.4, 0], [0.1, 0.1, 0.8]]], np.float32)
    # Edges (0, j) -> (1, m) carry a0[m, j]; (1, m) -> (2, i) carry a1[i, m].
    # (0,0) -> (2,2): three edge-disjoint paths through (1,0), (1,1), (1,2):
    #   min(1, .1) + min(.5, .1) + min(.2, .8) = .1 + .1 + .2 = .4, and the cut
    #   {(1,0)->(2,2): .1, (1,1)->(2,2): .1, (0,0)->(1,2): .2} has capacity .4, so flow = .4
    #   (rollout: .1·1 + .1·.5 + .8·.2 = .31).
    # (0,1) -> (2,2): via (1,1) min(.5, .1) = .1, via (1,2) min(.3, .8) = .3 -> .4.
    # (0,2) -> (2,2): only (1,2): min(.5, .8) = .5.
    # (0,0) -> (2,1): via (1,0) min(1, .6) + via (1,1) min(.5, .4) = 1 = the sink's in-capacity.
    # (0,1) -> (2,1): via (1,1) min(.5, .4) = .4.   (0,0) -> (2,0): 1.   j > i: no path, 0.
    want = np.array([[1.0, 0.0, 0.0], [1.0, 0.4, 0.0], [0.4, 0.4, 0.5]])
    got = attention_flow([a0, a1], residual=0.0)
    np.testing.assert_allclose(got, want, atol=3 / 2 ** 21)  # 3 edges cut: 3/(2·scale)
    np.testing.assert_allclose(attention_rollout([a0, a1], residual=0.0)[2, 0], 0.31, rtol=1e-6)
    # query_positions picks rows
    np.testing.assert_allclose(attention_flow([a0, a1], residual=0.0,
                                              query_positions=np.array([2, 0])),
                               want[[2, 0]], atol=3 / 2 ** 21)


def test_one_layer_flow_is_the_mixing_matrix_itself():
    pats = np.asarray(_causal_softmax(jax.random.key(0), (2, 3, 5, 5)))   # [B, heads, L, L]
    got = attention_flow([pats])                                          # [B, L, L]
    want = np.stack([_numpy_mix([p])[0] for p in pats])   # single edge (0, j) -> (1, i)
    np.testing.assert_allclose(got, want, atol=1 / 2 ** 21)


def test_between_rollout_and_the_obvious_cuts():
    # rollout's path decomposition is a feasible flow (each edge carries at most its capacity
    # since the rows of Â and their products sum to 1), so rollout <= flow; the flow is at
    # most the sink's in-capacity (1), the source's out-capacity and every layer's cut.
    pats = _causal_softmax(jax.random.key(1), (3, 2, 2, 6, 6))           # [layers, B, h, L, L]
    flow, roll = attention_flow(pats), np.asarray(attention_rollout(pats))
    tol = 3 * 36 / 2 ** 21                                                # E/(2·scale)
    assert (flow >= roll - tol).all() and (flow <= 1 + tol).all()
    for b in range(2):
        mix = _numpy_mix(np.asarray(pats[:, b]))
        out_cap = mix[0].sum(0)                                          # [L] per source
        assert (flow[b] <= out_cap[None, :] + tol).all()
        # widest single path is a lower bound: max over middle nodes of the bottleneck
        for i in range(6):
            for j in range(i + 1):
                widest = max(min(mix[0][m1, j], mix[1][m2, m1], mix[2][i, m2])
                             for m1 in range(6) for m2 in range(6))
                assert flow[b, i, j] >= widest - tol


def test_equals_exact_edmonds_karp_on_random_graphs():
    key = jax.random.key(2)
    for dense in (False, True):
        key, k = jax.random.split(key)
        shape = (3, 2, 4, 4)                                              # [layers, h, L, L]
        pats = (jax.nn.softmax(jax.random.normal(k, shape), -1) if dense
                else _causal_softmax(k, shape))
        got = attention_flow(pats)
        mix = _numpy_mix(np.asarray(pats))
        want = np.array([[_reference_flow(mix, i, j) for j in range(4)] for i in range(4)])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert np.abs(got - want).max() <= 48 / 2 ** 21                  # E/(2·scale), E = 48
        if not dense:
            assert (np.triu(got, 1) == 0).all()                          # causal zeros
            assert (np.diag(got) > 0).all()


def test_quantisation_error_is_within_the_documented_bound():
    pats = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(3), (2, 1, 5, 5)), -1))
    mix = _numpy_mix(pats)
    exact = np.array([[_reference_flow(mix, i, j) for j in range(5)] for i in range(5)])
    E = sum(int((m > 0).sum()) for m in mix)
    for scale in (2 ** 4, 2 ** 8, 2 ** 20):
        got = flow_from_mixing(np.stack(mix), scale=scale)
        assert np.abs(got - exact).max() <= E / (2 * scale)
    assert np.abs(flow_from_mixing(np.stack(mix), scale=2 ** 4) - exact).max() > 1e-4


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="residual"):
        attention_flow(np.ones((1, 1, 2, 2)), residual=2.0)
    with pytest.raises(ValueError, match=r"heads, L, L"):
        attention_flow([np.ones((2, 3))])
    with pytest.raises(ValueError, match="scale"):
        attention_flow(np.ones((1, 1, 2, 2)), scale=2 ** 31)
    with pytest.raises(ValueError, match="query_positions"):
        attention_flow(np.ones((1, 1, 2, 2)), query_positions=np.array([5]))
    assert default_scale(16) == 2 ** 20 and default_scale(4096) * 4096 <= 2 ** 30


def test_model_flow_is_the_flow_of_the_models_attention(gpt2):
    out = gpt2.attribute(PROMPTS[1], FULL[1], method="attention_flow", show_progress=False)
    seq = out[0]
    att = gpt2.hf_model(jnp.asarray([seq.target_ids]), params=gpt2.params,
                        output_attentions=True).attentions
    mix = _numpy_mix([a[0] for a in att])
    for t, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        got = seq.target_attributions[:, t, 0]
        want = [_reference_flow(mix, p - 1, j) for j in range(p)]
        np.testing.assert_allclose(got[:p], want, atol=1e-5)
        assert np.isnan(got[p:]).all()  # not yet generated
    agg = out.aggregate()[0].target_attributions
    np.testing.assert_allclose(np.nansum(agg, 0), 1.0, rtol=1e-5)


def test_batch_invariance(gpt2):
    batched = gpt2.attribute(PROMPTS, FULL, method="attention_flow", show_progress=False)
    for i in range(len(PROMPTS)):
        alone = gpt2.attribute(PROMPTS[i], FULL[i], method="attention_flow",
                               show_progress=False)[0]
        a, b = batched[i].target_attributions, alone.target_attributions
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) <= 1e-5
    one = gpt2.attribute(PROMPTS[1], FULL[1], method="attention_flow", show_progress=False)
    assert max(b.target_mask.shape[1] for b in batched.batches) > one.batches[0].target_mask.shape[1]


def test_compiled_program_and_errors(gpt2, marian):
    mem = gpt2.estimate_memory(PROMPTS[0], FULL[0], method="attention_flow")
    assert mem["total"] > 0  # the device part: forward and Â
    with pytest.raises(ValueError, match="attention_rollout"):
        marian.attribute(SOURCES[0], TARGETS[0], method="attention_flow")
    prep = gpt2.prepare(PROMPTS[0], FULL[0], method="attention_flow")
    import jaxattr

    def traced(batch):
        return jaxattr.attribute_batch(gpt2.adapter, batch, **prep.spec.pipeline_kwargs())
    with pytest.raises(ValueError, match="host"):
        jax.jit(traced)(prep.batch(0))


def test_listed():
    import jaxattr
    assert "attention_flow" in jaxattr.list_methods()
