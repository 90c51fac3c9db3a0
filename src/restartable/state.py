"""Component state: :func:`bind_checkpoint_state` and its proxy.

A component opts into checkpointing by binding a dataclass::

    >>> from dataclasses import dataclass
    >>> from restartable import bind_checkpoint_state
    >>> @dataclass
    ... class Counter:
    ...     steps: int = 0
    >>> state = bind_checkpoint_state(Counter())
    >>> state.steps += 1          # fields are read and written directly
    >>> state.steps, state.checkpoint_enabled
    (1, False)

Inside an open session the state is restored from the selected row at once.
Bound before a session opens, it is restored when the session opens, with a
:class:`~restartable.errors.CheckpointLateBindWarning` because constructor
side effects may already have used the default values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._device import resolve_device
from .codec import type_name

if TYPE_CHECKING:
    from .catalog import Checkpoint, CheckpointSession

__all__ = ["CheckpointState", "bind_checkpoint_state", "state_id"]

T = TypeVar("T")

ACTIVE_SESSION: ContextVar[CheckpointSession | None] = ContextVar("restartable_active_session", default=None)
CURRENT_CHECKPOINT: ContextVar[Checkpoint | None] = ContextVar("restartable_current_checkpoint", default=None)


@dataclass(frozen=True)
class PendingState:
    """State bound while no session of ``checkpoint`` was open."""

    checkpoint: Checkpoint
    state_id: str
    state: CheckpointState[Any]
    # Re-buffered from a session that closed: restoring it into the next
    # session of the same checkpoint is expected, not late.
    reusable: bool = False


PENDING_STATES: ContextVar[tuple[PendingState, ...]] = ContextVar("restartable_pending_states", default=())


def state_id(state: Any) -> str:
    """Identity of a bound state: its dataclass's fully qualified name."""
    state = unwrap(state)
    if not dataclasses.is_dataclass(state) or isinstance(state, type):
        raise TypeError(f"checkpoint state must be a dataclass instance, got {type(state).__qualname__}")
    return type_name(type(state))


def unwrap(state: Any) -> Any:
    return state.checkpoint_dataclass if isinstance(state, CheckpointState) else state


class CheckpointState(Generic[T]):
    """Proxy returned by :func:`bind_checkpoint_state`.

    Attribute access goes to the wrapped dataclass; checkpoint facts are
    read-only ``checkpoint_*`` properties and ``device``.
    """

    __slots__ = ("_checkpoint", "_session", "_state", "_state_loaded")
    _checkpoint: Checkpoint | None
    _session: CheckpointSession | None
    _state: T
    _state_loaded: bool

    def __init__(
        self,
        state: T,
        checkpoint: Checkpoint | None = None,
        session: CheckpointSession | None = None,
        state_loaded: bool = False,
    ) -> None:
        if not dataclasses.is_dataclass(state) or isinstance(state, type):
            raise TypeError(f"bind_checkpoint_state needs a dataclass instance, got {type(state).__qualname__}")
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "_checkpoint", checkpoint)
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_state_loaded", state_loaded)

    # For CheckpointSession and bind_checkpoint_state. Underscored: attribute
    # names without one are the wrapped dataclass's fields.

    def _bind(
        self, checkpoint: Checkpoint | None, session: CheckpointSession | None = None, state_loaded: bool = False
    ) -> None:
        """Bind to ``checkpoint`` and ``session`` (``None``: unbound), restored from its row or not."""
        object.__setattr__(self, "_checkpoint", checkpoint)
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_state_loaded", state_loaded)

    def _set_loaded(self, loaded: bool) -> None:
        """Set :attr:`checkpoint_state_loaded`: a pin, a rewind or ``start_fresh`` changed what it says."""
        object.__setattr__(self, "_state_loaded", loaded)

    def _is_bound_to(self, session: CheckpointSession) -> bool:
        """Whether the state is bound to ``session``."""
        return self._session is session

    @property
    def checkpoint_dataclass(self) -> T:
        """The wrapped dataclass instance that is saved and restored."""
        return self._state

    @property
    def checkpoint_enabled(self) -> bool:
        """Whether this state belongs to a checkpoint (is saved on commit)."""
        return self._checkpoint is not None

    @property
    def checkpoint_level(self) -> int:
        """Level requested by the user: 0 nothing, 1 workflow items, 2 rollout state."""
        return 0 if self._checkpoint is None else self._checkpoint.level

    @property
    def checkpoint_state_loaded(self) -> bool:
        """Whether the dataclass was restored from the selected row and not committed since.

        A component that can continue an interrupted rollout asks this when
        it starts one: true only before the session's first commit.
        """
        return self._state_loaded

    @property
    def checkpoint_selected(self) -> bool:
        """Whether the state is bound to a session of an existing row."""
        return self._session is not None and self._session.exists

    @property
    def checkpoint_metadata(self) -> Mapping[str, Any]:
        """Metadata of the selected row (empty when there is none)."""
        return {} if self._session is None else self._session.metadata

    @property
    def checkpoint_labels(self) -> Mapping[str, Any]:
        """Labels of the session this state is bound to (empty when there is none)."""
        return {} if self._session is None else self._session.labels

    @property
    def checkpoint_lead_time(self) -> Any:
        """Lead time of the selected row, if any."""
        return None if self._session is None else self._session.lead_time

    @property
    def checkpoint_device(self) -> Any:
        """Device on which tensor state should be staged."""
        if self._checkpoint is None:
            return resolve_device("cpu")
        return self._checkpoint.device

    @property
    def device(self) -> Any:
        """Alias of :attr:`checkpoint_device`, e.g. ``x.to(self.state.device)``."""
        return self.checkpoint_device

    @property
    def checkpoint_flush_interval(self) -> int | None:
        return None if self._checkpoint is None else self._checkpoint.flush_interval

    @property
    def checkpoint_write_count(self) -> int:
        return 0 if self._session is None else self._session.write_count

    @property
    def checkpoint_is_flush_due(self) -> bool:
        """Whether the next ``write()`` of the session will commit."""
        interval = self.checkpoint_flush_interval
        if self._session is None or interval is None:
            return False
        return (self._session.write_count + 1) % interval == 0

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_state"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "device" or name.startswith("checkpoint_"):
            raise AttributeError(f"{name!r} is checkpoint metadata and is read-only")
        setattr(self._state, name, value)

    def __repr__(self) -> str:
        # The dataclass's own repr, as earth2studio's proxy shows it.
        return repr(self._state)


def states_of(component: Any) -> list[CheckpointState[Any]]:
    """The checkpoint states bound among ``component``'s attributes.

    Components keep what :func:`bind_checkpoint_state` returned as an
    attribute (``self.checkpoint = bind_checkpoint_state(...)`` in
    earth2studio's and restartable's components); a component without
    checkpoint support has none.
    """
    try:
        attributes = list(vars(component).values())
    except TypeError:  # no __dict__ (slots, builtins)
        return []
    return [value for value in attributes if isinstance(value, CheckpointState)]


def buffer_pending(checkpoint: Checkpoint, state: CheckpointState[Any], reusable: bool = False) -> CheckpointState[Any]:
    """Remember ``state`` until a session of ``checkpoint`` opens."""
    sid = state_id(state)
    pending = list(PENDING_STATES.get())
    for index, item in enumerate(pending):
        if item.checkpoint is checkpoint and item.state_id == sid:
            if item.state.checkpoint_dataclass is state.checkpoint_dataclass:
                return item.state
            # A newer instance of the same component replaces the old one.
            pending[index] = PendingState(checkpoint, sid, state, reusable)
            PENDING_STATES.set(tuple(pending))
            return state
    PENDING_STATES.set((*pending, PendingState(checkpoint, sid, state, reusable)))
    return state


def take_pending(checkpoint: Checkpoint) -> list[PendingState]:
    """Remove and return the states waiting for a session of ``checkpoint``."""
    pending = PENDING_STATES.get()
    mine = [item for item in pending if item.checkpoint is checkpoint]
    if mine:
        PENDING_STATES.set(tuple(item for item in pending if item.checkpoint is not checkpoint))
    return mine


def bind_checkpoint_state(state: T | CheckpointState[T]) -> CheckpointState[T]:
    """Bind a dataclass instance so that it is saved and restored with the checkpoint.

    Inside an open session the state is restored from the selected row
    before this returns. With no open session, it is kept for the most
    recently created :class:`~restartable.Checkpoint` and restored when its
    session opens. With no checkpoint at all it is a plain proxy with
    ``checkpoint_enabled == False``.

    Raises
    ------
    TypeError
        ``state`` is not a dataclass instance.
    CheckpointStateCollision
        Another instance of the same dataclass type is bound in the session.
    CheckpointStateSchemaError
        The saved state does not match the current dataclass definition.
    """
    proxy = state if isinstance(state, CheckpointState) else CheckpointState(state)
    session = ACTIVE_SESSION.get()
    if session is not None:
        return session.bind(proxy)
    checkpoint = CURRENT_CHECKPOINT.get()
    if checkpoint is not None:
        proxy._bind(checkpoint)
        return buffer_pending(checkpoint, proxy)
    return proxy
