"""The row-store conformance suite (restartable.testing.RowStoreTests) on every backend.

Local directories, memory, fsspec's ``memory://`` and a real S3-protocol
server (moto) run the same checks: commit and read back, a failure or a
crash at every operation of a commit, SIGKILL mid-commit, damage, the
second writer, retention and HEAD, commit cost, readers beside a writer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from restartable.store import FsspecRowStore, LocalRowStore, MemoryRowStore, RowStore
from restartable.testing import RowStoreTests


class TestLocalRowStore(RowStoreTests):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalRowStore:
        return LocalRowStore(tmp_path / "rows")

    def replace_file(self, store: RowStore, name: str, file: str, data: bytes) -> None:
        assert isinstance(store, LocalRowStore)
        (store.commits / name).mkdir(exist_ok=True)
        (store.commits / name / file).unlink(missing_ok=True)  # never write through a hard link shared by rows
        (store.commits / name / file).write_bytes(data)

    def location(self, store: RowStore) -> tuple[str, dict[str, Any]]:
        return store.location, {}


class TestMemoryRowStore(RowStoreTests):
    @pytest.fixture
    def store(self) -> Iterator[MemoryRowStore]:
        name = f"conformance-{uuid.uuid4().hex}"
        yield MemoryRowStore(name)
        MemoryRowStore.forget(name)

    def replace_file(self, store: RowStore, name: str, file: str, data: bytes) -> None:
        assert isinstance(store, MemoryRowStore)
        store.replace_file(name, file, data)


def _replace_object(store: RowStore, name: str, file: str, data: bytes) -> None:
    assert isinstance(store, FsspecRowStore)
    store.objects.put_bytes(f"commits/{name}/{file}", data)


class TestFsspecMemoryRowStore(RowStoreTests):
    @pytest.fixture
    def store(self) -> Iterator[FsspecRowStore]:
        pytest.importorskip("fsspec")
        url = f"memory://conformance-{uuid.uuid4().hex}/rank"
        yield FsspecRowStore(url, lease_wait=0)
        import fsspec

        fs = fsspec.filesystem("memory")
        if fs.exists(url.rsplit("/", 1)[0]):
            fs.rm(url.rsplit("/", 1)[0], recursive=True)

    def replace_file(self, store: RowStore, name: str, file: str, data: bytes) -> None:
        _replace_object(store, name, file, data)


class TestS3RowStore(RowStoreTests):
    @pytest.fixture
    def store(self, s3_bucket: str) -> FsspecRowStore:
        return FsspecRowStore(f"{s3_bucket}/rank", lease_wait=0)

    def replace_file(self, store: RowStore, name: str, file: str, data: bytes) -> None:
        _replace_object(store, name, file, data)

    def location(self, store: RowStore) -> tuple[str, dict[str, Any]]:
        return store.location, {}
