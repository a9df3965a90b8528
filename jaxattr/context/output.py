"""PECoRe results with the field names of Inseq 0.7.1's ``AttributeContextOutput`` / ``CCIOutput``.

Host-side (plain Python lists and floats): ``to_dict()`` gives the same JSON as Inseq, plus
``cti_threshold`` (the CTI selection threshold, used by the views).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Union

import numpy as np

from .. import views

__all__ = ["CCIOutput", "AttributeContextOutput", "load_context"]

FORMAT = "jaxattr.attribute_context"


@dataclasses.dataclass
class CCIOutput:
    """Contextual cues of one context-sensitive token.

    Attributes:
      cti_idx: index of the token in ``output_current_tokens``; cti_token: the token;
      cti_score: its CTI score.
      contextual_output: the contextual output up to and including the token.
      contrast_token, contextless_output: the foil and the contextless output ending in it
        (contrastive ``attributed_fn`` only, else ``None``).
      input_context_scores: ``[len(input_context_tokens)]`` attribution of the token to each
        input-context token (``None`` without input context).
      output_context_scores: ``[len(output_context_tokens)]`` the same for the output context.
    """
    cti_idx: int
    cti_token: str
    cti_score: float
    contextual_output: str
    contrast_token: Optional[str] = None
    contextless_output: Optional[str] = None
    input_context_scores: Optional[list] = None
    output_context_scores: Optional[list] = None

    def to_dict(self) -> dict:
        """Plain dict with Inseq's field names."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def all_scores(self) -> list:
        """Input-context scores followed by output-context scores."""
        return list(self.input_context_scores or []) + list(self.output_context_scores or [])


@dataclasses.dataclass
class AttributeContextOutput:
    """What :func:`jaxattr.attribute_context` returns for one example.

    Attributes:
      input_context, output_context, output_current: the texts (``None`` when absent).
      input_context_tokens, output_context_tokens, output_current_tokens: their tokens
        (special tokens removed unless kept).
      cti_scores: ``[len(output_current_tokens)]`` context sensitivity of each token.
      cci_scores: one :class:`CCIOutput` per selected token, ranked by ``|cti_score|``.
      info: the options of the run (``None`` with ``add_output_info=False``).
      cti_threshold: the CTI selection threshold.
    """
    input_context: Optional[str] = None
    input_context_tokens: Optional[list] = None
    output_context: Optional[str] = None
    output_context_tokens: Optional[list] = None
    output_current: Optional[str] = None
    output_current_tokens: Optional[list] = None
    cti_scores: Optional[list] = None
    cci_scores: list = dataclasses.field(default_factory=list)
    info: Optional[dict] = None
    cti_threshold: Optional[float] = None

    # -- selection views ------------------------------------------------------------------
    @property
    def cti_idx(self) -> list:
        """Indices of the selected (context-sensitive) tokens, in rank order."""
        return [c.cti_idx for c in self.cci_scores]

    def cue_ranking(self, i: int = 0, *, side: str = "input") -> list:
        """Context token indices of ``cci_scores[i]`` sorted by decreasing score."""
        scores = getattr(self.cci_scores[i], f"{side}_context_scores")
        if scores is None:
            raise ValueError(f"no {side}_context_scores in this result.")
        return [int(j) for j in np.argsort(-np.asarray(scores, np.float64), kind="stable")]

    # -- export -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict with Inseq's ``AttributeContextOutput.to_dict`` field names."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("cci_scores", "info")}
        out["cci_scores"] = [c.to_dict() for c in self.cci_scores]
        if self.info:
            out["info"] = dict(self.info)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "AttributeContextOutput":
        """Inverse of :meth:`to_dict` (also reads Inseq's JSON; unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"cci_scores"}
        cci_names = {f.name for f in dataclasses.fields(CCIOutput)}
        out = cls(**{k: v for k, v in d.items() if k in names})
        out.cci_scores = [CCIOutput(**{k: v for k, v in c.items() if k in cci_names})
                          for c in d.get("cci_scores", [])]
        return out

    def to_json(self, *, indent: int = 2) -> str:
        """The JSON text of :meth:`to_dict`, tagged with ``"format"``."""
        return json.dumps(dict(self.to_dict(), format=FORMAT), indent=indent, default=_json)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write :meth:`to_json` to ``path`` (read back with :func:`load_context` or
        :func:`jaxattr.context.load`)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    # -- rendering (through jaxattr.views, which render/ fills) ----------------------------
    def to_text(self, **kwargs) -> str:
        """Terminal view (see :func:`jaxattr.render.context.context_to_text`)."""
        return views.dispatch("context_to_text", self, **kwargs)

    def to_html(self, **kwargs) -> str:
        """HTML view (see :func:`jaxattr.render.context.context_to_html`)."""
        return views.dispatch("context_to_html", self, **kwargs)

    def _repr_html_(self) -> str:
        return self.to_html(full_page=False)

    def show(self, *, file=None, color: Optional[bool] = None) -> None:
        """Print the terminal view (colour when ``file`` is a terminal)."""
        views.dispatch("context_show", self, file=file, color=color)


def _json(value: Any):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def load_context(path: Union[str, os.PathLike]) -> AttributeContextOutput:
    """Read a result written by :meth:`AttributeContextOutput.save` (or Inseq's
    ``attribute-context --save_path`` JSON)."""
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    if not isinstance(d, dict) or "cti_scores" not in d or "cci_scores" not in d:
        raise ValueError(f"{path} is not an attribute_context result (no cti_scores / "
                         "cci_scores); use jaxattr.load for attribution results.")
    return AttributeContextOutput.from_dict(d)
