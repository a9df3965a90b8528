"""JAX's persistent compilation cache: on by default in the CLI, one explicit call in Python.

Compiling the attribution program dominates a cold start (seconds on CPU); the persistent cache
stores compiled programs on disk so a new process with the same model and length bucket skips
compilation. The ``jaxattr`` command line turns it on; a Python program calls
:func:`enable_compilation_cache` itself (a library does not change the global ``jax.config``
or write under ``~/.cache`` behind its user's back). Location: ``$JAXATTR_CACHE_DIR`` (default
``~/.cache/jaxattr/xla``); set it to an empty string or ``0`` to disable. A cache directory the
user configured for JAX is kept.
"""
from __future__ import annotations

import os
from typing import Optional

import jax

__all__ = ["enable_compilation_cache", "cache_dir"]

_DONE = False


def cache_dir() -> Optional[str]:
    """The directory jaxattr uses (``None`` when disabled)."""
    value = os.environ.get("JAXATTR_CACHE_DIR")
    if value is None:
        return os.path.join(os.path.expanduser("~"), ".cache", "jaxattr", "xla")
    return None if value.strip() in ("", "0") else value


def enable_compilation_cache(path: Optional[str] = None, *, min_compile_time_secs: float = 0.5,
                             force: bool = False) -> Optional[str]:
    """Turn on JAX's persistent compilation cache (once per process): sets
    ``jax_compilation_cache_dir`` in the global ``jax.config``. The CLI calls it; in Python
    call it once, before the first ``attribute``, to reuse compiled programs across processes.

    Args:
      path: cache directory; default :func:`cache_dir`.
      min_compile_time_secs: only programs that took at least this long to compile are stored.
      force: set it even if JAX already has a cache directory configured.

    Returns the directory in use, or ``None`` when disabled.
    """
    global _DONE
    if _DONE and not force:
        return jax.config.jax_compilation_cache_dir
    _DONE = True
    current = jax.config.jax_compilation_cache_dir
    if current and not force:
        return current
    path = path or cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
    return path
