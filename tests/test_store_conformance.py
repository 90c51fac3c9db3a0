"""The row-store conformance suite (restartable.testing.RowStoreTests) on every backend.

Local directories, memory, fsspec's ``memory://`` and a real S3-protocol
server (moto) run the same checks: commit and read back, a failure or a
crash at every operation of a commit, SIGKILL mid-commit, damage, the
second writer, retention and HEAD, commit cost, readers beside a writer.

On S3 each store operation is a request to the moto server, which makes it
the slowest backend by far. Its default run keeps every check but repeats
of code that does not depend on the backend: one case of each hostile-row
matrix (the validation that refuses them is the same for every store; the
local and memory stores run all of them), and the failure and the crash at
every operation of a commit run in the stress run only (``fsspec``'s
``memory://`` store runs them by default through the same
:class:`FsspecRowStore` code, operation for operation).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from restartable.store import FsspecRowStore, LocalRowStore, MemoryRowStore, RowStore
from restartable.testing import RowStoreTests
from restartable.testing._store import BAD_FILE_NAMES, WRONG_SHAPES


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


def _first_by_default(values: dict[str, Any]) -> list[Any]:
    """The first value in the default run, the others in the stress run."""
    return [
        pytest.param(value, id=key, marks=() if k == 0 else pytest.mark.stress)
        for k, (key, value) in enumerate(values.items())
    ]


class TestS3RowStore(RowStoreTests):
    @pytest.fixture
    def store(self, s3_bucket: str) -> FsspecRowStore:
        return FsspecRowStore(f"{s3_bucket}/rank", lease_wait=0)

    @pytest.mark.parametrize("bad_name", _first_by_default({name: name for name in BAD_FILE_NAMES}))
    def test_a_manifest_naming_a_file_outside_its_row_is_damage(self, store: RowStore, bad_name: str) -> None:
        super().test_a_manifest_naming_a_file_outside_its_row_is_damage(store, bad_name)

    @pytest.mark.parametrize("edit", _first_by_default(WRONG_SHAPES))
    def test_a_resigned_manifest_of_the_wrong_shape_is_damage(self, store: RowStore, edit: Any) -> None:
        super().test_a_resigned_manifest_of_the_wrong_shape_is_damage(store, edit)

    @pytest.mark.stress
    def test_a_failure_at_any_operation_of_a_commit_keeps_every_earlier_row(self, store: RowStore) -> None:
        super().test_a_failure_at_any_operation_of_a_commit_keeps_every_earlier_row(store)

    @pytest.mark.stress
    def test_a_crash_at_any_operation_of_a_commit_leaves_only_whole_rows(self, store: RowStore) -> None:
        super().test_a_crash_at_any_operation_of_a_commit_leaves_only_whole_rows(store)

    def replace_file(self, store: RowStore, name: str, file: str, data: bytes) -> None:
        _replace_object(store, name, file, data)

    def location(self, store: RowStore) -> tuple[str, dict[str, Any]]:
        return store.location, {}
