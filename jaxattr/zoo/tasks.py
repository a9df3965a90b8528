"""Synthetic tasks behind the bundled toy models, with ground-truth cues.

Both generators are pure Python (``random.Random(seed)``), deterministic given ``(n, seed)``,
and return plain dicts, so benchmarks can reuse them without touching the models.

Token positions follow what jaxattr shows in a :class:`~jaxattr.SequenceAttribution`:

* ``toy-recall`` (decoder-only): ``seq.target`` is ``["<s>", *prompt words, answer, ...]``, so
  ``cue_index`` indexes the prompt tokens **with BOS at 0** (a row of
  ``seq.target_attributions``).
* ``toy-mt`` (encoder-decoder): ``seq.source`` is ``[*source words, "</s>"]``, so ``cue_index``
  indexes the source tokens (a row of ``seq.source_attributions``); ``seq.target`` is
  ``["<pad>", *target words, "</s>"]`` (decoder start token at 0), so ``gender_steps`` index
  ``seq.target`` directly.

Words are split as the bundled tokenizers split them (:func:`words`: possessives such as
``Sam's``, runs of word characters, runs of punctuation).
"""
from __future__ import annotations

import random
import re
from typing import Optional, Sequence

__all__ = ["words", "recall_examples", "mt_examples", "recall_vocab", "mt_vocab",
           "word_tokenizer", "NAMES", "COLOURS", "OBJECTS", "OCCUPATIONS", "ADJECTIVES",
           "RELATIVES", "THINGS", "MT_TEMPLATES", "SPECIAL_TOKENS"]

_WORD_RE = re.compile(r"\w+'s\b|\w+|[^\w\s]+")

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "<s>")   # ids 0, 1, 2, 3 in both tokenizers


def words(text: str) -> list[str]:
    """Split like the bundled tokenizers' pre-tokenizer: possessives (``Sam's``), runs of
    word characters, runs of other non-space characters."""
    return _WORD_RE.findall(text)


# ---------------------------------------------------------------------------- toy-recall
NAMES = ("Kim", "Sam", "Alex", "Maria", "John", "Lena", "Omar", "Yuki", "Ravi", "Nina", "Tom",
         "Eva")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
OBJECTS = ("ball", "cup", "hat", "box", "book", "car", "pen", "kite")


def recall_vocab() -> list[str]:
    """Every word of the recall task (without special tokens); names are possessives."""
    return [n + "'s" for n in NAMES] + list(COLOURS) + list(OBJECTS) + ["."]


def recall_examples(n: int, seed: int = 0, *, n_facts: Sequence[int] = (2, 3)) -> list[dict]:
    """In-context recall: ``"Kim's red ball. Sam's blue cup. Sam's"`` -> ``"blue"``.

    Each prompt lists ``k`` facts ``"<name>'s <colour> <object>."`` (``k`` drawn from
    ``n_facts``; names and colours distinct within a prompt, objects may repeat) and then
    queries one of the names with ``"<name>'s"``. The answer is the colour bound to that name;
    the model continues with ``" <colour> <object>."`` (``completion``). Possessives
    (``"Sam's"``) are single tokens.

    Returns dicts with:
      ``prompt``, ``answer`` (the colour word), ``completion`` (``" blue cup."``),
      ``generated`` (``prompt + " " + answer``: the text to force when attributing the answer),
      ``tokens`` (prompt tokens as the model sees them, ``"<s>"`` first),
      ``cue_index`` / ``cue_token``: the ground-truth cue, the position in ``tokens`` of the
        answer colour inside the queried fact (the only occurrence of that colour),
      ``name_index``: position of the queried name inside its fact (the token the cue is bound
        to), ``query_index``: position of the queried name at the end of the prompt,
      ``distractor_indices`` / ``distractor_colours``: the other facts' colours,
      ``fact`` (which fact was queried) and ``n_facts``.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice(list(n_facts))
        names = rng.sample(NAMES, k)
        colours = rng.sample(COLOURS, k)
        objects = [rng.choice(OBJECTS) for _ in range(k)]
        q = rng.randrange(k)
        facts = [f"{a}'s {c} {o}." for a, c, o in zip(names, colours, objects)]
        prompt = " ".join(facts) + f" {names[q]}'s"
        tokens = ["<s>"] + words(prompt)
        # fact i occupies tokens 1 + 4*i ... 4 + 4*i: name's colour object .
        colour_at = [1 + 4 * i + 1 for i in range(k)]
        out.append(dict(
            prompt=prompt, answer=colours[q], completion=f" {colours[q]} {objects[q]}.",
            generated=f"{prompt} {colours[q]}", tokens=tokens,
            cue_index=colour_at[q], cue_token=colours[q], name_index=1 + 4 * q,
            query_index=len(tokens) - 1,
            distractor_indices=[colour_at[i] for i in range(k) if i != q],
            distractor_colours=[colours[i] for i in range(k) if i != q],
            fact=q, n_facts=k))
    return out


# ---------------------------------------------------------------------------- toy-mt
# English occupation -> (target stem, stereotypical gender in the training data). The target
# noun is stem + "o" (masculine) or stem + "a" (feminine).
OCCUPATIONS = {
    "doctor": ("doktor", "m"), "engineer": ("injenier", "m"), "pilot": ("pilot", "m"),
    "lawyer": ("abogad", "m"), "mechanic": ("mekanik", "m"),
    "nurse": ("enfermer", "f"), "teacher": ("maestr", "f"), "dancer": ("bailarin", "f"),
    "secretary": ("sekretari", "f"), "cleaner": ("limpiador", "f"),
}
ADJECTIVES = {"tired": "kansad", "happy": "kontent", "tall": "alt", "busy": "okupad",
              "angry": "furios", "late": "tardi"}
# gendered English nouns -> (target word, gender)
RELATIVES = {"mother": ("madre", "f"), "father": ("padre", "m"), "sister": ("ermana", "f"),
             "brother": ("ermano", "m"), "aunt": ("tia", "f"), "uncle": ("tio", "m")}
THINGS = {"keys": "klaves", "book": "libre", "phone": "telefon", "bag": "bolse"}
_ART = {"m": "lo", "f": "la"}
_PRON_EN = {"m": "he", "f": "she"}
_PRON_T = {"m": "il", "f": "ela"}
_POSS_EN = {"m": "his", "f": "her"}
_SUFFIX = {"m": "o", "f": "a"}
_OTHER = {"m": "f", "f": "m"}

# template -> probability in the training distribution
MT_TEMPLATES = {"pronoun": 0.35, "possessive": 0.25, "relative": 0.2, "bare": 0.2}


def mt_vocab() -> list[str]:
    """Every source and target word of the translation task (without special tokens)."""
    src = (["the", "said", "is", "lost", "my", "he", "she", "his", "her"] + list(OCCUPATIONS)
           + list(ADJECTIVES) + list(RELATIVES) + list(THINGS))
    tgt = (["lo", "la", "il", "ela", "dis", "ke", "es", "perdi", "su", "mi"]
           + [s + x for s, _ in OCCUPATIONS.values() for x in "oa"]
           + [s + x for s in ADJECTIVES.values() for x in "oa"]
           + [w for w, _ in RELATIVES.values()] + list(THINGS.values()))
    return list(dict.fromkeys(src + tgt))


def _mt_pair(template, occ, g, other):
    """Source and target words for one example; ``other`` is the template's free word."""
    stem = OCCUPATIONS[occ][0]
    head = [_ART[g], stem + _SUFFIX[g]]
    if template == "pronoun":
        src = ["the", occ, "said", _PRON_EN[g], "is", other]
        tgt = head + ["dis", "ke", _PRON_T[g], "es", ADJECTIVES[other] + _SUFFIX[g]]
        cue = 3
    elif template == "possessive":
        src = ["the", occ, "lost", _POSS_EN[g], other]
        tgt = head + ["perdi", "su", THINGS[other]]
        cue = 3
    elif template == "relative":
        src = ["the", occ, "is", "my", other]
        tgt = head + ["es", "mi", RELATIVES[other][0]]
        cue = 4
    elif template == "bare":
        src = ["the", occ, "is", other]
        tgt = head + ["es", ADJECTIVES[other] + _SUFFIX[g]]
        cue = 1
    else:
        raise ValueError(f"unknown template {template!r}; choose from {list(MT_TEMPLATES)}")
    return src, tgt, cue


def mt_examples(n: int, seed: int = 0, *, skew: float = 0.8,
                templates: Optional[dict] = None,
                gender: Optional[str] = None) -> list[dict]:
    """English -> toy Romance language with grammatical gender.

    The article (``lo``/``la``), the occupation noun (``-o``/``-a``), the target pronoun
    (``il``/``ela``) and adjectives (``-o``/``-a``) agree with the gender of the occupation's
    referent, which the source sets by

    * ``pronoun``:    ``the nurse said he is tired``  -> ``lo enfermero dis ke il es kansado``
    * ``possessive``: ``the doctor lost her keys``    -> ``la doktora perdi su klaves``
    * ``relative``:   ``the pilot is my mother``      -> ``la pilota es mi madre`` (gendered noun)
    * ``bare``:       ``the teacher is tired``        -> ``la maestra es kansada``: no cue, so the
      translation uses the occupation's stereotypical gender (``OCCUPATIONS``) -- the
      deliberate bias of this corpus.

    In the cued templates the gender is the stereotypical one with probability ``skew`` (the
    occupational skew of the training data), else the other one; ``gender="m"|"f"`` forces it
    (e.g. ``gender`` opposite to the stereotype gives anti-stereotypical test sets).
    ``templates`` maps template names to weights (default :data:`MT_TEMPLATES`).

    Returns dicts with:
      ``source``, ``target``, ``contrast_target`` (the target with the other gender: for a
        contrastive "why la, not lo?" attribution), ``gender``, ``stereotype``,
        ``anti_stereotypical``, ``template``, ``occupation``,
      ``source_tokens`` (``seq.source``: words + ``"</s>"``),
      ``cue_index`` / ``cue_token``: the ground-truth gender cue in ``source_tokens`` (the
        pronoun, possessive or gendered noun; for ``bare`` the occupation itself),
      ``occupation_index``: the occupation in ``source_tokens`` (1),
      ``gender_steps``: positions in ``seq.target`` (decoder start at 0) of the target tokens
        that carry gender (article, occupation, and pronoun/adjective where present).
    """
    rng = random.Random(seed)
    weights = dict(templates or MT_TEMPLATES)
    names, probs = list(weights), [float(weights[k]) for k in weights]
    occs = list(OCCUPATIONS)
    out = []
    for _ in range(n):
        template = rng.choices(names, probs)[0]
        occ = rng.choice(occs)
        stereo = OCCUPATIONS[occ][1]
        if template == "bare":
            g = stereo
            other = rng.choice(list(ADJECTIVES))
        else:
            g = gender if gender is not None else (
                stereo if rng.random() < skew else _OTHER[stereo])
            if template == "pronoun":
                other = rng.choice(list(ADJECTIVES))
            elif template == "possessive":
                other = rng.choice(list(THINGS))
            else:
                other = rng.choice([w for w, (_, rg) in RELATIVES.items() if rg == g])
        src, tgt, cue = _mt_pair(template, occ, g, other)
        if template == "relative":
            contrast = _mt_pair(template, occ, _OTHER[g], other)[1]
            contrast[-1] = tgt[-1]   # same relative noun; only the agreement flips
        else:
            contrast = _mt_pair(template, occ, _OTHER[g], other)[1]
        gender_words = {"pronoun": [0, 1, 4, 6], "possessive": [0, 1], "relative": [0, 1],
                        "bare": [0, 1, 3]}[template]
        out.append(dict(
            source=" ".join(src), target=" ".join(tgt), contrast_target=" ".join(contrast),
            gender=g, stereotype=stereo, anti_stereotypical=g != stereo, template=template,
            occupation=occ, source_tokens=src + ["</s>"], cue_index=cue, cue_token=src[cue],
            occupation_index=1, gender_steps=[i + 1 for i in gender_words]))
    return out


# ---------------------------------------------------------------------------- tokenizer
def word_tokenizer(vocab: Sequence[str], *, bos: bool = False, eos: bool = False,
                   model_max_length: int = 64):
    """A word-level ``PreTrainedTokenizerFast`` over ``SPECIAL_TOKENS + vocab``.

    ``bos`` prepends ``<s>`` (decoder-only models), ``eos`` appends ``</s>`` (encoder-decoder
    models). Decoding joins words with spaces and removes the space before punctuation.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    table = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + [w for w in vocab
                                                                   if w not in SPECIAL_TOKENS])}
    tk = Tokenizer(models.WordLevel(vocab=table, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\w+'s\b|\w+|[^\w\s]+"), behavior="removed", invert=True)
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    single = " ".join((["<s>"] if bos else []) + ["$A"] + (["</s>"] if eos else []))
    pair = " ".join((["<s>"] if bos else []) + ["$A"] + (["</s>"] if eos else []) + ["$B:1"]
                    + (["</s>:1"] if eos else []))
    tk.post_processor = processors.TemplateProcessing(
        single=single, pair=pair,
        special_tokens=[("<s>", table["<s>"]), ("</s>", table["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>",
                                   model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=True,
                                   model_input_names=["input_ids", "attention_mask"])
