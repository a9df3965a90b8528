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

``aggregate`` and ``io`` register themselves when imported (``import jaxattr`` imports both).
The renderers are wired by the package itself, lazily: ``jaxattr/__init__.py`` names them
(``provide_lazy("to_html", "jaxattr.render:to_html")``) and the first dispatch imports the
render module, so ``import jaxattr`` and all computation never load ``render``. This module
imports nothing of jaxattr; it only resolves the names the package gives it.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["provide", "provide_lazy", "resolve", "dispatch", "provided", "ViewError"]

_VIEWS: dict = {}
_LAZY: dict = {}


class ViewError(LookupError):
    """No layer has registered the asked-for view."""


def provide(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``fn(result, *args, **kwargs)`` as the implementation of view ``name``
    (the last registration wins, so a user may override one). Returns ``fn``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a view name must be a non-empty string; got {name!r}.")
    if not callable(fn):
        raise TypeError(f"view {name!r} needs a callable implementation; got {fn!r}.")
    _LAZY.pop(name, None)
    _VIEWS[name] = fn
    return fn


def provide_lazy(name: str, target: str) -> None:
    """Register view ``name`` as ``"module:attribute"``, imported on its first dispatch (how
    the package wires the renderers without importing them)."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"a lazy view target is 'module:attribute'; got {target!r}.")
    _VIEWS.pop(name, None)
    _LAZY[name] = (module, attr)


def provided() -> tuple:
    """The registered view names (eager and lazy), sorted."""
    return tuple(sorted(set(_VIEWS) | set(_LAZY)))


def resolve(name: str, what: str = "a result") -> Callable[..., Any]:
    """The implementation of view ``name`` (importing a lazily wired one)."""
    if name not in _VIEWS and name in _LAZY:
        module, attr = _LAZY.pop(name)
        _VIEWS[name] = getattr(importlib.import_module(module), attr)
    try:
        return _VIEWS[name]
    except KeyError:
        raise ViewError(
            f"nothing provides {name!r} for {what}: the module that implements it "
            f"(jaxattr.aggregate, jaxattr.io or jaxattr.render) is not wired; `import "
            f"jaxattr` wires them all. Registered views: {list(provided())}.") from None


def dispatch(name: str, obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the implementation of view ``name`` on ``obj``."""
    return resolve(name, f"a {type(obj).__name__}")(obj, *args, **kwargs)
