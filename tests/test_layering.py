"""The layering of ARCHITECTURE.md, checked on the import graph (every import statement,
function-level ones included, read from the source with ``ast``).

- results (``jaxattr.results``) and the view registry never import the layers above them
  (``aggregate``, ``io``, ``render``) nor any model code: they reach aggregation, export and
  rendering through :mod:`jaxattr.views`, which those layers fill;
- methods never import models, adapters, the model object, ``render``, ``io``,
  ``transformers`` or ``flax`` (``flax.linen`` included);
- the other result classes (lens trajectories, probe results, context attributions) reach
  their renderers through the same registry;
- planning and the model object never import ``render``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jaxattr
from jaxattr import views

PKG = Path(jaxattr.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set:
    """Absolute names of every module ``path`` imports, at any depth of the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.add(name)
            # ``from . import render`` imports the submodule ``render``
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def _hits(path: Path, forbidden: tuple) -> list:
    return sorted(name for name in imports_of(path)
                  if any(name == f or name.startswith(f + ".") for f in forbidden))


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    # the reader itself, on a file with every kind of import (else the tests below prove nothing)
    assert "jaxattr.views" in imports_of(PKG / "results.py")           # relative, one dot
    assert "jaxattr.views" in imports_of(PKG / "lens" / "trajectory.py")  # two dots
    src = PKG / "cli.py"
    assert any(n.startswith("jaxattr.render") for n in imports_of(src))  # function-level


RESULTS_FORBIDDEN = ("jaxattr.render", "jaxattr.io", "jaxattr.aggregate", "jaxattr.model",
                     "jaxattr.models", "jaxattr.adapters", "transformers", "flax.linen")


@pytest.mark.parametrize("name", ["results.py", "views.py"])
def test_results_never_import_the_layers_above(name):
    assert _hits(PKG / name, RESULTS_FORBIDDEN) == []


@pytest.mark.parametrize("name", ["lens/trajectory.py", "probing/result.py",
                                  "context/output.py", "interventions/results.py"])
def test_other_result_classes_never_import_render(name):
    assert _hits(PKG / name, ("jaxattr.render",)) == []


METHODS_FORBIDDEN = ("jaxattr.render", "jaxattr.io", "jaxattr.model", "jaxattr.models",
                     "jaxattr.adapters", "jaxattr.pipeline", "jaxattr.results",
                     "transformers", "flax")


@pytest.mark.parametrize("path", sorted((PKG / "methods").glob("*.py")), ids=lambda p: p.name)
def test_methods_never_import_models_or_flax(path):
    assert _hits(path, METHODS_FORBIDDEN) == []


@pytest.mark.parametrize("name", ["planning.py", "spec.py", "batching.py", "pipeline.py",
                                  "generation.py", "text_generation.py", "host_views.py",
                                  "model.py", "model_base.py", "model_loading.py"])
def test_computation_never_imports_render(name):
    path = PKG / name
    assert _hits(path, ("jaxattr.render",)) == []


def test_results_reach_render_io_and_aggregate_through_the_registry():
    # the package registered every view a result object offers
    for name in ("to_html", "to_text", "show", "to_figure", "save", "to_dataframe",
                 "scores_dict", "reduce_hidden", "normalize", "aggregate_sequence",
                 "lens_text", "lens_show", "probe_table", "context_to_text", "context_show"):
        assert name in views.provided()


def test_every_wired_view_resolves_to_a_function():
    for name in views.provided():
        assert callable(views.resolve(name)), name


def test_import_jaxattr_does_not_import_render():
    # the renderers are wired lazily: importing the package (and computing) never loads them
    import subprocess
    import sys
    code = ("import sys, jaxattr\n"
            "assert 'to_html' in jaxattr.views.provided()\n"
            "assert not any(m.startswith('jaxattr.render') for m in sys.modules), 'render'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(PKG.parent))
    assert res.returncode == 0, res.stderr[-2000:]


def test_an_unregistered_view_is_a_clear_error():
    with pytest.raises(views.ViewError, match="nothing provides 'no_such_view'.*import jaxattr"):
        views.dispatch("no_such_view", object())


def _calls_jax_jit(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr == "jit"
                and isinstance(node.value, ast.Name) and node.value.id == "jax"):
            return True
    return False


def test_jaxattr_compiles_only_through_safe_jit():
    """Every program jaxattr compiles carries xla_safety's compiler options: ``jax.jit``
    appears in jaxattr.xla_safety only (elsewhere: ``safe_jit``)."""
    offenders = [str(p.relative_to(PKG)) for p in sorted(PKG.rglob("*.py"))
                 if p.name != "xla_safety.py" and _calls_jax_jit(ast.parse(p.read_text()))]
    assert offenders == [], f"use jaxattr.xla_safety.safe_jit instead of jax.jit in {offenders}"


def test_the_jit_guard_sees_jax_jit():
    assert _calls_jax_jit(ast.parse("import jax\nf = jax.jit(lambda x: x)"))
    assert _calls_jax_jit(ast.parse("import functools, jax\n"
                                    "@functools.partial(jax.jit, static_argnames=('a',))\n"
                                    "def f(x, a): return x"))
    assert not _calls_jax_jit(ast.parse("from .xla_safety import safe_jit\nf = safe_jit(g)"))
