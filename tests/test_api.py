"""The public API: `__all__` of the package and of `safety_neurons.viz` lists exactly what their `__init__` imports
for the user, and every listed name exists."""

import ast
import importlib
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
