"""What result objects can be turned into: a registry the higher layers fill.

Result classes (:mod:`jaxattr.results`) are containers; how they are aggregated
(:mod:`jaxattr.aggregate`), exported (:mod:`jaxattr.io`) and drawn (:mod:`jaxattr.render`)
lives in those modules, which sit *above* the results and import them. So that
``out.aggregate()`` / ``out.save(path)`` / ``out.show()`` still work without the results
importing any of them back (not even inside a function), each of those modules registers its
implementations here when it is imported::

    # jaxattr/render/__init__.py
    views.provide("to_html", to_html)

and a result method only dispatches by name::

    def to_html(self, **kw):
        return views.dispatch("to_html", self, **kw)

The package (``import jaxattr``) imports ``aggregate``, ``io`` and ``render``, so every view
is registered before any result object exists. This module imports nothing of jaxattr.
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["provide", "dispatch", "provided", "ViewError"]

_VIEWS: dict = {}


class ViewError(LookupError):
    """No layer has registered the asked-for view."""


def provide(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``fn(result, *args, **kwargs)`` as the implementation of view ``name``
    (the last registration wins, so a user may override one). Returns ``fn``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a view name must be a non-empty string; got {name!r}.")
    if not callable(fn):
        raise TypeError(f"view {name!r} needs a callable implementation; got {fn!r}.")
    _VIEWS[name] = fn
    return fn


def provided() -> tuple:
    """The registered view names, sorted."""
    return tuple(sorted(_VIEWS))


def dispatch(name: str, obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the implementation of view ``name`` on ``obj``."""
    try:
        fn = _VIEWS[name]
    except KeyError:
        raise ViewError(
            f"nothing provides {name!r} for a {type(obj).__name__}: the module that implements "
            f"it (jaxattr.aggregate, jaxattr.io or jaxattr.render) is not imported; "
            f"`import jaxattr` wires them all. Registered views: {list(provided())}.") from None
    return fn(obj, *args, **kwargs)
