"""The bundled toy-facts model and causal tracing's known answers on it: the model has stored
its facts (answers right on held-out paraphrases); with the subject noised, restoring the
subject's clean embeddings recovers the clean probability exactly, and restoring any state at
a position before the subject changes nothing (a causal decoder's earlier positions never see
the noise)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.interventions import average_traces, causal_trace
from jaxattr.interventions.engine import patched_metrics
from jaxattr.interventions.runs import encode_prompts
from jaxattr.zoo import facts


@pytest.fixture(scope="module")
def model():
    return jaxattr.load_model("toy-facts")


@pytest.fixture(scope="module")
def prompts():
    known = facts.facts_examples("train")      # stored facts (100% right on training prompts)
    # subjects in the middle ("the home of ... is in") and at the start ("... plays")
    return [e for e in known if e["template"] == 2][:2] + [e for e in known
                                                            if e["template"] == 0][:2]


def test_held_out_recall(model):
    held = facts.facts_examples("heldout")[::6]
    enc = encode_prompts(model, [e["prompt"] for e in held], name="prompts")
    out = model.adapter.forward(target_ids=jnp.asarray(enc.ids), target_mask=jnp.asarray(
        enc.mask), positions=jnp.asarray(enc.last)[:, None])
    pred = model.tokenizer.convert_ids_to_tokens(np.asarray(out["logits"][:, 0].argmax(-1)))
    acc = np.mean([p == e["answer"] for p, e in zip(pred, held)])
    assert acc >= 0.8, acc


def test_trace_known_answers(model, prompts):
    traces = []
    for i, e in enumerate(prompts):
        tr = causal_trace(model, e["prompt"], e["subject"], answer=" " + e["answer"],
                          samples=4, key=jax.random.key(i))
        s0, s1 = tr.subject_range
        assert tr.subject_range == tuple(e["subject_range"])
        assert tr.high_score > 0.5 and tr.low_score < tr.high_score - 0.2
        # positions before the subject never see the noise: restoring them is a no-op
        np.testing.assert_allclose(tr.scores[:s0], tr.low_score, rtol=1e-5, atol=1e-6)
        # the last block's output feeds nothing but its own position's logits: restoring it
        # anywhere before the last token is a no-op
        np.testing.assert_allclose(tr.scores[:-1, -1], tr.low_score, rtol=1e-5, atol=1e-6)
        # the last subject token's state carries the subject: restoring it below the last
        # block moves p(answer)
        assert np.abs(tr.scores[s1 - 1, :-1] - tr.low_score).max() > 1e-3
        traces.append(tr)
    avg = average_traces(traces)
    assert avg.count.tolist()[0] == len(prompts)


def test_restoring_subject_embeddings_recovers_clean(model, prompts):
    e = prompts[0]
    tr = causal_trace(model, e["prompt"], e["subject"], answer=" " + e["answer"], samples=3,
                      key=jax.random.key(7))
    s0, s1 = tr.subject_range
    p = encode_prompts(model, e["prompt"], name="prompt")
    ids, mask = jnp.asarray(p.ids), jnp.asarray(p.mask)
    hidden = model.adapter.embedding_matrix().shape[1]
    noise = jax.random.normal(jax.random.key(1), (3, ids.shape[1], hidden)) * 0.5
    noise = noise * (jnp.arange(ids.shape[1]) >= s0)[None, :, None] * (
        jnp.arange(ids.shape[1]) < s1)[None, :, None]
    clean = model.adapter.forward(target_ids=ids, target_mask=mask, capture=("embed",))
    ans = model.tokenizer(" " + e["answer"], add_special_tokens=False)["input_ids"][0]
    run = {"target_ids": jnp.repeat(ids, 3, 0), "target_mask": jnp.repeat(mask, 3, 0)}
    mask_subject = ((jnp.arange(ids.shape[1]) >= s0) & (jnp.arange(ids.shape[1]) < s1))
    masks = {"embed": jnp.stack([jnp.zeros(ids.shape[1]), mask_subject.astype(jnp.float32)])}
    p_cells = patched_metrics(
        model.adapter, run, sources=clean["captured"], masks=masks,
        metric=lambda lg: jax.nn.softmax(lg, -1)[:, ans],
        positions=jnp.full((3,), ids.shape[1] - 1),
        base_patch={"embed": lambda x: x + noise})
    p_clean = float(jax.nn.softmax(clean["logits"][0, -1])[ans])
    np.testing.assert_allclose(np.asarray(p_cells[1]), p_clean, rtol=1e-5)
    assert float(np.asarray(p_cells[0]).mean()) < p_clean
