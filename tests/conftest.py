import os

# Tests compile many small programs; faster XLA codegen (same numbers up to float rounding).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process CLI calls turn JAX's persistent compilation cache on; tests never write under
# ~/.cache (two workers sharing one cache directory read each other's half-written entries).
# Tests of the cache set JAXATTR_CACHE_DIR themselves.
os.environ.setdefault("JAXATTR_CACHE_DIR", "")

import pytest  # noqa: E402

import jaxattr  # noqa: E402
from jaxattr.testing import make_model  # noqa: E402


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
