"""Selection rules of PECoRe (Inseq 0.7.1's ``get_scores_threshold`` / ``filter_rank_tokens``).

Pure host-side functions over lists of scores. A token is selected when ``|score| >= threshold``
with ``threshold = mean(scores) + λ · std(scores)`` (``std`` unbiased, ``ddof=1``, as torch's
default); the selected tokens are ranked by ``|score|`` (descending, stable) and optionally cut to
the ``topk`` first.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["scores_threshold", "select_tokens"]


def scores_threshold(scores: Sequence[float], std_weight: Optional[float]) -> float:
    """The selection threshold of ``scores`` (``[N]``).

    - ``std_weight=None`` or no scores: ``0.0`` (every token passes ``|s| >= 0``);
    - ``std_weight == 0`` or a single score: ``mean(scores)``;
    - otherwise ``mean(scores) + std_weight * std(scores, ddof=1)``.

    Computed in float32 like Inseq's torch tensors.
    """
    if std_weight is None or len(scores) == 0:
        return 0.0
    x = np.asarray(scores, np.float32)
    mean = np.float32(x.mean(dtype=np.float32))
    if std_weight == 0 or len(x) == 1:
        return float(mean)
    std = np.float32(x.std(ddof=1, dtype=np.float32))
    return float(mean + np.float32(std_weight) * std)


def select_tokens(tokens: Sequence[str], scores: Sequence[float], *,
                  std_threshold: Optional[float] = None,
                  topk: Optional[int] = None) -> tuple[list[tuple[int, float, str]], float]:
    """Rank and select tokens by score.

    Args:
      tokens: ``[N]`` token strings; scores: ``[N]`` their scores.
      std_threshold: λ of the threshold ``mean + λ·std`` (``None``: keep all).
      topk: keep at most this many of the selected tokens (``None`` or 0: all).

    Returns:
      ``([(index, score, token), ...], threshold)``: the selected tokens sorted by ``|score|``
      (descending; ties keep their order), and the threshold used.
    """
    if len(tokens) != len(scores):
        raise ValueError(f"got {len(tokens)} tokens but {len(scores)} scores; give one score "
                         "per token.")
    if topk is not None and int(topk) < 0:
        raise ValueError(f"topk must be a positive integer or None, got {topk}.")
    threshold = scores_threshold(scores, std_threshold)
    ranked = sorted(zip(range(len(scores)), (float(s) for s in scores), tokens),
                    key=lambda x: abs(x[1]), reverse=True)
    kept = [(i, s, t) for i, s, t in ranked if abs(s) >= threshold]
    if topk:
        kept = kept[:int(topk)]
    return kept, threshold
