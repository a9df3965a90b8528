import os

# Tests compile many small programs; faster XLA codegen (same numbers up to float rounding):
# no backend optimisation, and the classic elemental emitters instead of the MLIR fusion
# emitters (a third less compile time on the suite's tiny programs; subprocess tests inherit
# it). XLA CPU's YNNPACK fusions (jaxattr.xla_safety) are a separate pass: unaffected.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                   "--xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process CLI calls turn JAX's persistent compilation cache on; tests never write under
# ~/.cache (nor share one directory between workers). Tests of the cache set
# JAXATTR_CACHE_DIR themselves.
os.environ.setdefault("JAXATTR_CACHE_DIR", "")

import pytest  # noqa: E402

import jaxattr  # noqa: E402
from jaxattr.testing import make_model  # noqa: E402


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


# Every compiled XLA CPU executable keeps ~45 memory mappings alive (its code sections) until
# JAX's caches drop it. One pytest worker compiles thousands of programs; past the kernel's
# vm.max_map_count (65530 by default) LLVM cannot map the next one and the worker dies
# (SIGABRT / SIGSEGV inside backend_compile_and_load — seen in CI). Drop the compiled programs
# when a worker gets near the limit (clear_caches: 7909 -> 655 mappings after 3 tests).
MAX_MAPS = 30_000


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    yield
    if _memory_maps() > MAX_MAPS:
        import gc

        import jax
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def gpt2():
    model, tok = make_model("gpt2")
    return jaxattr.load_model(model, tokenizer=tok)


@pytest.fixture(scope="session")
def marian():
    model, tok = make_model("marian")
    return jaxattr.load_model(model, tokenizer=tok)


@pytest.fixture(scope="session")
def t5():
    model, tok = make_model("t5")
    return jaxattr.load_model(model, tokenizer=tok)


PROMPTS = ["Kim has a red ball", "The cat", "Hello world, this is"]
FULL = ["Kim has a red ball and Sam has", "The cat sat on the mat", "Hello world, this is a test"]
SOURCES = ["Kim has a red ball", "The cat", "Hello world, this is a tiny test"]
TARGETS = ["Sam has a blue cup", "The dog slept", "A small model"]
