"""Sharding over devices, fused aggregation (granular=False) and memory estimates."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

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


@pytest.mark.slow
def test_persistent_compilation_cache_is_explicit_in_python_and_on_in_the_cli(tmp_path):
    """Building a model and attributing leave jax.config and the disk alone; one call (or the
    CLI) turns the cache on; JAXATTR_CACHE_DIR moves or disables it."""
    script = textwrap.dedent("""
        import os, sys, jax, jaxattr
        from jaxattr import cli
        from jaxattr.testing import make_model
        d = os.environ["JAXATTR_CACHE_DIR"]
        # store every compiled program, however fast this machine compiles it (the checks are
        # on who turns the cache on and where it goes, not on JAX's 0.5 s threshold)
        jaxattr.enable_compilation_cache.__kwdefaults__['min_compile_time_secs'] = 0.0
        m, t = make_model('gpt2')
        model = jaxattr.load_model(m, tokenizer=t)
        model.attribute('The cat', 'The cat sat')
        print('BUILT', jax.config.jax_compilation_cache_dir, os.path.exists(d))
        if sys.argv[1] == 'python':
            jaxattr.enable_compilation_cache()
            model.attribute('The dog', 'The dog ran far away from here')
        else:
            p = os.path.join(os.path.dirname(d) or '.', 'model')
            m.save_pretrained(p); t.save_pretrained(p)
            assert cli.main(['attribute', '--model', p, '--input', 'The cat',
                             '--generated', 'The cat sat on the mat', '--no-color']) == 0
        print('DIR', jax.config.jax_compilation_cache_dir)
        """)
    for mode in ("python", "cli"):
        cache = tmp_path / mode / "xla"
        env = dict(os.environ, JAXATTR_CACHE_DIR=str(cache))
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        res = subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "BUILT None False" in res.stdout, res.stdout
        assert f"DIR {cache}" in res.stdout
        assert any(cache.iterdir())  # compiled programs were stored
    env["JAXATTR_CACHE_DIR"] = ""
    res = subprocess.run([sys.executable, "-c", script, "python"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert "DIR None" in res.stdout