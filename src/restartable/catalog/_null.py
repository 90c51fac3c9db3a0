"""The session workflows use when no checkpoint is given: :class:`NullCheckpoint`."""

from __future__ import annotations

from typing import Any

from .._device import resolve_device


class NullCheckpoint:
    """A no-op session used by workflows when no checkpoint is given."""

    exists = False
    lead_time = None
    commit_id = None
    level = 0
    checkpoint = None

    @property
    def catalog(self) -> NullCheckpoint:
        """Itself: workflows read ``session.catalog.level``."""
        return self

    @property
    def write_count(self) -> int:
        return 0

    @write_count.setter
    def write_count(self, value: int) -> None:
        pass  # nothing is counted

    @property
    def device(self) -> Any:
        return resolve_device("cpu")

    checkpoint_device = device

    @property
    def metadata(self) -> dict[str, Any]:
        return {}

    labels = metadata

    @property
    def is_active(self) -> bool:
        return False

    def metadata_value(self, key: str) -> Any:
        raise KeyError(key)

    def write(self, **metadata: Any) -> None:
        return None

    def flush(self, wait: bool = True, **metadata: Any) -> None:
        return None

    def pin(self, **metadata: Any) -> None:
        return None

    def start_fresh(self, component: Any) -> None:
        return None

    def __enter__(self) -> NullCheckpoint:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NullCheckpoint()"
