"""Logit / tuned lens on real architectures (tiny random models from the conftest)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.lens import TunedLens, logit_lens, model_readout, model_source
from jaxattr.testing import ARCHITECTURES, make_model

TEXTS = ["Kim has a red ball and Sam has", "The cat sat"]


def _model_log_probs(model, text):
    ids = jnp.asarray([model.tokenizer(text)["input_ids"]], jnp.int32)
    if ids[0, -1] == model.tokenizer.eos_token_id:
        ids = ids[:, :-1]
    logits = model.adapter.forward(target_ids=ids, target_mask=jnp.ones_like(ids))["logits"]
    return np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), -1))


def test_last_row_is_the_models_own_prediction(gpt2):
    traj = logit_lens(gpt2, TEXTS, top_k=5, batch_size=1)
    for i, text in enumerate(TEXTS):
        own = _model_log_probs(gpt2, text)
        np.testing.assert_allclose(traj.log_probs[i][-1], own, atol=1e-5)
        # Statistics agree with the log-probabilities they summarise.
        lp = traj.log_probs[i]
        np.testing.assert_allclose(traj.stats[i]["top_probs"][..., 0], np.exp(lp.max(-1)),
                                   rtol=1e-5)
        nxt = np.asarray(gpt2.tokenizer(text)["input_ids"][1:])
        got = traj.stats[i]["target_prob"][:, :-1]
        np.testing.assert_allclose(got, np.exp(np.take_along_axis(
            lp[:, :-1], nxt[None, :, None], -1)[..., 0]), rtol=1e-5)
        assert np.isnan(traj.stats[i]["target_prob"][:, -1]).all()
        np.testing.assert_allclose(traj.stats[i]["kl"][-1], 0.0, atol=1e-6)
    assert traj.log_probs[0].shape == (gpt2.config.n_layer + 1, len(traj.tokens[0]),
                                       gpt2.config.vocab_size)


def test_padding_does_not_change_the_trajectory(gpt2):
    alone = logit_lens(gpt2, TEXTS[1:], top_k=4)
    batched = logit_lens(gpt2, TEXTS, top_k=4)
    for name in ("kl", "entropy", "top_probs"):
        np.testing.assert_allclose(batched.stats[1][name], alone.stats[0][name], atol=1e-5)


def test_fresh_tuned_lens_equals_logit_lens_exactly(gpt2):
    src = model_source(gpt2)
    fresh = TunedLens.init(src.n_layers, src.hidden)
    logit = logit_lens(gpt2, TEXTS, top_k=5)
    tuned = logit_lens(gpt2, TEXTS, top_k=5, lens=fresh)
    assert tuned.kind == "tuned" and logit.kind == "logit"
    for i in range(len(TEXTS)):
        for name, value in logit.stats[i].items():
            np.testing.assert_array_equal(tuned.stats[i][name], value)
        np.testing.assert_array_equal(tuned.log_probs[i], logit.log_probs[i])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_reads_its_own_output(arch):
    hf, tok = make_model(arch)
    model = jaxattr.load_model(hf, tokenizer=tok)
    src = model_source(model)       # raises if readout(last state) != the model's logits
    assert src.n_layers >= 1
    if model.is_encoder_decoder:
        traj = logit_lens(model, ["Kim has a red ball"], ["Sam has a blue cup"], top_k=3)
        assert traj.source_tokens is not None
        seq = model.encode(["Kim has a red ball"], ["Sam has a blue cup"])[0]
        ids = jnp.asarray([seq.target_ids])
        src_ids = jnp.asarray([seq.source_ids])
        logits = model.adapter.forward(target_ids=ids, target_mask=jnp.ones_like(ids),
                                       source_ids=src_ids,
                                       source_mask=jnp.ones_like(src_ids))["logits"]
        own = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), -1))
    else:
        traj = logit_lens(model, ["Kim has a red ball"], top_k=3)
        own = _model_log_probs(model, "Kim has a red ball")
    assert traj.log_probs[0].shape[0] == src.n_layers + 1
    np.testing.assert_allclose(traj.log_probs[0][-1], own, atol=2e-5)


def test_given_target_and_bad_inputs(gpt2):
    token = gpt2.tokenizer.convert_ids_to_tokens(gpt2.tokenizer(TEXTS[0])["input_ids"])[2]
    traj = logit_lens(gpt2, TEXTS[:1], target=token, top_k=2)
    tid = gpt2.tokenizer.convert_tokens_to_ids(token)
    np.testing.assert_array_equal(traj.targets[0], tid)
    assert not np.isnan(traj.stats[0]["target_prob"]).any()
    with pytest.raises(ValueError, match="this model has"):
        logit_lens(gpt2, TEXTS, lens=TunedLens.init(7, 4))
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(gpt2, TEXTS, top_k=0)
    with pytest.raises(ValueError, match="not one token"):
        logit_lens(gpt2, TEXTS, target="Kim has a red ball")


def test_views(gpt2):
    traj = logit_lens(gpt2, ["<b>Kim</b> & Sam"], top_k=3)
    text = traj.to_text(color_by="entropy")
    assert text.count("\n") >= traj.n_rows + 2 and "(output)" in text
    page = traj.to_html(color_by="kl")
    assert "<b>" not in page and "&lt;" in page and "&amp;" in page
    assert page.count("<tr>") == traj.n_rows + 1 and "default-src 'none'" in page
    with pytest.raises(ValueError, match="color_by"):
        traj.to_html(color_by="nope")
    import matplotlib
    matplotlib.use("Agg")
    fig = traj.to_figure(color_by="prob")
    assert len(fig.axes[0].texts) == traj.n_rows * len(traj.tokens[0])


def test_native_family_reads_its_own_output():
    import os
    ckpt = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "native_side", "ckpt",
                        "llama")
    model = jaxattr.load_model(ckpt)
    text = "The cat sat on the mat"
    traj = logit_lens(model, [text], top_k=3)
    assert traj.row_names[0] == "blocks.0.resid_pre"
    np.testing.assert_allclose(traj.log_probs[0][-1], _model_log_probs(model, text), atol=2e-5)


def test_step_scores_follow_the_trajectory(gpt2):
    from jaxattr.lens import add_step_scores
    out = gpt2.attribute(["Kim has a red"], ["Kim has a red ball and Sam"],
                         step_scores=["probability"], show_progress=False)
    add_step_scores(out, gpt2)
    view = out.sequence_attributions[0]
    traj = logit_lens(gpt2, ["Kim has a red ball and Sam"], top_k=1)
    pos = np.arange(view.attr_pos_start, view.attr_pos_end) - 1
    n_rows = gpt2.config.n_layer + 1
    # The last row is the model's own prediction: its probability is the step score's.
    last = traj.stats[0]["target_prob"][-1, pos]
    np.testing.assert_allclose(view.step_scores["probability"], last, rtol=1e-4)
    np.testing.assert_allclose(view.step_scores["lens_kl.0"], traj.stats[0]["kl"][0, pos])
    np.testing.assert_array_equal(view.step_scores["lens_first_top1_layer"],
                                  traj.first_top1_layer(0)[pos])
    assert len([k for k in view.step_scores if k.startswith("lens_kl.")]) == n_rows - 1


def test_lens_step_scores_by_name_in_attribute(gpt2):
    """``step_scores=`` takes the lens names: the same scores as the trajectory's, next to
    the ordinary step scores, and only the ones asked for."""
    out = gpt2.attribute(["Kim has a red"], ["Kim has a red ball and Sam"],
                         step_scores=["probability", "lens_kl", "lens_first_top1_layer"],
                         show_progress=False)
    view = out.sequence_attributions[0]
    traj = logit_lens(gpt2, ["Kim has a red ball and Sam"], top_k=1)
    pos = np.arange(view.attr_pos_start, view.attr_pos_end) - 1
    assert "probability" in view.step_scores and "lens_kl_mean" not in view.step_scores
    assert not any(k.startswith("lens_prob") for k in view.step_scores)
    for row in range(gpt2.config.n_layer):
        np.testing.assert_allclose(view.step_scores[f"lens_kl.{row}"],
                                   traj.stats[0]["kl"][row, pos], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(view.step_scores["lens_first_top1_layer"],
                                  traj.first_top1_layer(0)[pos])


@pytest.mark.parametrize("name", ["toy-recall", "toy-mt"])
def test_bundled_tuned_lens_beats_the_logit_lens_at_every_layer(name):
    import os
    from jaxattr.lens import evaluate_tuned_lens, lens_metadata, load_lens
    from jaxattr.zoo import tasks
    model = jaxattr.load_model(name)
    path = os.path.join(jaxattr.zoo.path(name), "tuned_lens.safetensors")
    assert lens_metadata(path)["model"] == name
    src = model_source(model)
    lens = load_lens(path, expect=(src.n_layers, src.hidden))
    if name == "toy-recall":
        held_out = [ex["prompt"] + ex["completion"]
                    for ex in tasks.recall_examples(64, 424_242)]
    else:
        held_out = [(ex["source"], ex["target"]) for ex in tasks.mt_examples(64, 424_242)]
    ev = evaluate_tuned_lens(model, lens, held_out, seq_len=32, batch_size=32, pack=False)
    assert np.all(ev["tuned_kl"] < ev["logit_kl"]), ev
    assert np.all(ev["tuned_kl"] < 0.5 * ev["logit_kl"]), ev


def test_train_tuned_lens_checkpoints_and_resumes(gpt2, tmp_path):
    from jaxattr.lens import load_lens, train_tuned_lens
    from jaxattr.testing import CORPUS
    kw = dict(steps=4, tokens_per_step=64, seq_len=16, batch_size=2, show_progress=False)
    # A second call with the same directory resumes at step 2; only steps 2-3 run. The
    # default optimiser's schedule depends on the total, so both runs get the same one.
    from jaxattr.lens import tuned_lens_optimizer
    opt = tuned_lens_optimizer(4)
    full, hist_full = train_tuned_lens(gpt2, CORPUS * 3, optimizer=opt, **kw)
    assert hist_full.shape == (4, gpt2.config.n_layer)
    ckpt2 = tmp_path / "run2"
    train_tuned_lens(gpt2, CORPUS * 3, optimizer=opt, checkpoint_dir=str(ckpt2),
                     checkpoint_every=2, **dict(kw, steps=2))
    resumed, hist_rest = train_tuned_lens(gpt2, CORPUS * 3, optimizer=opt,
                                          checkpoint_dir=str(ckpt2), **kw)
    assert hist_rest.shape == (2, gpt2.config.n_layer)
    np.testing.assert_allclose(hist_rest, hist_full[2:], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(resumed.weight), np.asarray(full.weight), atol=1e-6)
    saved = load_lens(ckpt2 / "lens.safetensors")
    np.testing.assert_array_equal(np.asarray(saved.weight), np.asarray(resumed.weight))
