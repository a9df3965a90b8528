"""Data of the bundled ``toy-context`` model: a pronoun fixed by the previous sentence.

    context: "Kim is a woman from Rome."     current input: "Kim said that"
    output:  "she is happy."

The pronoun (``he`` / ``she``) depends only on the gender word of the context (``man`` /
``woman``); the adjective is drawn at random, independently of the context. Without the context
the pronoun is a coin flip (training mixes in contextless sequences with a random pronoun), so
a right PECoRe analysis selects the pronoun in CTI and finds the gender word as its first cue
in CCI. Each example records both ground truths.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["NAMES", "CITIES", "ADJECTIVES", "GENDERS", "context_vocab", "context_examples"]

NAMES = ("Kim", "Sam", "Alex", "Robin", "Jordan", "Taylor", "Casey", "Riley", "Morgan", "Jamie",
         "Charlie", "Avery")
CITIES = ("Rome", "Paris", "Lima", "Oslo", "Kyoto", "Cairo", "Quito", "Dublin")
ADJECTIVES = ("happy", "tired", "busy", "late", "sick", "ready")
GENDERS = {"woman": "she", "man": "he"}
_WORDS = ("is", "a", "from", "said", "that", ".")


def context_vocab() -> list[str]:
    """Every word of the task (the tokenizer's vocabulary after the special tokens)."""
    return list(NAMES + CITIES + ADJECTIVES + tuple(GENDERS) + tuple(GENDERS.values()) + _WORDS)


def context_examples(n: int, seed: int = 0) -> list[dict]:
    """``n`` examples ``{"input_context_text", "input_current_text", "output_current_text",
    "cue_index", "cti_index", "gender"}``.

    ``cue_index`` is the gender word's index in the context tokens (``"Kim is a woman from
    Rome."`` -> 3) and ``cti_index`` the pronoun's index in the output tokens (0).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        name = NAMES[rng.integers(len(NAMES))]
        gender = tuple(GENDERS)[rng.integers(2)]
        city = CITIES[rng.integers(len(CITIES))]
        adj = ADJECTIVES[rng.integers(len(ADJECTIVES))]
        out.append({"input_context_text": f"{name} is a {gender} from {city}.",
                    "input_current_text": f"{name} said that",
                    "output_current_text": f"{GENDERS[gender]} is {adj}.",
                    "cue_index": 3, "cti_index": 0, "gender": gender})
    return out


def pronoun_tokens(examples: Sequence[dict]) -> list[str]:
    """The right pronoun of each example."""
    return [GENDERS[e["gender"]] for e in examples]
