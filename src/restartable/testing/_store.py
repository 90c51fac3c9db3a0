"""The row-store conformance suite: what every backend must do, written once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from typing import Any

import numpy as np
import pytest

from ..errors import (
    CheckpointCleanupWarning,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointLockedError,
    CheckpointWriteError,
)
from ..store import (
    FaultyRowStore,
    MemoryRowStore,
    RowStore,
    RowWriter,
    SimulatedCrash,
    Snapshot,
    open_row,
    scan_rows,
    verify_row,
)
from ..store._faults import WRITING_OPERATIONS
from ..store._layout import MANIFEST_NAME
from ..store.files import checksum_bytes
from ..store.manifest import dump_manifest

__all__ = ["RowStoreTests"]

# Every operation of the store interface, for counting what a commit costs.
ALL_OPERATIONS = WRITING_OPERATIONS | {
    "rank_folders",
    "exists",
    "list_rows",
    "read_manifest",
    "read_manifests",
    "file_size",
    "read_payload",
    "hash_file",
    "read_chunks",
    "row_files",
    "row_exists",
    "read_head",
}


def _arrays(step: int) -> list[np.ndarray]:
    """A row's payloads: several dtypes and shapes, different at every step."""
    rng = np.random.default_rng(step)
    return [
        rng.standard_normal((3, 5)).astype(np.float32),
        np.arange(step, step + 7, dtype=np.int64),
        np.array(step, dtype=np.float64),
        np.zeros((0, 2), dtype=np.uint8),
        np.asfortranarray(rng.standard_normal((4, 3))),
    ]


def _writer(store: RowStore, **options: Any) -> RowWriter:
    """A writer whose rows hold both kinds of payload file: the (4, 3) float64 array of
    :func:`_arrays` gets a file of its own, the smaller ones share a pack."""
    return RowWriter(store, pack_below=64, **options)


def _snapshot(step: int, pin: bool = False) -> Snapshot:
    return Snapshot(body={"step": step}, payloads=_arrays(step), pin=pin)


def _steps(store: RowStore) -> list[int]:
    scan = scan_rows(store)
    assert scan.problems == [], scan.problems
    return [row.body["step"] for row in scan.rows]


def _assert_whole(store: RowStore) -> None:
    """Every listed row is whole and holds the payloads of its step."""
    scan = scan_rows(store)
    assert scan.problems == [], scan.problems
    for row in scan.rows:
        assert verify_row(store, row.name) == [], row.name
        for index, expected in enumerate(_arrays(row.body["step"])):
            np.testing.assert_array_equal(row.read_payload(index), expected)


def _commit_two_rows(store: RowStore, keep: int | None) -> int:
    """Commit rows 1 and 2; return how many store operations the second commit took."""
    counting = FaultyRowStore(store)
    writer = _writer(counting, keep=keep)
    try:
        writer.persist(_snapshot(1))
        start = len(counting.log)
        writer.persist(_snapshot(2))
        return len(counting.log) - start
    finally:
        writer.close()


_KILL_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from restartable.store import RowWriter, Snapshot, open_store

    location, options = sys.argv[1], json.loads(sys.argv[2])
    writer = RowWriter(open_store(location, options), keep=2, pack_below=64)
    step = 0
    while True:
        step += 1
        payload = np.full(1 << 20, step, dtype=np.float64)  # 8 MiB: long enough to be killed inside
        packed = [np.full(4, step + i, dtype=np.float32) for i in range(100)]
        writer.persist(Snapshot(body={"step": step}, payloads=[payload, *packed]))
        print(step, flush=True)
    """
)


# Names a manifest may not give a file of its row, and edits that give a
# manifest the wrong shape: the cases of the two hostile-row tests below
# (a subclass may run a subset of them on a slow backend; the validation
# that refuses them is the same for every store).
BAD_FILE_NAMES = ["../p000000.npy", "/etc/passwd", "sub/p000000.npy", "./p000000.npy", "manifest.json", ".lock", ""]
WRONG_SHAPES = {
    "files-object": lambda body: body.update(files={"p000000.npy": 1}),
    "size-text": lambda body: body["files"][0].update(size="1"),
    "size-bool": lambda body: body["files"][0].update(size=True),
    "size-negative": lambda body: body["files"][0].update(size=-1),
    "checksum-none": lambda body: body["files"][0].update(checksum=None),
    "duplicate": lambda body: body["files"].append(dict(body["files"][0])),
    "version-text": lambda body: body.update(format_version="1"),
}


class RowStoreTests:
    """Conformance tests every row store passes. Subclass and provide:

    - a ``store`` fixture yielding a fresh, empty store (for object stores,
      one whose lease wait is 0, so that a second writer is refused at once);
    - :meth:`replace_file`, which overwrites a file of a committed row
      (to check that damage is found);
    - optionally :meth:`location`, the ``(location, storage_options)`` a
      child process opens the store with (``None``: the SIGKILL test is skipped).
    """

    def replace_file(self, store: RowStore, name: str, file: str, data: bytes) -> None:
        raise NotImplementedError

    def location(self, store: RowStore) -> tuple[str, dict[str, Any]] | None:
        return None

    # ------------------------------------------------------------------ commit and read

    def test_commit_and_read_back(self, store: RowStore) -> None:
        writer = _writer(store)
        try:
            rows = [writer.persist(_snapshot(step)) for step in (1, 2, 3)]
        finally:
            writer.close()
        assert [row.sequence for row in rows] == [1, 2, 3]
        assert _steps(store) == [1, 2, 3]
        _assert_whole(store)
        opened = open_row(store, rows[-1].name)
        assert opened.body == rows[-1].body
        assert store.row_exists(rows[0].name) and not store.row_exists("000000000009-" + "0" * 32)

    def test_sequences_continue_across_writers(self, store: RowStore) -> None:
        for step in (1, 2):
            writer = _writer(store)
            try:
                writer.persist(_snapshot(step))
            finally:
                writer.close()
        assert [row.sequence for row in scan_rows(store).rows] == [1, 2]

    # ------------------------------------------------------------------ failures

    def test_a_failure_at_any_operation_of_a_commit_keeps_every_earlier_row(self, store: RowStore) -> None:
        operations = _commit_two_rows(store, keep=None)
        for k in range(1, operations + 1):
            faulty = FaultyRowStore(store)
            writer = _writer(faulty)
            try:
                faulty.arm(k)
                with pytest.raises((CheckpointError, OSError)):
                    writer.persist(_snapshot(100 + k))
                before = _steps(store)
                assert before[:2] == [1, 2], f"operation {k} ({faulty.log[-1]}): {before}"
                # The writer stays usable: the next commit goes through.
                faulty.disarm()
                writer.persist(_snapshot(200 + k))
            finally:
                writer.close()
            assert _steps(store)[-1] == 200 + k
        _assert_whole(store)

    def test_a_crash_at_any_operation_of_a_commit_leaves_only_whole_rows(self, store: RowStore) -> None:
        operations = _commit_two_rows(store, keep=2)
        step = 2
        for k in range(1, operations + 1):
            faulty = FaultyRowStore(store)
            writer = _writer(faulty, keep=2)
            faulty.arm(k, crash=True)
            step += 1
            try:
                with pytest.raises(SimulatedCrash):
                    writer.persist(_snapshot(step))
            finally:
                with contextlib.suppress(SimulatedCrash):  # the "dead" writer cleans nothing up
                    writer.close()
            seen = _steps(store)
            # The crashed row is there whole, or not at all; the rows before it are there.
            assert seen[-1] in (step, step - 1), f"crash at operation {k}: {seen}"
            _assert_whole(store)
            # A new writer removes what the crash left and goes on.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CheckpointCleanupWarning)
                writer = _writer(store, keep=2)
            try:
                step += 1
                writer.persist(_snapshot(step))
            finally:
                writer.close()
            assert _steps(store)[-1] == step
            assert len(_steps(store)) == 2
        _assert_whole(store)

    def test_a_killed_writer_leaves_only_whole_rows(self, store: RowStore, tmp_path: Any) -> None:
        spec = self.location(store)
        if spec is None:
            pytest.skip("this store cannot be opened by another process")
        import json

        location, options = spec
        child = subprocess.Popen(
            [sys.executable, "-c", _KILL_CHILD, location, json.dumps(options)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            for _ in range(3):  # three rows committed: the fourth is in flight
                line = child.stdout.readline()
                assert line, child.stderr.read() if child.stderr else ""
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.communicate()
        scan = scan_rows(store)
        assert scan.problems == []
        assert len(scan.rows) >= 2
        for row in scan.rows:
            assert verify_row(store, row.name) == []
            assert row.read_payload(0)[0] == row.body["step"]
            assert row.read_payload(100)[0] == row.body["step"] + 99  # from the pack
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointCleanupWarning)
            writer = _writer(store, keep=2)  # the dead writer's lock or lease is taken over
        try:
            row = writer.persist(_snapshot(1000))
        finally:
            writer.close()
        assert row.sequence == max(r.sequence for r in scan.rows) + 1 or row.sequence > scan.rows[-1].sequence

    # ------------------------------------------------------------------ damage

    def _committed(self, store: RowStore, count: int = 2) -> list[Any]:
        writer = _writer(store)
        try:
            return [writer.persist(_snapshot(step)) for step in range(1, count + 1)]
        finally:
            writer.close()

    def test_a_flipped_byte_in_a_payload_is_found(self, store: RowStore) -> None:
        rows = self._committed(store)
        file = rows[-1].files[1]["name"]
        data = bytearray(b"".join(store.read_chunks(rows[-1].name, file)))
        data[-1] ^= 0x01
        self.replace_file(store, rows[-1].name, file, bytes(data))
        (problem,) = verify_row(store, rows[-1].name)
        assert problem.file is not None and problem.file.endswith(file)
        with pytest.raises(CheckpointCorruptError, match=file):
            scan_rows(store).rows[-1].read_payload(1)
        assert verify_row(store, rows[0].name) == []

    def test_a_truncated_payload_makes_the_row_a_problem(self, store: RowStore) -> None:
        rows = self._committed(store)
        file = rows[-1].files[0]["name"]
        data = b"".join(store.read_chunks(rows[-1].name, file))
        self.replace_file(store, rows[-1].name, file, data[:-3])
        scan = scan_rows(store)
        assert [row.name for row in scan.rows] == [rows[0].name]
        (problem,) = scan.problems
        assert file in problem.reason and "truncated" in problem.reason

    def test_a_damaged_manifest_makes_the_row_a_problem(self, store: RowStore) -> None:
        rows = self._committed(store)
        raw = bytearray(store.read_manifest(rows[-1].name))
        raw[len(raw) // 2] ^= 0x20
        self.replace_file(store, rows[-1].name, MANIFEST_NAME, bytes(raw))
        scan = scan_rows(store)
        assert [row.name for row in scan.rows] == [rows[0].name]
        (problem,) = scan.problems
        assert MANIFEST_NAME in problem.reason
        assert verify_row(store, rows[-1].name) != []

    # ------------------------------------------------------------------ hostile rows

    def _resign(self, store: RowStore, name: str, edit: Any) -> None:
        """Edit a committed row's manifest body and sign it again, as anyone who can write the store can."""
        body = json.loads(store.read_manifest(name))["manifest"]
        edit(body)
        self.replace_file(store, name, MANIFEST_NAME, dump_manifest(body))

    @pytest.mark.parametrize("bad_name", BAD_FILE_NAMES)
    def test_a_manifest_naming_a_file_outside_its_row_is_damage(self, store: RowStore, bad_name: str) -> None:
        rows = self._committed(store)
        self._resign(store, rows[-1].name, lambda body: body["files"][0].update(name=bad_name))
        scan = scan_rows(store)
        assert [row.name for row in scan.rows] == [rows[0].name]
        (problem,) = scan.problems
        assert "not a plain file name inside the row" in problem.reason
        assert "not a plain file name" in verify_row(store, rows[-1].name)[0].reason

    @pytest.mark.parametrize("edit", list(WRONG_SHAPES.values()), ids=list(WRONG_SHAPES))
    def test_a_resigned_manifest_of_the_wrong_shape_is_damage(self, store: RowStore, edit: Any) -> None:
        rows = self._committed(store)
        self._resign(store, rows[-1].name, lambda body: None)
        assert scan_rows(store).problems == [], "re-signing alone must leave the row whole"
        self._resign(store, rows[-1].name, edit)
        scan = scan_rows(store)
        assert [row.name for row in scan.rows] == [rows[0].name]
        (problem,) = scan.problems
        assert MANIFEST_NAME in problem.reason

    def test_a_manifest_nested_too_deep_for_the_parser_is_damage(self, store: RowStore) -> None:
        rows = self._committed(store)
        body = json.dumps(json.loads(store.read_manifest(rows[-1].name))["manifest"], sort_keys=True)
        data = body.replace('"files":', '"deep":' + "[" * 100_000 + "]" * 100_000 + ',"files":').encode()
        raw = b'{"checksum":"' + checksum_bytes(data).encode() + b'","manifest":' + data + b"}\n"
        self.replace_file(store, rows[-1].name, MANIFEST_NAME, raw)
        (problem,) = scan_rows(store).problems
        assert "RecursionError" in problem.reason

    def test_a_row_numbered_last_stops_the_writer_without_losing_a_row(self, store: RowStore) -> None:
        rows = self._committed(store)
        last = f"{'9' * 12}-{'a' * 32}"
        self.replace_file(store, last, MANIFEST_NAME, b"not a manifest")
        writer = _writer(store, keep=1)
        try:
            with pytest.raises(CheckpointWriteError, match="largest a row name can hold"):
                writer.persist(_snapshot(3))
        finally:
            writer.close()
        assert [row.name for row in scan_rows(store).rows] == [row.name for row in rows]
        assert all(len(name) == len(last) for _, name in store.list_rows())

    # ------------------------------------------------------------------ exclusion

    def test_a_second_writer_is_refused(self, store: RowStore) -> None:
        first = _writer(store)
        try:
            first.persist(_snapshot(1))
            with pytest.raises(CheckpointLockedError):
                _writer(store)
        finally:
            first.close()
        second = _writer(store)  # released: the next writer gets in
        second.close()

    # ------------------------------------------------------------------ retention and HEAD

    def test_retention_keeps_the_newest_rows_and_the_pinned_one(self, store: RowStore) -> None:
        writer = _writer(store, keep=2)
        try:
            writer.persist(_snapshot(1))
            writer.persist(_snapshot(2, pin=True))
            for step in range(3, 7):
                writer.persist(_snapshot(step))
        finally:
            writer.close()
        assert _steps(store) == [2, 5, 6]
        writer = _writer(store, keep=2)  # a new writer finds the pinned row again
        try:
            writer.persist(_snapshot(7))
        finally:
            writer.close()
        assert _steps(store) == [2, 6, 7]
        _assert_whole(store)

    def test_a_floor_holds_retention_back(self, store: RowStore) -> None:
        floor = [1]
        writer = _writer(store, keep=1, floor=lambda: floor[0], head=True)
        try:
            for step in range(1, 5):
                writer.persist(_snapshot(step))
            assert _steps(store) == [1, 2, 3, 4]
            assert store.read_head() == 4
            floor[0] = 3
            writer.persist(_snapshot(5))
        finally:
            writer.close()
        assert _steps(store) == [3, 4, 5]

    def test_restart_after_retires_newer_rows_and_aligns_the_sequence(self, store: RowStore) -> None:
        writer = _writer(store, head=True)
        try:
            for step in range(1, 5):
                writer.persist(_snapshot(step))
            assert writer.restart_after(2) == []
            row = writer.persist(_snapshot(10))
        finally:
            writer.close()
        assert row.sequence == 3
        assert _steps(store) == [1, 2, 10]
        assert store.read_head() == 3

    def test_restart_after_lowers_head_before_it_retires_a_row(self, store: RowStore) -> None:
        # Other ranks keep every row at or above the lowest HEAD: a rank that
        # dies while it retires the rows of an abandoned run must already say
        # that it went back, or they could retire the row it went back to.
        writer = _writer(store, head=True)
        try:
            for step in range(1, 5):
                writer.persist(_snapshot(step))
        finally:
            writer.close()
        crashing = FaultyRowStore(store, fail_at=1, crash=True, operations=frozenset({"retire"}))
        writer = _writer(crashing, head=True)
        with pytest.raises(SimulatedCrash):
            writer.restart_after(2)
        assert store.read_head() == 2
        assert _steps(store) == [1, 2, 3, 4]  # the crash came before any row was retired

    # ------------------------------------------------------------------ cost and concurrency

    def test_the_cost_of_a_commit_does_not_grow_with_the_rows_kept(self, store: RowStore) -> None:
        counting = FaultyRowStore(store, operations=frozenset(ALL_OPERATIONS))
        writer = _writer(counting)
        try:
            costs = []
            for step in range(1, 41):
                before = len(counting.log)
                writer.persist(Snapshot(body={"step": step}, payloads=[np.arange(3)]))
                costs.append(len(counting.log) - before)
        finally:
            writer.close()
        assert len(set(costs[1:])) == 1, f"operations per commit changed with the number of rows: {costs}"

    def test_readers_running_beside_a_writer_always_see_whole_rows(self, store: RowStore) -> None:
        writer = _writer(store, keep=1)
        writer.persist(_snapshot(1))
        done = threading.Event()
        failures: list[BaseException] = []

        def write() -> None:
            try:
                for step in range(2, 16):
                    writer.persist(_snapshot(step))
            except BaseException as exc:  # reported by the reader's thread
                failures.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=write)
        thread.start()
        seen: list[int] = []
        try:
            while not done.is_set() or not seen:
                scan = scan_rows(store)
                assert scan.problems == []
                assert scan.rows, "a reader saw no row at all while one always existed"
                seen.append(scan.rows[-1].body["step"])
        finally:
            thread.join()
            writer.close()
        assert not failures, failures
        assert seen == sorted(seen), "a reader went back in time"
        assert _steps(store) == [15]

    # ------------------------------------------------------------------ copying

    def test_rows_copy_to_another_store_and_back(self, store: RowStore, request: Any) -> None:
        from ..remote.sync import copy_rows

        self._committed(store, 3)
        other = MemoryRowStore(f"copy-{request.node.nodeid}")
        try:
            report = copy_rows(store, other)
            assert len(report.copied) == 3 and report.damaged == []
            assert _steps(other) == [1, 2, 3]
            _assert_whole(other)
            again = copy_rows(other, store)
            assert again.copied == [] and len(again.present) == 3
        finally:
            MemoryRowStore.forget(other.name)
