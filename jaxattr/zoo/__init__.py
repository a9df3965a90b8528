"""Bundled toy models: tiny checkpoints trained on synthetic tasks with known ground truth.

They ship inside the package (a few hundred kB each), load offline, and exist so that examples,
tests and plausibility benchmarks have models whose *right* explanation is known::

    import jaxattr
    model = jaxattr.load_model(jaxattr.zoo.path("toy-recall"))   # or load_model("toy-recall")
    print(jaxattr.zoo.card("toy-recall"))

The data generators (with the ground-truth cue of every example) are in
:mod:`jaxattr.zoo.tasks`; the training scripts in ``examples/train_toy_*.py``.
"""
from __future__ import annotations

import os

from . import context_task, facts, tasks

__all__ = ["BUNDLED", "path", "card", "tasks", "context_task", "facts"]

BUNDLED: dict[str, str] = {
    "toy-recall": "Decoder-only GPT-2 (2 layers, hidden 64) trained on in-context recall: "
                  "\"Kim's red ball. Sam's blue cup. Sam's\" -> ' blue'. "
                  "Ground-truth cue: the colour token of the queried fact.",
    "toy-mt": "Encoder-decoder Marian (2+2 layers, d_model 64) translating English into a toy "
              "language with grammatical gender, trained on occupationally skewed data: "
              "'the nurse said he is tired' -> 'lo enfermero dis ke il es kansado'. "
              "Ground-truth cue: the source pronoun / possessive / gendered noun.",
    "toy-context": "Decoder-only GPT-2 (2 layers, hidden 48) whose pronoun comes from a context "
                   "sentence: \"Kim is a woman from Rome. Kim said that\" -> ' she is happy.' "
                   "PECoRe ground truth: CTI selects the pronoun; its cue is the gender word.",
    "toy-facts": "Decoder-only GPT-2 (4 layers, hidden 96) that has memorised synthetic facts "
                 "about 96 people with multi-token names: \"Ada Moreno lives in\" -> ' Oslo' "
                 "(the answer is never in the prompt). Ground truth for causal tracing: the "
                 "subject span of every prompt (jaxattr.zoo.facts).",
}

_ROOT = os.path.dirname(os.path.abspath(__file__))


def _check(name: str) -> None:
    if name not in BUNDLED:
        raise KeyError(f"no bundled model {name!r}; bundled models: {sorted(BUNDLED)}")


def path(name: str) -> str:
    """The directory of bundled model ``name`` inside the installed package (give it to
    :func:`jaxattr.load_model`)."""
    _check(name)
    p = os.path.join(_ROOT, name)
    if not os.path.isfile(os.path.join(p, "config.json")):
        raise FileNotFoundError(
            f"bundled model {name!r} is missing its files under {p}; reinstall jaxattr, or "
            f"rebuild it with examples/train_{name.replace('-', '_')}.py.")
    return p


def card(name: str) -> str:
    """The model card (``CARD.md``): task, data generator, seed, training, held-out accuracy
    and the definition of the ground-truth cue."""
    with open(os.path.join(path(name), "CARD.md"), encoding="utf-8") as f:
        return f.read()
