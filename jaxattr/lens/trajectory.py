"""``LensTrajectory``: what every layer predicts at every position, host side.

Rows: row 0 is the residual stream entering block 0, row ``l`` the stream leaving block
``l - 1``; the last row decodes the final state, i.e. it is the model's own prediction.
Per sequence ``i`` the statistics are numpy arrays ``[n_rows, T_i, ...]`` over its real
positions; full log-probabilities ``log_probs[i]`` ``[n_rows, T_i, V]`` are decoded from the
kept states ``[n_rows, T_i, H]`` when first read.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from ..xla_safety import safe_jit
from .. import views
from .core import lens_log_probs

__all__ = ["LensTrajectory", "STAT_NAMES"]

#: Per-cell statistics, each ``[n_rows, T]`` (``top_ids``/``top_probs``: ``[n_rows, T, k]``).
STAT_NAMES = ("top_ids", "top_probs", "entropy", "kl", "target_prob", "target_rank")

_decode = safe_jit(lens_log_probs, static_argnames=("layer_chunk",))


class _LazyLogProbs:
    """``log_probs[i]`` -> ``[n_rows, T_i, V]`` float32, decoded from the kept states."""

    def __init__(self, traj: "LensTrajectory"):
        self._traj = traj
        self._done: dict = {}

    def __len__(self) -> int:
        return len(self._traj.tokens)

    def __getitem__(self, i: int) -> np.ndarray:
        i = range(len(self))[i]
        if i not in self._done:
            t = self._traj
            self._done[i] = np.asarray(_decode(t.readout, t.states[i], t.lens,
                                               layer_chunk=t.layer_chunk))
        return self._done[i]


@dataclasses.dataclass
class LensTrajectory:
    """Logit- or tuned-lens predictions of every layer at every position.

    Attributes:
      kind: ``"logit"`` or ``"tuned"``.
      tokens: per sequence, the decoder-side token strings (decoder-only: the whole text).
      source_tokens: per sequence, encoder tokens (encoder-decoder) or ``None``.
      targets: per sequence, the token id scored at each position (``-1``: none, e.g. the
        last position when scoring the next token).
      stats: per sequence, ``{name: numpy}`` for :data:`STAT_NAMES` (entropy and KL in nats,
        KL is ``KL(final ‖ row)``, ``target_rank`` 0 when the target is the row's top-1;
        ``NaN`` / ``-1`` where there is no target).
      row_names: the site each row reads (``blocks.0.resid_pre``, ``blocks.{l}.resid_post``).
      states: per sequence, the residual states ``[n_rows, T_i, H]`` (device arrays).
      readout, lens, layer_chunk: how rows are decoded (the lens: a
        :class:`~jaxattr.lens.TunedLens` or ``None``).
      tokenizer: converts ``top_ids`` to strings (:meth:`top_tokens`).
    """
    kind: str
    tokens: list
    source_tokens: Optional[list]
    targets: list
    stats: list
    row_names: tuple
    states: list
    readout: Any
    lens: Any
    layer_chunk: Optional[int]
    tokenizer: Any

    def __post_init__(self):
        self.log_probs = _LazyLogProbs(self)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_rows(self) -> int:
        """``n_layers + 1``."""
        return len(self.row_names)

    def row_labels(self) -> list:
        """Short row labels: ``"input"``, ``"1"`` … ``"L"`` (blocks done), the last one
        marked ``"(output)"``."""
        labels = ["input"] + [str(l) for l in range(1, self.n_rows)]
        labels[-1] += " (output)"
        return labels

    def top_tokens(self, i: int = 0) -> np.ndarray:
        """``[n_rows, T_i, k]`` token strings of the top-k ids of sequence ``i``."""
        ids = self.stats[i]["top_ids"]
        toks = self.tokenizer.convert_ids_to_tokens(ids.reshape(-1).tolist())
        return np.asarray(toks, dtype=object).reshape(ids.shape)

    def first_top1_layer(self, i: int = 0) -> np.ndarray:
        """``[T_i]``: the first row at which the target token is the lens's top-1; ``-1``
        where no row ranks it first or there is no target."""
        rank = self.stats[i]["target_rank"]
        hit = rank == 0
        first = np.where(hit.any(0), hit.argmax(0), -1)
        return np.where(self.targets[i] >= 0, first, -1)

    def summary(self, i: int = 0) -> dict:
        """Per row, averaged over the positions with a target: ``{"kl", "entropy",
        "target_prob", "top1"}`` numpy ``[n_rows]`` (``top1``: fraction of positions where
        the target is the row's top-1)."""
        s, valid = self.stats[i], self.targets[i] >= 0
        if not valid.any():
            valid = np.ones_like(valid)
        return {"kl": s["kl"][:, valid].mean(1), "entropy": s["entropy"][:, valid].mean(1),
                "target_prob": np.nanmean(s["target_prob"][:, valid], 1),
                "top1": (s["target_rank"][:, valid] == 0).mean(1)}

    # ---------------------------------------------------------------- views
    def to_text(self, i: int = 0, **kwargs) -> str:
        """Compact terminal table (see :func:`jaxattr.render.lens.lens_text`)."""
        return views.dispatch("lens_text", self, i, **kwargs)

    def to_html(self, i: int = 0, **kwargs) -> str:
        """Standalone HTML heatmap (see :func:`jaxattr.render.lens.lens_html`)."""
        return views.dispatch("lens_html", self, i, **kwargs)

    def to_figure(self, i: int = 0, **kwargs):
        """Matplotlib heatmap (see :func:`jaxattr.render.lens.lens_figure`)."""
        return views.dispatch("lens_figure", self, i, **kwargs)

    def show(self, i: int = 0, **kwargs) -> None:
        """Print the terminal table (an HTML view in notebooks)."""
        views.dispatch("lens_show", self, i, **kwargs)

    def _repr_html_(self) -> str:
        return self.to_html(0, full_page=False)
