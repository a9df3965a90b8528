"""jaxattr compiles without XLA CPU's YNNPACK fusions, which give wrong values for vmapped
gradient programs (jaxattr.xla_safety). Each check compares a vmapped, jitted program with
the same program looped over its vmapped axis (an independent evaluation order)."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import pipeline, targets, xla_safety
from jaxattr.methods import integrated_gradients

# The pure-JAX reproduction: x + rmsnorm(x) twice, the input gradient of each of 16 outputs,
# vmapped over 8 scalings of the input.
REPRO = textwrap.dedent("""
    import sys, warnings, jax, jax.numpy as jnp
    jnp.ones(1).block_until_ready()   # the backend starts before jaxattr is imported
    jit = jax.jit
    if sys.argv[1] == "safe":
        warnings.simplefilter("ignore")
        from jaxattr.xla_safety import safe_jit as jit
    e = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 64)) * 0.02
    W = 1.0 + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (2, 64))

    def f(x):
        h = x
        for w in W:
            h = h + w * (h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6))
        return (h[:, 16:32] ** 2).sum(-1)

    def grads(x):
        return jax.vmap(lambda t: jax.grad(lambda z: f(z)[:, t].sum())(x))(jnp.arange(16))

    alphas = jnp.linspace(0.5, 1.0, 8)
    loop = jnp.stack([jax.jit(grads)(e * a) for a in alphas])
    vmapped = jit(jax.vmap(lambda a: grads(e * a)))(alphas)
    print(float(jnp.abs(vmapped - loop).max() / jnp.abs(loop).max()))
""")


def _run_repro(mode: str, xla_flags: str) -> float:
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", REPRO, mode], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not xla_safety.compiler_options(), reason="this jaxlib has no YNNPACK "
                    "fusion option")
def test_safe_jit_gives_the_looped_values_where_plain_jit_may_not():
    # The backend started with the fusions on (no flag, jaxattr imported too late for it):
    # jaxattr's own jit still turns them off.
    assert _run_repro("safe", "") < 1e-5
    # Plain jax.jit with the fusions off by the environment flag: right too.
    assert _run_repro("plain", "--xla_cpu_experimental_ynn_fusion_type=") < 1e-5


def test_importing_jaxattr_first_sets_the_flag_and_keeps_a_users_value():
    code = ("import os, jaxattr; print(os.environ.get('XLA_FLAGS', ''))")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300).stdout.strip()
    if xla_safety._jaxlib_version() in xla_safety.ENV_FLAG_JAXLIB:
        assert got == "--xla_cpu_experimental_ynn_fusion_type="
    else:
        assert "ynn" not in got
    env["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type=reduce"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300).stdout.strip()
    assert got == "--xla_cpu_experimental_ynn_fusion_type=reduce"


def test_a_started_backend_gets_a_warning_that_names_the_fix():
    code = ("import warnings, jax.numpy as jnp; jnp.ones(2).block_until_ready()\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import jaxattr\n"
            "print([str(x.message) for x in w if 'YNNPACK' in str(x.message)])")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    if xla_safety._jaxlib_version() in xla_safety.ENV_FLAG_JAXLIB:
        assert "XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=" in out.stdout
    else:
        assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("n_steps", [4, 8])
def test_integrated_gradients_program_equals_the_loop_over_steps(n_steps, monkeypatch):
    """The case that found the defect: IG on a 2-layer RMSNorm decoder, 4–32 steps, was
    0.3–0.75 away from the loop over its interpolation steps."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from causal_chunks import make_batch, native_model
    model = native_model(layers=2, hidden=64, vocab=500, heads=4, mlp=256)
    batch = make_batch(2, pad=0, vocab=500)
    call = dict(method=integrated_gradients, method_kwargs=(("n_steps", n_steps),),
                target_fn=targets.logprob, target_kwargs=(), step_fns=(),
                attribute_source=False, attribute_target=True)
    program = np.asarray(pipeline._attribute_jit(model, batch, None, **call)
                         .target_attributions)

    ig_module = sys.modules["jaxattr.methods.integrated_gradients"]

    def loop_sum(fn, items, weights, batch_size=None):  # one alpha at a time, eagerly
        parts = [jax.tree_util.tree_map(lambda v: v * weights[i], fn(items[i]))
                 for i in range(weights.shape[0])]
        return jax.tree_util.tree_map(lambda *p: sum(p), *parts)

    monkeypatch.setattr(ig_module, "weighted_sum", loop_sum)
    looped = np.asarray(pipeline._attribute_impl(model, batch, None, **call)
                        .target_attributions)
    ok = ~np.isnan(looped)
    np.testing.assert_array_equal(ok, ~np.isnan(program))
    scale = np.abs(looped[ok]).max()
    assert np.abs(program[ok] - looped[ok]).max() / scale < 1e-5
