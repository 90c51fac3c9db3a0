"""The one place where a location becomes a store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._base import RowStore
from ._layout import LOCAL_PROTOCOLS, is_url, url_protocol

__all__ = ["local_path_of", "open_store", "rank_names", "rank_stores"]


def local_path_of(url: str) -> Path:
    """The local path of a ``file://`` URL."""
    return Path(url.split("://", 1)[1]).expanduser()


def open_store(
    location: RowStore | str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    *,
    durable: bool = True,
) -> RowStore:
    """The store at ``location``: a :class:`RowStore` as it is, a path, or a URL.

    ``file://`` URLs and paths are local directories
    (:class:`~restartable.store.LocalRowStore`, with ``durable``); any other
    URL is an object-store prefix (:class:`~restartable.store.FsspecRowStore`,
    with ``storage_options``). Nothing is read or created.

    >>> open_store("/tmp/run")
    LocalRowStore('/tmp/run')
    """
    if isinstance(location, RowStore):
        return location
    if is_url(location):
        text = str(location)
        if url_protocol(text) in LOCAL_PROTOCOLS:
            from ._local import LocalRowStore

            return LocalRowStore(local_path_of(text), durable=durable)
        from ._fsspec import FsspecRowStore

        return FsspecRowStore(text.rstrip("/"), storage_options)
    from ._local import LocalRowStore

    return LocalRowStore(Path(location), durable=durable)


def rank_names(store: RowStore) -> list[str]:
    """Relative names of every rank's store under ``store``: ``""`` (itself, single rank) and/or ``rank_*``.

    Raises ``FileNotFoundError`` naming ``store`` when it holds neither.
    """
    ranks = store.rank_folders()
    if store.has_commits():
        return ["", *ranks]
    if not ranks:
        what = "is empty or missing" if not store.exists() else "is not a restartable checkpoint"
        raise FileNotFoundError(f"{store} {what} (no commits/ and no rank_* folders with rows)")
    return ranks


def rank_stores(store: RowStore) -> list[RowStore]:
    """The stores of every rank under ``store`` (see :func:`rank_names`)."""
    return [store.child(name) if name else store for name in rank_names(store)]
