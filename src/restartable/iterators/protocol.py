"""What can be checkpointed: the ``get_state``/``set_state`` protocol and adapters.

An object takes part in iterator checkpoints in one of two ways, with no
wrapper written by the user:

* it implements :class:`Checkpointable` (``get_state()`` returns a value,
  ``set_state(state)`` puts it back), as datarax iterators and
  :class:`~restartable.iterators.ShuffledArrayIterator` do;
* it follows torch's convention, ``state_dict()`` / ``load_state_dict(sd)``
  (modules, optimizers, learning-rate schedulers, samplers, many
  third-party loaders): :class:`StateDictAdapter` is applied automatically.

The state must be something :mod:`restartable.codec` stores without pickle:
``None``, bools, ints of any size, floats, str, bytes, lists, tuples, dicts
with str or int keys, numpy arrays and scalars, torch tensors, dataclasses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = [
    "Checkpointable",
    "CheckpointableIterator",
    "StateDictAdapter",
    "state_getter",
    "state_setter",
]

T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class Checkpointable(Protocol):
    """An object whose state can be captured and put back."""

    def get_state(self) -> Any:
        """A pickle-free snapshot of the object's state (the object keeps running)."""
        ...

    def set_state(self, state: Any) -> None:
        """Put back a state returned by :meth:`get_state` (possibly in another process)."""
        ...


@runtime_checkable
class CheckpointableIterator(Protocol[T_co]):
    """An iterator whose position can be captured and restored (datarax's protocol).

    After ``it.set_state(s)`` the iterator yields exactly what the iterator
    that returned ``s`` from ``get_state()`` yielded next.
    """

    def __iter__(self) -> Iterator[T_co]: ...

    def __next__(self) -> T_co: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


def _plain(value: Any) -> Any:
    """``OrderedDict`` and other dict subclasses as plain dicts, recursively (the codec takes exact types)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if type(value) is list:
        return [_plain(item) for item in value]
    if type(value) is tuple:
        return tuple(_plain(item) for item in value)
    return value


class StateDictAdapter:
    """``get_state``/``set_state`` over an object's ``state_dict``/``load_state_dict``.

    ``get_state()`` returns ``{"state_dict": ...}`` with every ``OrderedDict``
    turned into a plain dict, plus, for ``torch.nn.Module`` state dicts, the
    per-module version metadata (``state_dict._metadata``) that
    ``load_state_dict`` uses to migrate old formats. ``set_state`` rebuilds
    the ``OrderedDict`` (with its ``_metadata``) and calls
    ``load_state_dict``. Tensors are stored pickle-free and come back on the
    CPU; ``load_state_dict`` copies them to where the object's own tensors are.

    ``IteratorCheckpoint`` applies this adapter by itself; wrap an object
    explicitly only to save it where a :class:`Checkpointable` is expected.
    """

    def __init__(self, obj: Any) -> None:
        if not (callable(getattr(obj, "state_dict", None)) or callable(getattr(obj, "load_state_dict", None))):
            raise ValueError(f"{type(obj).__qualname__} implements neither state_dict nor load_state_dict")
        self.obj = obj

    def get_state(self) -> dict[str, Any]:
        get = getattr(self.obj, "state_dict", None)
        if not callable(get):
            raise ValueError(f"{type(self.obj).__qualname__} does not implement state_dict")
        state_dict = get()
        state: dict[str, Any] = {"state_dict": _plain(state_dict)}
        metadata = getattr(state_dict, "_metadata", None)
        if isinstance(metadata, dict):
            state["module_metadata"] = _plain(metadata)
        return state

    def set_state(self, state: Any) -> None:
        load = getattr(self.obj, "load_state_dict", None)
        if not callable(load):
            raise ValueError(f"{type(self.obj).__qualname__} does not implement load_state_dict")
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError("the saved state was not written from a state_dict() object")
        state_dict = state["state_dict"]
        metadata = state.get("module_metadata")
        if metadata is not None and isinstance(state_dict, dict):
            state_dict = OrderedDict(state_dict)
            state_dict._metadata = OrderedDict(metadata)  # type: ignore[attr-defined]
        load(state_dict)

    def __repr__(self) -> str:
        return f"StateDictAdapter({type(self.obj).__qualname__})"


def _name(obj: Any) -> str:
    return type(obj).__qualname__


def state_getter(obj: Any) -> Callable[[], Any]:
    """The ``get_state`` of ``obj`` (adapted from ``state_dict``); ``ValueError`` naming ``get_state`` when it has none.

    ``get_state``/``set_state`` win over ``state_dict``/``load_state_dict``
    when an object has both.
    """
    get_state: object = getattr(obj, "get_state", None)
    if callable(get_state):
        return get_state
    if getattr(obj, "set_state", None) is None and callable(getattr(obj, "state_dict", None)):
        return StateDictAdapter(obj).get_state
    raise ValueError(
        f"iterator of type {_name(obj)} does not implement get_state (nor torch's state_dict/load_state_dict), "
        "so its state cannot be saved"
    )


def state_setter(obj: Any) -> Callable[[Any], None]:
    """The ``set_state`` of ``obj`` (adapted from ``load_state_dict``).

    ``ValueError`` naming ``set_state`` when it has none.
    """
    set_state: object = getattr(obj, "set_state", None)
    if callable(set_state):
        return set_state
    if getattr(obj, "get_state", None) is None and callable(getattr(obj, "load_state_dict", None)):
        return StateDictAdapter(obj).set_state
    raise ValueError(
        f"iterator of type {_name(obj)} does not implement set_state (nor torch's state_dict/load_state_dict), "
        "so a saved state cannot be restored into it"
    )
