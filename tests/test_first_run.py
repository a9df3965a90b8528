"""What a new user meets first: the README's first command, loading, names, errors, defaults."""
import os
import re
import shlex
import time

import numpy as np
import pytest

import jaxattr
from jaxattr import cli
from jaxattr.testing import make_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_first_command() -> list:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = text.split("A newcomer's first command", 1)[1]
    line = re.search(r"```bash\n(jaxattr attribute [^\n]+)\n```", block).group(1)
    return shlex.split(line)


def test_readme_first_command_runs(tmp_path, capsys):
    argv = _readme_first_command()
    assert argv[:2] == ["jaxattr", "attribute"]
    html = tmp_path / "report.html"
    argv = [str(html) if a == "report.html" else a for a in argv[1:]]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "blue" in out and "deltas" in out           # the model answers the recall prompt
    assert html.read_text(encoding="utf-8").lower().startswith("<!doctype html")


# ------------------------------------------------------------------ loading without init
def _no_random_init(monkeypatch, cls):
    """Make ``cls.init_weights`` fail when it runs on a concrete key (random initialisation);
    under ``jax.eval_shape`` (shapes only, what ``_do_init=False`` does) it may run."""
    import jax
    original = cls.init_weights

    def spy(self, rng, *args, **kwargs):
        if not isinstance(rng, jax.core.Tracer):
            raise AssertionError("random initialisation ran")
        return original(self, rng, *args, **kwargs)
    monkeypatch.setattr(cls, "init_weights", spy)


@pytest.mark.parametrize("safe", [False, True])
def test_flax_checkpoints_load_without_random_init(tmp_path, monkeypatch, safe):
    import transformers as T
    model, tok = make_model("gpt2")
    model.save_pretrained(tmp_path, safe_serialization=safe)
    tok.save_pretrained(tmp_path)
    _no_random_init(monkeypatch, T.FlaxGPT2LMHeadModel)
    loaded = jaxattr.load_model(str(tmp_path))
    from flax.traverse_util import flatten_dict
    a, b = flatten_dict(model.params), flatten_dict(loaded.params)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_bundled_models_load_without_random_init(monkeypatch):
    import transformers as T
    _no_random_init(monkeypatch, T.FlaxGPT2LMHeadModel)
    _no_random_init(monkeypatch, T.FlaxMarianMTModel)
    for name in jaxattr.zoo.BUNDLED:
        assert jaxattr.load_model(name).params


# ------------------------------------------------------------------ names
def test_list_methods_and_targets():
    methods = jaxattr.list_methods()
    for name in ("saliency", "integrated_gradients", "occlusion", "smoothgrad", "vargrad",
                 "layer_integrated_gradients", "layer_gradient_x_activation", "layer_saliency",
                 "attention"):
        assert name in methods
    assert {"probability", "logprob", "contrast_prob_diff", "kl_divergence"} <= set(
        jaxattr.list_targets())


def test_unknown_method_lists_every_method(gpt2):
    with pytest.raises(ValueError, match="Unknown attribution method 'salience'") as e:
        gpt2.attribute("The cat", "The cat sat", method="salience")
    for name in jaxattr.list_methods():
        assert repr(name) in str(e.value)


def test_smoothgrad_by_name():
    import jax.numpy as jnp

    def f(x):
        return jnp.stack([jnp.sum(jnp.sin(x)), jnp.sum(x ** 3)])
    x = jnp.linspace(-1.0, 1.0, 5)
    by_name = jaxattr.smoothgrad("saliency", n_samples=4, stdevs=0.2, key=1)(f, x)
    by_fn = jaxattr.smoothgrad(jaxattr.saliency, n_samples=4, stdevs=0.2, key=1)(f, x)
    np.testing.assert_array_equal(by_name, by_fn)


def test_smoothgrad_method_name_on_a_model(gpt2):
    out = gpt2.attribute("The cat", "The cat sat on", method="smoothgrad", n_samples=2)
    ref = gpt2.attribute("The cat", "The cat sat on",
                         method=jaxattr.smoothgrad(jaxattr.saliency), n_samples=2)
    np.testing.assert_allclose(out[0].target_attributions, ref[0].target_attributions,
                               rtol=1e-6)


def test_load_model_takes_a_default_method():
    model, tok = make_model("gpt2")
    m = jaxattr.load_model(model, "input_x_gradient", tokenizer=tok)
    out = m.attribute("The cat", "The cat sat")
    assert out.info["method"] == "input_x_gradient"
    ref = m.attribute("The cat", "The cat sat", method="input_x_gradient")
    np.testing.assert_array_equal(out[0].target_attributions, ref[0].target_attributions)
    with pytest.raises(ValueError, match="Unknown attribution method 'ig'"):
        jaxattr.load_model(model, "ig", tokenizer=tok)


# ------------------------------------------------------------------ errors that say the fix
def test_generation_argument_points_to_generation_args(gpt2):
    with pytest.raises(TypeError, match=r"'max_new_tokens' is a generation argument.*"
                                        r"generation_args=\{'max_new_tokens'"):
        gpt2.attribute("The cat", max_new_tokens=3)


def test_mistyped_bundled_name_fails_fast_offline():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"no bundled model 'toy-recal'.*toy-recall.*toy-mt"
                                         r".*Did you mean 'toy-recall'"):
        jaxattr.load_model("toy-recal")
    with pytest.raises(ValueError, match="toy-recall, toy-mt"):
        jaxattr.load_model("toy-foo")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        jaxattr.load_model("./no/such/model")
    assert time.perf_counter() - t0 < 2.0


def test_cli_errors_use_option_names(capsys):
    rc = cli.main(["attribute", "--model", "toy-foo", "--input", "x"])
    assert rc == 2 and "toy-recall" in capsys.readouterr().err
    rc = cli.main(["attribute", "--input", "Kim's red ball. Sam's",
                   "--generated", "Kim's red ball. Sam's red", "--attributed-fn",
                   "contrast_prob_diff"])
    err = capsys.readouterr().err
    assert rc == 2 and "--contrast-target" in err and "contrast_targets" not in err


def test_cli_message_translation():
    assert cli.cli_message("pass contrast_targets=[...] (alternative outputs) or "
                           "generation_args={'max_new_tokens': 3}") == \
        "pass --contrast-target (alternative outputs) or --max-new-tokens"


def test_cli_help_shows_defaults_and_new_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["attribute", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for opt in ("--layer", "--contrast-source", "--contrast-alignments", "--aggregate",
                "--batch-size", "--baseline"):
        assert opt in text
    assert "(default: saliency)" in text and "(default: toy-recall)" in text
    assert "(default: auto)" in text and "(default: unk)" in text


def test_cli_new_options_reach_attribute(tmp_path, capsys):
    js = tmp_path / "o.json"
    rc = cli.main(["attribute", "--input", "Kim's red ball. Sam's blue cup. Sam's",
                   "--generated", "Kim's red ball. Sam's blue cup. Sam's blue",
                   "--contrast-target", "Kim's red ball. Sam's blue cup. Sam's red",
                   "--contrast-alignments", ",".join(f"{i}-{i}" for i in range(11)),
                   "--attributed-fn", "contrast_prob_diff", "--method", "input_x_gradient",
                   "--aggregate", "sum", "--batch-size", "1", "--no-color", "--json", str(js)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "-0." in out                                  # signed view: negative evidence shown
    info = jaxattr.load(str(js)).info
    assert info["batch_size"] == 1 and info["attributed_fn"] == "contrast_prob_diff"


# ------------------------------------------------------------------ signed defaults
@pytest.mark.parametrize("method,attributed_fn,expected", [
    ("integrated_gradients", "probability", "sum"),
    ("gradient_shap", "probability", "sum"),
    ("occlusion", "probability", "sum"),
    ("input_x_gradient", "contrast_prob_diff", "sum"),
    ("saliency", "contrast_prob_diff", "vnorm"),
    ("input_x_gradient", "probability", "vnorm"),
    ("attention", "probability", "mean"),
])
def test_default_aggregation(method, attributed_fn, expected):
    from jaxattr.aggregate import default_aggregator
    assert default_aggregator({"method": method, "attributed_fn": attributed_fn}) == expected


def test_contrastive_default_view_is_signed(gpt2):
    out = gpt2.attribute("The cat", "The cat sat", method="integrated_gradients", n_steps=8,
                         attributed_fn="contrast_prob_diff", contrast_targets="The cat ran")
    agg = out.aggregate()
    assert "aggregate('sum'" in agg.info["aggregations"][-1]
    raw = np.nansum(out[0].target_attributions[:, 0], axis=-1)
    col = agg[0].target_attributions[:, 0]
    seen = ~np.isnan(out[0].target_attributions[:, 0, 0])   # rows already generated
    np.testing.assert_allclose(col[seen], raw[seen] / np.abs(raw[seen]).sum(), rtol=1e-5)
    assert (col[seen] < 0).any() and (col[seen] > 0).any()


# ------------------------------------------------------------------ noise
def test_no_deprecation_warning_or_blank_lines_but_real_warnings_stay():
    import subprocess
    import sys
    code = ("import logging, jaxattr\n"
            "from jaxattr.testing import make_model\n"
            "make_model('gpt2')\n"
            "logging.getLogger('transformers.modeling_flax_utils').warning('a real warning')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout == ""                                  # no trainer progress lines
    assert "deprecated" not in res.stderr
    assert "a real warning" in res.stderr


# ------------------------------------------------------------------ packaging
def test_license_is_an_spdx_expression():
    import tomllib
    from packaging.licenses import canonicalize_license_expression
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    lic = meta["project"]["license"]
    assert isinstance(lic, str) and canonicalize_license_expression(lic) == lic
    assert not any(c.startswith("License ::") for c in meta["project"].get("classifiers", []))
    assert "setuptools>=77" in meta["build-system"]["requires"]    # first to read PEP 639


# ------------------------------------------------------------------ HTML report
def _view(source, target_rows):
    from jaxattr.results import SequenceAttribution
    tgt = np.array(target_rows, np.float32)
    return SequenceAttribution(
        source=["a", "b"] if source is not None else None, target=["<pad>", "x", "y"],
        source_attributions=None if source is None else np.array(source, np.float32),
        target_attributions=tgt, step_scores={}, attr_pos_start=1, attr_pos_end=3)


def _legend_ends(page):
    m = re.search(r'class="ja-legend"><span>([^<]*)</span>.*?<span>([^<]*)</span>', page)
    return float(m.group(1)), float(m.group(2))


def test_html_generated_tokens_are_underlined():
    from jaxattr.render import to_html
    page = to_html(_view([[0.1, 0.2], [0.3, 0.1]], [[0.2, 0.1], [0.1, 0.3], [np.nan, 0.4]]))
    css = re.search(r"\.ja-g\{[^}]*\}", page).group(0)
    assert "text-decoration:underline" in css
    assert page.count('class="ja-t ja-g ') == 2                 # both generated tokens


def test_html_sequential_scale_for_nonnegative_values():
    from jaxattr.render import to_html
    pos = to_html(_view([[0.1, 0.2], [0.3, 0.1]], [[0.0, 0.1], [0.1, 0.3], [np.nan, 0.4]]))
    assert "sequential colour scale" in pos and _legend_ends(pos) == (0.0, 0.4)
    signed = to_html(_view([[-0.1, 0.2], [0.3, 0.1]], [[0.0, 0.1], [0.1, 0.3], [np.nan, 0.4]]))
    assert "symmetric around 0" in signed and _legend_ends(signed) == (-0.4, 0.4)


def test_html_decoder_start_token_out_of_the_scale():
    from jaxattr.render import to_html
    view = _view([[0.1, 0.2], [0.3, 0.1]], [[5.0, 4.0], [0.1, 0.3], [np.nan, 0.4]])
    assert _legend_ends(to_html(view))[1] == 0.4              # largest outside row 0
    assert _legend_ends(to_html(view, include_decoder_start=True))[1] == 5.0
    decoder_only = _view(None, [[5.0, 4.0], [0.1, 0.3], [np.nan, 0.4]])
    assert _legend_ends(to_html(decoder_only))[1] == 5.0      # row 0 is a real input there


# ------------------------------------------------------------------ training scripts
def test_training_script_writes_a_new_folder_and_is_reproducible(tmp_path):
    import subprocess
    import sys
    script = os.path.join(ROOT, "examples", "train_toy_mt.py")
    env = dict(os.environ, PYTHONPATH=ROOT)
    # a tiny config, one held-out pair (every evaluation subset then has 0 or 1 rows: one
    # compiled greedy decoder instead of one per subset size); reproducibility is the point
    args = ["--steps", "6", "--batch", "8", "--n-eval", "1", "--hidden", "16", "--layers", "1",
            "--heads", "2"]
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        res = subprocess.run([sys.executable, script, *args], cwd=tmp_path / d, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
    a, b = (tmp_path / d / "toy-mt-retrained" / "flax_model.msgpack" for d in "ab")
    assert a.read_bytes() == b.read_bytes()                  # bit-identical on one machine
    again = subprocess.run([sys.executable, script, *args], cwd=tmp_path / "a", env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "--overwrite" in again.stderr   # never overwrites
