"""The public API: `__all__` of the package and of `safety_neurons.viz` lists exactly what their `__init__` imports
for the user, and every listed name exists."""

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import safety_neurons as sn

PACKAGES = ["safety_neurons", "safety_neurons.viz"]


def imported_names(module) -> set[str]:
    """The public names an `__init__` binds by importing (`from .x import a, b`, `from . import m`)."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_every_import_and_only_existing_names(name):
    module = importlib.import_module(name)
    listed = module.__all__
    assert len(listed) == len(set(listed)), "a name is listed twice"
    assert [n for n in listed if not hasattr(module, n)] == []
    assert imported_names(module) - set(listed) == set(), "imported for the user but not in __all__"
    assert set(listed) - imported_names(module) == set(), "in __all__ but not imported in __init__"


def test_star_import_gives_the_listed_names_and_no_plotting():
    import subprocess
    import sys

    code = (
        "import sys; from safety_neurons import *; import safety_neurons as sn; "
        "assert all(n in globals() for n in sn.__all__); assert 'plotly' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_class_and_function_of_the_package_is_listed():
    """What `dir(sn)` offers that is not a submodule is in `__all__` (nothing public left unlisted)."""
    import types

    offered = {n for n in dir(sn) if not n.startswith("_") and not isinstance(getattr(sn, n), types.ModuleType)}
    assert offered - set(sn.__all__) == set()


# --- docstrings name only what exists ------------------------------------------------------------------------
EXTERNAL = {  # callables of other libraries (and Python's) that docstrings may name
    "print",
    "from_pretrained",
    "can_generate",
    "sqrt",
    "tr",
    "LanguageModel",
    "set_default_api_key",
    "apply_chat_template",
    "run_with_cache",
    "matrix_rank",
    "generate",
    "hooks",
}
CALLED = re.compile(r"`([A-Za-z_][\w.]*)\(|`([A-Za-z_][\w.]*)` (?:does|returns|takes|computes|measures|gives)\b")


def _documented():
    """(where, docstring, names of its parameters) of every module, class, function and method of the package."""
    mods = [importlib.import_module(f"safety_neurons.{m.name}") for m in pkgutil.walk_packages(sn.__path__)]
    for m in [sn, *mods]:
        yield m.__name__, inspect.getdoc(m) or "", set()
        for n, o in vars(m).items():
            if (inspect.isclass(o) or inspect.isfunction(o)) and o.__module__ == m.__name__:
                members = [(n, o)] + ([(f"{n}.{k}", getattr(o, k)) for k in vars(o)] if inspect.isclass(o) else [])
                for where, f in members:
                    if callable(f) and (doc := inspect.getdoc(f)) and (inspect.isfunction(f) or inspect.ismethod(f)):
                        yield f"{m.__name__}.{where}", doc, set(inspect.signature(f).parameters)
                    elif inspect.isclass(f):
                        try:  # a class's docstring may name its constructor's parameters
                            params = set(inspect.signature(f).parameters)
                        except (TypeError, ValueError):
                            params = set()
                        yield f"{m.__name__}.{where}", inspect.getdoc(f) or "", params


def test_docstrings_call_only_functions_that_exist():
    """A docstring that sends the reader to `compare(...)` or says "`compare` does both sides" names something
    the package defines (a function, class, method or attribute), a parameter of its own function or one of a
    few other libraries' callables."""
    defined = set(EXTERNAL)
    for m in [sn, *(importlib.import_module(f"safety_neurons.{x.name}") for x in pkgutil.walk_packages(sn.__path__))]:
        for n, o in vars(m).items():
            defined.add(n)
            if inspect.isclass(o):
                defined |= set(vars(o)) | {f.name for f in getattr(o, "__dataclass_fields__", {}).values()}
    unknown = [
        (where, name)
        for where, doc, params in _documented()
        for match in CALLED.finditer(doc)
        if (name := (match[1] or match[2]).split(".")[-1]) not in defined | params
    ]
    assert unknown == []


def test_the_docstring_check_finds_a_missing_function():
    assert CALLED.search("`compare` does both sides in one call")[2] == "compare"
    assert CALLED.search("see `sn.evaluate(model, prompts)`")[1] == "sn.evaluate"
