"""PECoRe context attribution (``jaxattr.attribute_context``), Inseq 0.7.1's ``attribute-context``.

- :func:`attribute_context`: CTI (which output tokens depend on the context) and CCI (which
  context tokens they used), batched over examples and selected tokens.
- :class:`AttributeContextOutput` / :class:`CCIOutput`: results with Inseq's field names.
- :func:`scores_threshold` / :func:`select_tokens`: the selection rules.
"""
from .args import ContextArgs
from .output import AttributeContextOutput, CCIOutput, load_context
from .pecore import attribute_context
from .selection import scores_threshold, select_tokens

load = load_context

__all__ = ["attribute_context", "AttributeContextOutput", "CCIOutput", "ContextArgs",
           "load_context", "load", "scores_threshold", "select_tokens"]
