"""Shared workload of the benchmarks: the cached random GPT-2-124M checkpoint and the prompts.

Imported by ``side_by_side.py``, ``_jaxattr_worker.py`` and ``device_bench.py`` (main venv;
``matmul_flops_per_s`` is the one matmul-peak probe they share). The checkpoint is
built once by ``inseq_side/make_bench_checkpoint.py`` in the side venv (it needs torch) and
cached under ``benchmarks/.cache/`` (git-ignored).
"""
from __future__ import annotations

import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
CKPT = os.path.join(CACHE, "gpt2-124m-random")
SIDE_PY = os.environ.get("INSEQ_PYTHON", "/work/inseq-venv/bin/python")

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


def ensure_checkpoint(verbose=True) -> str:
    """Build the cached checkpoint (side venv, ~1 min) unless it exists; return its path."""
    if not os.path.exists(os.path.join(CKPT, "model.safetensors")):
        if verbose:
            print(f"building {CKPT} with {SIDE_PY} (once, ~1 min) ...", flush=True)
        subprocess.run([SIDE_PY, os.path.join(HERE, "inseq_side", "make_bench_checkpoint.py"),
                        CKPT], check=True)
    return CKPT


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


__all__ = ["CKPT", "CACHE", "SIDE_PY", "ensure_checkpoint", "make_prompts", "run_json",
           "python_env"]


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
