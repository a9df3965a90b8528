"""Shared workload of the benchmarks: the cached random GPT-2-124M checkpoint and the prompts.

Imported by ``side_by_side.py``, ``_jaxattr_worker.py``, ``device_bench.py``, ``lens.py``,
``faithfulness.py`` and others (main venv; ``matmul_flops_per_s`` is the one matmul-peak probe
they share). The checkpoint is built once by ``inseq_side/make_bench_checkpoint.py`` with the
side python (it needs torch) and cached under ``benchmarks/.cache/`` (git-ignored).

The side python is ``$JAXATTR_SIDE_PYTHON``, else ``$INSEQ_PYTHON``, else
``/work/inseq-venv/bin/python``; on the GPU machine, whose ``python3`` holds both JAX and torch,
``benchmarks/gpu_check.sh`` sets ``JAXATTR_SIDE_PYTHON=python3``. The tokenizer is trained
locally (1-2 min) unless one is found to copy: the 124M checkpoint's own, or an exported copy in
``$JAXATTR_BENCH_TOKENIZER`` (default ``benchmarks/.cache/tokenizer``, which
``gpu_check.sh prepare`` writes and a GPU call carries), so every machine tokenises the
workload's passages alike. ``ensure_checkpoint(tiny=True)`` builds a 2-layer, 64-wide model
with the same tokenizer (``gpt2-tiny-random``) for the ``--smoke`` dry-runs.
"""
from __future__ import annotations

import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
CKPT = os.path.join(CACHE, "gpt2-124m-random")
TINY_CKPT = os.path.join(CACHE, "gpt2-tiny-random")
TOKENIZER_DIR = os.environ.get("JAXATTR_BENCH_TOKENIZER", os.path.join(CACHE, "tokenizer"))
SIDE_PY = (os.environ.get("JAXATTR_SIDE_PYTHON") or os.environ.get("INSEQ_PYTHON")
           or "/work/inseq-venv/bin/python")

PROMPT_TOKENS = 16
CONT_TOKENS = 16

# English passages; each gives one (prompt, prompt + continuation) pair: the first 16 tokens
# and the first 32 tokens of the passage under the locally trained BPE (pairs whose prompt
# does not re-tokenise to the same 16 tokens are skipped, so every sequence has exactly
# 16 prompt + 16 generated tokens: length bucket 32, step bucket 16, no padding).
PASSAGES = [
    "The committee met on Tuesday morning to discuss the budget for next year, and after a "
    "long debate they agreed to fund the new library and the swimming pool.",
    "When the river flooded the valley in the spring, the farmers moved their animals to the "
    "hills and waited for the water to go down before they returned home.",
    "Integrated gradients explain a prediction by summing the gradients of the output along a "
    "straight path from a baseline to the input, which makes the result complete.",
    "She opened the old wooden box that her grandmother had left her and found a bundle of "
    "letters tied together with a faded blue ribbon.",
    "The new version of the software fixes several bugs in the network code and improves the "
    "speed of the file system by a large margin on most machines.",
    "Every morning before work he walked the dog around the park, bought a newspaper at the "
    "corner shop and drank a cup of strong coffee.",
    "Scientists have found that the small island in the northern sea is home to a rare kind "
    "of bird that builds its nest on the cliffs.",
    "The train to the capital was delayed by two hours because of snow on the tracks, so the "
    "passengers waited in the warm station cafe and read their books.",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this "
    "software and associated documentation files, to deal in the software without restriction.",
    "This program is distributed in the hope that it will be useful, but without any "
    "warranty; without even the implied warranty of merchantability or fitness for a purpose.",
    "The children spent the whole afternoon building a castle out of sand on the beach, and "
    "when the tide came in they watched the waves wash it away.",
    "Our neighbours planted tomatoes, beans and potatoes in the garden behind the house, and "
    "by the end of the summer they had more food than they could eat.",
    "The museum in the centre of the town has a large collection of paintings, maps and old "
    "coins that visitors can see for free on the first Sunday of each month.",
]


def _tokenizer_source():
    """A directory holding a ``tokenizer.json`` to copy into a new checkpoint, or ``None``."""
    for d in (CKPT, TOKENIZER_DIR):
        if os.path.exists(os.path.join(d, "tokenizer.json")):
            return d
    return None


def ensure_checkpoint(verbose=True, *, tiny=False, side_python=None) -> str:
    """Build the cached checkpoint unless it exists; return its path.

    ``tiny``: the 2-layer, 64-wide smoke-test model instead of the GPT-2-124M-sized one.
    ``side_python``: the interpreter with torch that builds it (default :data:`SIDE_PY`).
    The tokenizer is copied from :func:`_tokenizer_source` when one exists (seconds), else
    trained locally (1-2 min).
    """
    ckpt = TINY_CKPT if tiny else CKPT
    if not os.path.exists(os.path.join(ckpt, "model.safetensors")):
        py = side_python or SIDE_PY
        cmd = [py, os.path.join(HERE, "inseq_side", "make_bench_checkpoint.py"), ckpt]
        tok = _tokenizer_source()
        if tok is not None and os.path.abspath(tok) != os.path.abspath(ckpt):
            cmd += ["--tokenizer", tok]
        if tiny:
            cmd.append("--tiny")
        if verbose:
            how = f"tokenizer from {tok}" if tok else "training the tokenizer, ~1 min"
            print(f"building {ckpt} with {py} ({how}) ...", flush=True)
        subprocess.run(cmd, check=True)
    return ckpt


def make_prompts(n=8, ckpt=CKPT):
    """``(prompts, generated_texts)``: ``n`` pairs of 16 prompt + 16 continuation tokens."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ckpt)
    prompts, gens = [], []
    for passage in PASSAGES:
        ids = tok(passage)["input_ids"]
        if len(ids) < PROMPT_TOKENS + CONT_TOKENS:
            continue
        p = tok.decode(ids[:PROMPT_TOKENS])
        g = tok.decode(ids[:PROMPT_TOKENS + CONT_TOKENS])
        if (tok(p)["input_ids"] != ids[:PROMPT_TOKENS]
                or tok(g)["input_ids"] != ids[:PROMPT_TOKENS + CONT_TOKENS]
                or not g.startswith(p)):
            continue
        prompts.append(p)
        gens.append(g)
        if len(prompts) == n:
            return prompts, gens
    raise RuntimeError(f"only {len(prompts)} usable passages; add more to PASSAGES")


def run_json(cmd, *, env=None, timeout=None):
    """Run ``cmd``, stream its stderr, parse the last stdout line as JSON."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed with exit code {proc.returncode}")
    lines = [l for l in proc.stdout.strip().splitlines() if l.strip()]
    return json.loads(lines[-1])


def python_env():
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


__all__ = ["CKPT", "CACHE", "SIDE_PY", "TINY_CKPT", "TOKENIZER_DIR", "CompileClock",
           "ensure_checkpoint", "make_prompts", "run_json", "python_env", "matmul_flops_per_s"]


class CompileClock:
    """Sums JAX's compile-time events (tracing, lowering, XLA backend compile) while it is
    installed, so a benchmark can report device time apart from compilation.

    ``clock = CompileClock.install(); ...; clock.take()`` returns the seconds spent since the
    last ``take`` per event kind, plus ``"total"``. JAX has no way to remove a listener; one
    clock per process is enough.
    """

    KEYS = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration",
            "backend_compile_duration")

    def __init__(self):
        self.seconds = {}

    @classmethod
    def install(cls):
        import jax.monitoring
        clock = cls()
        jax.monitoring.register_event_duration_secs_listener(clock._event)
        return clock

    def _event(self, name, secs, **_):
        key = name.rsplit("/", 1)[-1]
        if key in self.KEYS:
            self.seconds[key] = self.seconds.get(key, 0.0) + float(secs)

    def take(self) -> dict:
        out = {k: round(self.seconds.get(k, 0.0), 3) for k in self.KEYS}
        out["total"] = round(sum(self.seconds.values()), 3)
        self.seconds = {}
        return out


def matmul_flops_per_s(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """The device's matmul throughput: a jitted ``n x n`` ``jnp.dot`` in ``dtype``, median of
    ``repeats`` timed calls after one warm-up, as FLOP/s (``2 n^3`` per call)."""
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)
