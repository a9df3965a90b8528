"""The ``toy-facts`` task: synthetic facts memorised in a model's weights.

A fixed *world* of people with multi-token names, each with a city, a job and a sport::

    "Ada Moreno lives in"            -> " Oslo"
    "the job of Ada van Moreno is"   -> " baker"

The answer never appears in the prompt: a model that completes these prompts has stored the
facts in its parameters, which is what causal tracing (Meng et al., 2022) looks for. Each fact
is asked with three paraphrases (templates); training uses two of them per fact and the third
is held out, so held-out accuracy measures recall of a stored fact through a prompt never seen
*for that subject* (every template is seen with other subjects).

Everything here is a pure function of its seeds; the training script is
``examples/train_toy_facts.py``.
"""
from __future__ import annotations

import random

from .tasks import words

__all__ = ["FIRST_NAMES", "LAST_NAMES", "PARTICLES", "RELATIONS", "facts_vocab",
           "facts_world", "facts_examples"]

FIRST_NAMES = ("Ada", "Bruno", "Clara", "Dario", "Elena", "Felix", "Greta", "Hugo", "Irene",
               "Jonas", "Karin", "Luca", "Mira", "Nils", "Olga", "Pablo")
LAST_NAMES = ("Moreno", "Lindqvist", "Okafor", "Tanaka", "Petrov", "Silva", "Novak", "Haddad",
              "Kowalski", "Ferreira", "Nakamura", "Jensen", "Rossi", "Dubois", "Quispe", "Mensah")
PARTICLES = ("van", "de", "al")

# relation -> (answers, three templates; "{s}" is the subject)
RELATIONS = {
    "city": (("Oslo", "Lima", "Cairo", "Delhi", "Paris", "Tokyo", "Rome", "Quito", "Dakar",
              "Perth"),
             ("{s} lives in", "{s} is a resident of", "the home of {s} is in")),
    "job": (("doctor", "pilot", "baker", "farmer", "lawyer", "singer", "teacher", "nurse",
             "writer", "chef"),
            ("{s} works as a", "{s} earns a living as a", "the job of {s} is")),
    "sport": (("tennis", "chess", "golf", "rugby", "hockey", "cricket", "boxing", "rowing",
               "skiing", "judo"),
              ("{s} plays", "{s} is a fan of", "the sport of {s} is")),
}


def facts_vocab() -> list[str]:
    """Every word of the task (without special tokens)."""
    vocab = list(FIRST_NAMES) + list(LAST_NAMES) + list(PARTICLES)
    for answers, templates in RELATIONS.values():
        vocab += list(answers)
        for t in templates:
            vocab += [w for w in words(t.replace("{s}", "")) if w not in vocab]
    seen: list[str] = []
    for w in vocab:
        if w not in seen:
            seen.append(w)
    return seen


def facts_world(n_subjects: int = 96, *, seed: int = 0) -> list[dict]:
    """The fixed world: ``n_subjects`` people with a city, a job and a sport each.

    A third of the subjects carry a particle (``"Ada van Moreno"``: three tokens), the others
    two tokens; names are distinct. Returns dicts ``{"subject", "facts": {relation: answer}}``.
    """
    if not 1 <= n_subjects <= len(FIRST_NAMES) * len(LAST_NAMES):
        raise ValueError(f"n_subjects must be in [1, {len(FIRST_NAMES) * len(LAST_NAMES)}], "
                         f"got {n_subjects!r}")
    rng = random.Random(seed)
    pairs = [(f, l) for f in FIRST_NAMES for l in LAST_NAMES]
    rng.shuffle(pairs)
    world = []
    for i, (first, last) in enumerate(pairs[:n_subjects]):
        name = f"{first} {PARTICLES[i % 3]} {last}" if i % 3 == 0 else f"{first} {last}"
        world.append({"subject": name,
                      "facts": {r: rng.choice(a) for r, (a, _) in RELATIONS.items()}})
    return world


def facts_examples(split: str = "all", *, n_subjects: int = 96, seed: int = 0) -> list[dict]:
    """Prompts of the world's facts.

    Each fact (subject, relation) has three templates; one of them, drawn per fact from
    ``seed``, is held out. ``split`` is ``"train"`` (the two others), ``"heldout"`` or ``"all"``.

    Returns dicts with ``prompt``, ``answer`` (the word; the model continues with
    ``" " + answer``), ``generated`` (``prompt + " " + answer``), ``foils`` (the relation's
    other answers), ``tokens`` (``"<s>"`` first, as the bundled tokenizer gives them),
    ``subject``, ``subject_range`` (``(start, stop)`` of the subject in ``tokens``),
    ``relation``, ``template`` (0–2) and ``split``.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    rng = random.Random(seed + 1)
    out = []
    for person in facts_world(n_subjects, seed=seed):
        subject = person["subject"]
        for relation, (answers, templates) in RELATIONS.items():
            held = rng.randrange(len(templates))
            for k, template in enumerate(templates):
                part = "heldout" if k == held else "train"
                if split not in (part, "all"):
                    continue
                prompt = template.format(s=subject)
                before = words(template.split("{s}")[0])
                start = 1 + len(before)
                answer = person["facts"][relation]
                out.append(dict(
                    prompt=prompt, answer=answer, generated=f"{prompt} {answer}",
                    foils=[a for a in answers if a != answer],
                    tokens=["<s>"] + words(prompt), subject=subject,
                    subject_range=(start, start + len(words(subject))),
                    relation=relation, template=k, split=part))
    return out
