"""Every ``__all__`` in restartable is sorted, unique and names real attributes.

In the spirit of httpx's ``tests/test_exported_members.py``. The modules are
found with :func:`pkgutil.walk_packages`; a module whose import needs an
optional dependency that is not installed is skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import restartable


def _source(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).read_text()


def _defines_all(name: str) -> bool:
    # Read from the source, so that collecting the tests imports nothing
    # beyond what walk_packages needs.
    source = _source(name)
    return source is not None and re.search(r"^__all__\b", source, re.MULTILINE) is not None


def _module_names() -> list[str]:
    found = ["restartable"]
    # onerror: a subpackage that cannot be imported is still reported by
    # _import below, in its own test, rather than breaking collection.
    for info in pkgutil.walk_packages(restartable.__path__, "restartable.", onerror=lambda name: None):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # importing it would run the program
        found.append(info.name)
    return sorted(name for name in found if _defines_all(name))


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing = exc.name or ""
        if missing == "restartable" or missing.startswith("restartable."):
            raise  # a broken import inside restartable is a failure, not a missing extra
        pytest.skip(f"{name} needs the optional dependency {missing or exc}")


def _exports(name: str) -> list[str]:
    module = _import(name)
    assert hasattr(module, "__all__"), f"{name} assigns __all__ in its source but has none"
    return list(module.__all__)


@pytest.mark.parametrize("name", _module_names())
def test_all_is_sorted(name: str) -> None:
    exported = _exports(name)
    assert exported == sorted(exported)


@pytest.mark.parametrize("name", _module_names())
def test_all_has_no_duplicates(name: str) -> None:
    exported = _exports(name)
    assert len(exported) == len(set(exported)), sorted({member for member in exported if exported.count(member) > 1})


@pytest.mark.parametrize("name", _module_names())
def test_all_names_existing_attributes(name: str) -> None:
    module = _import(name)
    missing = [member for member in _exports(name) if not hasattr(module, member)]
    assert not missing


def test_importing_restartable_leaves_heavy_dependencies_alone() -> None:
    heavy = ("torch", "fsspec", "xarray")
    code = f"import sys, restartable; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == []
