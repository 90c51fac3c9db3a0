"""Run earth2studio's own workflows, models and perturbations on restartable's engine.

One line in an existing earth2studio pipeline::

    import restartable.earth2studio; restartable.earth2studio.install()

or no line at all::

    python -m restartable.earth2studio my_forecast.py --its-args

Afterwards ``earth2studio.utils.checkpoint`` resolves to
:mod:`restartable.earth2studio.checkpoint` (restartable's classes under
earth2studio's names), so earth2studio's components and every user model
that binds state through ``bind_checkpoint_state`` are saved by
restartable's engine: crash-safe commits, verification, asynchronous
commits, object stores and multi-rank consistency. ``earth2studio.run``'s
``deterministic``, ``diagnostic`` and ``ensemble`` are routed to
:mod:`restartable.earth2studio.run`: restartable's workflows with
earth2studio's behaviour where the two differ (pass ``workflows=False`` to
keep earth2studio's own).

How: the bridged module takes the place of earth2studio's in
``sys.modules``; names that already-imported earth2studio modules (and
``__main__``) bound from the original module are rebound, and so are
``NullCheckpoint()`` defaults of their functions; modules imported later
get the bridged names by ordinary import, with a small import hook that
routes the workflows of ``earth2studio.run`` when it loads.
:func:`uninstall` undoes every change. ``import restartable`` never imports
earth2studio; :func:`install` does not either, beyond finding it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys
import threading
from dataclasses import dataclass, field
from types import FunctionType, ModuleType
from typing import Any

from .._extras import require

__all__ = ["install", "installed", "uninstall"]

MODULE = "earth2studio.utils.checkpoint"
PACKAGE = "earth2studio.utils"
RUN = "earth2studio.run"
WORKFLOWS = ("deterministic", "diagnostic", "ensemble")

_lock = threading.RLock()


@dataclass
class _Installation:
    original: ModuleType | None
    workflows: bool
    # (owner, attribute, previous value), in the order they were changed.
    changes: list[tuple[Any, str, Any]] = field(default_factory=list)
    finder: _Finder | None = None

    def set(self, owner: Any, name: str, value: Any) -> None:
        self.changes.append((owner, name, getattr(owner, name, _MISSING)))
        setattr(owner, name, value)


_MISSING = object()
_installation: _Installation | None = None


def installed() -> bool:
    """Whether the bridge is installed."""
    return _installation is not None


def install(workflows: bool = True) -> None:
    """Make ``earth2studio.utils.checkpoint`` (and, unless ``workflows=False``,
    ``earth2studio.run``'s workflows) restartable's.

    Idempotent; call it before or after importing earth2studio.

    Raises
    ------
    ImportError
        earth2studio is not installed (``pip install 'restartable[earth2studio]'``).
    """
    global _installation
    with _lock:
        if _installation is not None:
            if workflows and not _installation.workflows:
                _installation.workflows = True
                run = sys.modules.get(RUN)
                if run is not None:
                    _route_workflows(run, _installation)
            return
        require("earth2studio", extra="earth2studio", feature="restartable.earth2studio.install()")
        from . import checkpoint as bridged

        original = sys.modules.get(MODULE)
        state = _Installation(original=original, workflows=workflows)
        if original is not None:
            sys.modules[MODULE] = bridged
            package = sys.modules.get(PACKAGE)
            if package is not None:
                state.set(package, "checkpoint", bridged)
            _rebind(_pairs(original, bridged), state)
        # Otherwise the import hook hands out the bridged module when
        # earth2studio imports it, after its parent packages, as usual.
        run = sys.modules.get(RUN)
        if workflows and run is not None:
            _route_workflows(run, state)
        state.finder = _Finder(state, bridged)
        sys.meta_path.insert(0, state.finder)
        _installation = state


def uninstall() -> None:
    """Undo :func:`install`: earth2studio's own module and workflows are back."""
    global _installation
    with _lock:
        state = _installation
        if state is None:
            return
        _installation = None
        if state.finder in sys.meta_path:
            sys.meta_path.remove(state.finder)
        for owner, name, previous in reversed(state.changes):
            if previous is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, previous)
        from . import checkpoint as bridged

        original = state.original
        if original is None:
            if sys.modules.get(MODULE) is not bridged:
                return  # never imported under the bridge: nothing holds its names
            # Load earth2studio's module now, so that the modules imported
            # under the bridge can be given its names back.
            sys.modules.pop(MODULE, None)
            original = importlib.import_module(MODULE)
        sys.modules[MODULE] = original
        package = sys.modules.get(PACKAGE)
        if package is not None:
            package.checkpoint = original  # type: ignore[attr-defined]
        _rebind(_pairs(bridged, original), None)


def _pairs(old: ModuleType, new: ModuleType) -> dict[int, tuple[Any, Any]]:
    """id(object of ``old``) -> (that object, the object of the same name in ``new``)."""
    pairs = {}
    for name, value in vars(old).items():
        if name.startswith("__") or not hasattr(new, name) or isinstance(value, ModuleType):
            continue
        replacement = getattr(new, name)
        if replacement is not value:
            pairs[id(value)] = (value, replacement)
    return pairs


def _modules_to_rebind() -> list[ModuleType]:
    return [
        module
        for name, module in list(sys.modules.items())
        if isinstance(module, ModuleType)
        and (name == "earth2studio" or name.startswith("earth2studio.") or name == "__main__")
        and name != MODULE
    ]


def _rebind(pairs: dict[int, tuple[Any, Any]], state: _Installation | None) -> None:
    """Replace, in earth2studio's modules, names bound to old objects, and NullCheckpoint defaults."""
    null_types = tuple(old for old, _ in pairs.values() if isinstance(old, type) and old.__name__ == "NullCheckpoint")
    null_new = next(
        (new for old, new in pairs.values() if isinstance(old, type) and old.__name__ == "NullCheckpoint"), None
    )

    def assign(owner: Any, name: str, value: Any) -> None:
        if state is not None:
            state.set(owner, name, value)
        else:
            setattr(owner, name, value)

    def fix_defaults(function: FunctionType) -> None:
        if not null_types or null_new is None:
            return
        defaults = function.__defaults__
        if defaults and any(isinstance(d, null_types) for d in defaults):
            assign(function, "__defaults__", tuple(null_new() if isinstance(d, null_types) else d for d in defaults))
        kwdefaults = function.__kwdefaults__
        if kwdefaults and any(isinstance(d, null_types) for d in kwdefaults.values()):
            assign(
                function,
                "__kwdefaults__",
                {k: null_new() if isinstance(d, null_types) else d for k, d in kwdefaults.items()},
            )

    for module in _modules_to_rebind():
        namespace = vars(module)
        for name, value in list(namespace.items()):
            pair = pairs.get(id(value))
            if pair is not None and pair[0] is value:
                assign(module, name, pair[1])
            elif isinstance(value, FunctionType) and value.__module__ == module.__name__:
                fix_defaults(value)
            elif isinstance(value, type) and value.__module__ == module.__name__:
                for member in vars(value).values():
                    if isinstance(member, FunctionType):
                        fix_defaults(member)


def _route_workflows(run: ModuleType, state: _Installation) -> None:
    from . import run as workflows

    for name in WORKFLOWS:
        if getattr(run, name, None) is not getattr(workflows, name):
            state.set(run, name, getattr(workflows, name))


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then finishes the bridge for the module just loaded."""

    def __init__(self, loader: importlib.abc.Loader, finish: Any) -> None:
        self._loader = loader
        self._finish = finish

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)  # get_resource_reader, is_package, ...

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._finish(module)


class _BridgedLoader(importlib.abc.Loader):
    """Loads ``earth2studio.utils.checkpoint`` as the bridged module object itself."""

    def __init__(self, bridged: ModuleType) -> None:
        self._bridged = bridged
        self._own_spec = bridged.__spec__

    def create_module(self, spec: Any) -> ModuleType:
        return self._bridged

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped earth2studio's spec on it; it stays our module.
        module.__spec__ = self._own_spec


class _Finder(importlib.abc.MetaPathFinder):
    """Finishes the bridge for earth2studio modules imported after :func:`install`."""

    def __init__(self, state: _Installation, bridged: ModuleType) -> None:
        self._state = state
        self._bridged = bridged

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname == MODULE:
            return importlib.util.spec_from_loader(MODULE, _BridgedLoader(self._bridged))
        if fullname not in (PACKAGE, RUN):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, self._finish)
                return spec
        return None

    def _finish(self, module: ModuleType) -> None:
        if module.__name__ == PACKAGE:
            self._state.set(module, "checkpoint", self._bridged)
        elif module.__name__ == RUN and self._state.workflows:
            _route_workflows(module, self._state)
