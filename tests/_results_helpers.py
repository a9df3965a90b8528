"""Shared objects for the results/aggregation/io/render tests (hand-built and tiny models)."""
from __future__ import annotations

import functools

import numpy as np

from jaxattr.results import AttributionOutput, SequenceAttribution

NAN = np.nan


def toy_encdec() -> SequenceAttribution:
    """Encoder-decoder view with a 2-wide hidden axis; every value written by hand.

    source: ▁Le ▁ch at </s>      target: <pad> ▁The ▁c at   (columns: ▁The ▁c at)
    """
    src = np.array([[[1, 0], [0, 2], [0, 1]],
                    [[0, 3], [4, 0], [1, 1]],
                    [[-2, 0], [0, 1], [0, -5]],
                    [[1, 1], [0, 0], [2, 0]]], np.float32)
    tgt = np.array([[[1, 0], [1, 1], [0, 1]],
                    [[NAN, NAN], [2, 0], [0, 2]],
                    [[NAN, NAN], [NAN, NAN], [3, 4]],
                    [[NAN, NAN], [NAN, NAN], [NAN, NAN]]], np.float32)
    return SequenceAttribution(
        source=["▁Le", "▁ch", "at", "</s>"], target=["<pad>", "▁The", "▁c", "at"],
        source_attributions=src, target_attributions=tgt,
        step_scores={"probability": np.array([0.5, 0.4, 0.5], np.float32),
                     "entropy": np.array([1.0, 2.0, 0.5], np.float32)},
        attr_pos_start=1, attr_pos_end=4, source_ids=[10, 11, 12, 2], target_ids=[0, 20, 21, 12])


def toy_decoder() -> SequenceAttribution:
    """Decoder-only, already aggregated (2-D): prompt ``Hi Ġthere`` + generated ``Ġyou !``."""
    tgt = np.array([[0.5, 0.25],
                    [-0.25, 0.125],
                    [NAN, 0.5],
                    [NAN, NAN]], np.float32)
    return SequenceAttribution(
        source=None, target=["Hi", "Ġthere", "Ġyou", "!"], source_attributions=None,
        target_attributions=tgt, step_scores={"probability": np.array([0.25, 0.5], np.float32)},
        attr_pos_start=2, attr_pos_end=4, target_ids=[5, 6, 7, 8])


def toy_output() -> AttributionOutput:
    return AttributionOutput([toy_encdec(), toy_decoder()],
                             {"model": "toy", "method": "saliency",
                              "attributed_fn": "probability", "step_scores": ["probability"],
                              "jaxattr_version": "0.1.0"})


@functools.lru_cache(maxsize=None)
def gpt2():
    """``(AttributionModel, tokenizer)`` of a tiny random GPT-2."""
    import jaxattr
    from jaxattr.testing import make_model
    model, tok = make_model("gpt2")
    return jaxattr.load_model(model, tokenizer=tok), tok


@functools.lru_cache(maxsize=None)
def gpt2_output():
    """Two decoder-only sequences (3-D attributions, two step scores), computed once."""
    model, _ = gpt2()
    return model.attribute(["The capital of France", "Hello world"],
                           ["The capital of France is Paris", "Hello world, this is it"],
                           step_scores=["probability", "logprob"], show_progress=False)
