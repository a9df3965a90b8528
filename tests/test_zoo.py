"""The bundled toy models: they load offline, still solve their tasks, and can be attributed."""
import numpy as np
import pytest

import jaxattr
import jaxattr.zoo as zoo
from jaxattr.zoo import tasks

FRESH_SEED = 4242      # neither the training stream (seed 0) nor the card's held-out set


@pytest.fixture(scope="module")
def recall():
    return jaxattr.load_model(zoo.path("toy-recall"))


@pytest.fixture(scope="module")
def mt():
    return jaxattr.load_model(zoo.path("toy-mt"))


def test_registry():
    assert set(zoo.BUNDLED) == {"toy-recall", "toy-mt"}
    for name in zoo.BUNDLED:
        card = zoo.card(name)
        assert card.startswith(f"# {name}")
        assert "held-out" in card.lower() and "seed" in card.lower()
    with pytest.raises(KeyError, match="toy-recall"):
        zoo.path("no-such-model")


def test_generators_deterministic_and_consistent():
    assert tasks.recall_examples(20, seed=3) == tasks.recall_examples(20, seed=3)
    assert tasks.mt_examples(20, seed=3) == tasks.mt_examples(20, seed=3)
    assert tasks.recall_examples(20, seed=3) != tasks.recall_examples(20, seed=4)
    for e in tasks.recall_examples(100, seed=1):
        assert e["tokens"][e["cue_index"]] == e["answer"] == e["cue_token"]
        assert e["tokens"][e["name_index"]] == e["tokens"][e["query_index"]]
        assert all(e["tokens"][i] == c for i, c in zip(e["distractor_indices"],
                                                       e["distractor_colours"]))
        assert e["answer"] not in e["distractor_colours"]
    for e in tasks.mt_examples(200, seed=1):
        assert e["source_tokens"][e["cue_index"]] == e["cue_token"]
        assert e["source_tokens"][e["occupation_index"]] == e["occupation"]
        if e["template"] == "bare":
            assert e["gender"] == e["stereotype"]
        tgt, con = e["target"].split(), e["contrast_target"].split()
        differ = [i + 1 for i, (a, b) in enumerate(zip(tgt, con)) if a != b]
        assert differ == e["gender_steps"]
    anti = tasks.mt_examples(50, seed=2, skew=0.0, templates={"pronoun": 1})
    assert all(e["anti_stereotypical"] for e in anti)


def test_recall_tokens_match_model(recall):
    for e in tasks.recall_examples(20, seed=FRESH_SEED):
        ids = recall.tokenizer(e["prompt"])["input_ids"]
        assert recall.tokenizer.convert_ids_to_tokens(ids) == e["tokens"]


def test_mt_tokens_match_model(mt):
    for e in tasks.mt_examples(20, seed=FRESH_SEED):
        ids = mt.tokenizer(e["source"])["input_ids"]
        assert mt.tokenizer.convert_ids_to_tokens(ids) == e["source_tokens"]


def test_recall_accuracy(recall):
    examples = tasks.recall_examples(50, seed=FRESH_SEED)
    outs = recall.generate([e["prompt"] for e in examples], max_new_tokens=1)
    acc = np.mean([o == e["generated"] for o, e in zip(outs, examples)])
    assert acc >= 0.9, (acc, [(o, e["generated"]) for o, e in zip(outs, examples)][:5])


def test_mt_accuracy(mt):
    examples = tasks.mt_examples(50, seed=FRESH_SEED)
    outs = mt.generate([e["source"] for e in examples], max_new_tokens=10)
    acc = np.mean([o == e["target"] for o, e in zip(outs, examples)])
    assert acc >= 0.9, (acc, [(o, e["target"]) for o, e in zip(outs, examples)][:5])


def test_recall_attribute(recall):
    e = tasks.recall_examples(1, seed=FRESH_SEED)[0]
    out = recall.attribute(e["prompt"], e["generated"], show_progress=False)
    seq = out.sequence_attributions[0]
    assert seq.target[:len(e["tokens"])] == e["tokens"]
    assert seq.target[-1] == e["answer"]
    attr = np.asarray(seq.target_attributions)
    assert attr.shape[1] == 1 and np.isfinite(attr[:len(e["tokens"])]).all()


def test_mt_attribute(mt):
    e = tasks.mt_examples(1, seed=FRESH_SEED, templates={"pronoun": 1})[0]
    out = mt.attribute(e["source"], e["target"], show_progress=False)
    seq = out.sequence_attributions[0]
    assert seq.source == e["source_tokens"]
    assert [seq.target[i] for i in e["gender_steps"]] == [
        e["target"].split()[i - 1] for i in e["gender_steps"]]
    assert np.isfinite(np.asarray(seq.source_attributions)).all()
