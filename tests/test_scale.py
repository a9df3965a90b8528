"""Sharding over devices, fused aggregation (granular=False) and memory estimates."""
import os
import subprocess
import sys
import textwrap

import numpy as np

from conftest import FULL, PROMPTS, SOURCES, TARGETS

SHARDED_SCRIPT = textwrap.dedent("""
    import jax, numpy as np, jaxattr
    from jaxattr.testing import make_model
    assert len(jax.devices()) == 4, jax.devices()
    worst = 0.0
    for arch, a, b in [("gpt2", {prompts!r}, {full!r}), ("marian", {sources!r}, {targets!r})]:
        model = jaxattr.load_model(*make_model(arch)[:1], tokenizer=make_model(arch)[1])
        methods = ([("saliency", {{}})] if arch == "gpt2"
                   else [("integrated_gradients", {{"n_steps": 4}})])
        for method, kw in methods:
            one = model.attribute(a, b, method=method, attribute_target=True,
                                  step_scores=("probability",), **kw)
            # decoder-only: also sharded with prefix groups (device-side slicing + stitching)
            for extra in ([{{}}, {{"prefix_groups": 2}}] if arch == "gpt2" else [{{}}]):
                sh = model.attribute(a, b, method=method, attribute_target=True, mesh="auto",
                                     step_scores=("probability",), **kw, **extra)
                res = sh.batches[0].target_attributions
                assert len(res.sharding.device_set) == 4, res.sharding
                for x, y in zip(one.sequence_attributions, sh.sequence_attributions):
                    for u, v in [(x.target_attributions, y.target_attributions),
                                 (x.source_attributions, y.source_attributions)]:
                        if u is None:
                            continue
                        assert np.array_equal(np.isnan(u), np.isnan(v))
                        worst = max(worst,
                                    float(np.nanmax(np.abs(u - v)) / np.nanmax(np.abs(u))))
                    np.testing.assert_allclose(x.step_scores["probability"],
                                               y.step_scores["probability"], rtol=1e-5)
    print("WORST", worst)
    assert worst <= 1e-5, worst
""")


def test_sharded_run_equals_single_device():
    script = SHARDED_SCRIPT.format(prompts=PROMPTS, full=FULL, sources=SOURCES, targets=TARGETS)
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "WORST" in res.stdout


def test_granular_false_fuses_the_hidden_reduction(gpt2):
    full = gpt2.attribute(PROMPTS, FULL, method="input_x_gradient")
    for agg, ref in [("vnorm", lambda a: np.linalg.norm(a, axis=-1)), ("sum", lambda a: a.sum(-1))]:
        fused = gpt2.attribute(PROMPTS, FULL, method="input_x_gradient", granular=False,
                               aggregator=agg)
        for x, y in zip(full.sequence_attributions, fused.sequence_attributions):
            assert y.target_attributions.shape == x.target_attributions.shape[:2]
            np.testing.assert_allclose(y.target_attributions, ref(x.target_attributions),
                                       rtol=1e-5, atol=1e-8)
    # and the result shrinks by the hidden size
    m_full = gpt2.estimate_memory(PROMPTS, FULL, method="input_x_gradient")
    m_fused = gpt2.estimate_memory(PROMPTS, FULL, method="input_x_gradient", granular=False)
    hidden = gpt2.config.n_embd
    assert m_fused["output"] * hidden / 2 < m_full["output"]


def test_estimate_memory_is_bounded_by_internal_batch_size(marian):
    def temp(**kw):
        return marian.estimate_memory(SOURCES, TARGETS, method="integrated_gradients",
                                      **kw)["temp"]
    unchunked_8, unchunked_32 = temp(n_steps=8), temp(n_steps=32)
    chunked_8, chunked_32 = (temp(n_steps=8, internal_batch_size=2),
                             temp(n_steps=32, internal_batch_size=2))
    assert unchunked_32 > 2.5 * unchunked_8          # grows with n_steps
    assert chunked_32 <= 1.1 * chunked_8             # does not
    assert chunked_32 * 4 < unchunked_32


def test_persistent_compilation_cache_is_on_and_configurable(tmp_path):
    script = ("import jaxattr, jax\nfrom jaxattr.testing import make_model\n"
              "m, t = make_model('gpt2')\n"
              "jaxattr.load_model(m, tokenizer=t).attribute('The cat', 'The cat sat')\n"
              "print('DIR', jax.config.jax_compilation_cache_dir)\n")
    env = dict(os.environ, JAXATTR_CACHE_DIR=str(tmp_path / "xla"))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"DIR {tmp_path / 'xla'}" in res.stdout
    assert any((tmp_path / "xla").iterdir())  # compiled programs were stored
    env["JAXATTR_CACHE_DIR"] = ""
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert "DIR None" in res.stdout
