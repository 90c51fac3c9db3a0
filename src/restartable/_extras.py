"""Optional dependencies: which extra brings each, and one clear error when one is missing.

``import restartable`` needs numpy only. A feature that needs more checks
for it before doing any work, with :func:`require` (without importing it)
or :func:`import_optional` (importing it), and a missing module is reported
as one line that names the feature, the module and the command that
installs it::

    restartable.workflows needs torch, which is not installed: pip install 'restartable[workflows]'

The error is a :class:`MissingExtraError`, a :class:`ModuleNotFoundError`
whose ``name`` is the missing module, so ``except ImportError`` clauses and
code that reads ``exc.name`` keep working.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "import_optional", "missing", "require"]

#: The extras of pyproject.toml's ``[project.optional-dependencies]`` (all
#: but ``dev``) and the modules each one installs; ``tests/test_extras.py``
#: checks this table against pyproject.toml.
EXTRAS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "progress": ("tqdm",),
    "remote": ("fsspec", "s3fs"),
    "earth2studio": ("earth2studio",),
    "workflows": ("torch", "xarray", "zarr", "tqdm"),
    "plot": ("matplotlib",),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional module that a feature needs is not installed.

    ``name`` is the (first) missing module, ``modules`` all of them,
    ``extra`` the extra that installs them (``None`` where no extra of
    restartable does, and the message then names the package itself),
    ``feature`` what needs them.

    >>> try:
    ...     require("not_a_real_module", extra=None, feature="this example")
    ... except ImportError as exc:
    ...     print(exc)
    this example needs not_a_real_module, which is not installed: pip install not_a_real_module
    """

    def __init__(self, modules: Sequence[str], extra: str | None, feature: str) -> None:
        self.modules = tuple(modules)
        self.extra = extra
        self.feature = feature
        *rest, last = self.modules
        names = f"{', '.join(rest)} and {last}" if rest else last
        verb = "is" if len(self.modules) == 1 else "are"
        install = f"'restartable[{extra}]'" if extra is not None else " ".join(self.modules)
        super().__init__(
            f"{feature} needs {names}, which {verb} not installed: pip install {install}", name=self.modules[0]
        )

    def __reduce__(self) -> tuple[type[MissingExtraError], tuple[tuple[str, ...], str | None, str]]:
        # The exception crosses process boundaries (multiprocessing, pytest-xdist) with its own arguments.
        return (type(self), (self.modules, self.extra, self.feature))


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (only its parent packages)."""
    if module in sys.modules:
        # A module set to None in sys.modules is blocked: importing it raises ModuleNotFoundError.
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # A parent package that is missing, or an import hook that refuses the name.
        return False


def missing(*modules: str) -> list[str]:
    """The modules of ``modules`` that are not installed, in the order given.

    Nothing is imported but the parent packages of dotted names.

    >>> missing("json", "not_a_real_module")
    ['not_a_real_module']
    """
    return [module for module in modules if not _installed(module)]


def _check_extra(extra: str | None) -> None:
    if extra is not None and extra not in EXTRAS:
        raise ValueError(f"restartable has no extra {extra!r}; its extras are {', '.join(sorted(EXTRAS))}")


def require(*modules: str, extra: str | None, feature: str) -> None:
    """Raise :class:`MissingExtraError` naming every module of ``modules`` that is not installed.

    Checks without importing them, so that a feature can check all it needs
    before it starts any work (or any child process). ``extra`` is the extra
    of restartable that installs them (a key of :data:`EXTRAS`), or ``None``
    for a package that no extra brings.

    >>> require("json", extra=None, feature="this example")  # installed: nothing happens
    >>> try:
    ...     require("json", "not_a_real_module", extra="workflows", feature="this example")
    ... except ModuleNotFoundError as exc:
    ...     print(exc.name)
    ...     print(exc)
    not_a_real_module
    this example needs not_a_real_module, which is not installed: pip install 'restartable[workflows]'
    """
    _check_extra(extra)
    absent = missing(*modules)
    if absent:
        raise MissingExtraError(absent, extra, feature)


def import_optional(module: str, *, extra: str | None, feature: str) -> ModuleType:
    """Import ``module``; if it is not installed, raise :class:`MissingExtraError` (see :func:`require`).

    Only the module itself (or one of its parent packages) missing is
    reported so: a module that is installed but fails to import raises its
    own error.

    >>> import_optional("json", extra=None, feature="this example").dumps([1])
    '[1]'
    """
    _check_extra(extra)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # one of its own dependencies is missing: that error names it
        raise MissingExtraError([module], extra, feature) from exc
