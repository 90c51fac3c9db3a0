"""Faults during a real commit: disk full, I/O errors, permissions, bad values.

Faults are injected by replacing functions of the module :mod:`os` (the
engine calls them as ``os.<name>``) with wrappers that raise
``OSError(ENOSPC)`` or ``OSError(EIO)`` for chosen paths or on the Nth call.
Where the machine allows it, a real 512 KiB tmpfs gives a real ENOSPC and a
read-only remount a real EROFS.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from restartable import (
    Checkpoint,
    CheckpointCleanupWarning,
    CheckpointSerializationError,
    CheckpointWarning,
    CheckpointWriteError,
    bind_checkpoint_state,
)
from restartable.cli import main as cli_main
from restartable.store import verify_row
from support import first_payload

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to map descriptors to paths"
)

NAME = "faults"


def values_for(k: int) -> np.ndarray:
    return np.arange(4096, dtype=np.float64) + 10.0 * k


@dataclass
class FaultState:
    step: int = 0
    data: np.ndarray = field(default_factory=lambda: np.zeros(4096))


def set_state(state: FaultState, k: int) -> None:
    state.step = k
    state.data = values_for(k)


def restored(store: Path, row: int = -1, mode: str = "overwrite") -> tuple[object, FaultState]:
    session = Checkpoint(NAME, path=store, mode=mode).select(row)
    state = session.bind(FaultState())
    assert state.checkpoint_state_loaded
    return session.lead_time, state.checkpoint_dataclass


def tree(root: Path) -> dict[str, str | None]:
    """Every directory and file under ``root`` with a hash of its bytes (``.lock`` aside)."""
    out: dict[str, str | None] = {}
    for dirpath, _, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = None
        for name in filenames:
            if rel == "." and name == ".lock":
                continue
            with open(os.path.join(dirpath, name), "rb") as fh:
                out[os.path.join(rel, name)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def leftovers(store: Path) -> list[str]:
    return sorted(n for n in os.listdir(store) if n.startswith((".staging-", ".trash-")))


# --------------------------------------------------------------------------- injection


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def call_path(name: str, args: tuple, kwargs: dict) -> str:
    """The path an ``os`` call acts on (descriptors resolved through /proc)."""
    if not args:
        return ""
    first = args[0]
    if name in ("write", "fsync") or isinstance(first, int):
        return fd_path(first)
    path = os.fspath(first)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    dir_fd = kwargs.get("dir_fd")
    if dir_fd is not None and not os.path.isabs(path):
        path = os.path.join(fd_path(dir_fd), path)
    return path


FAULTABLE = ("mkdir", "open", "write", "fsync", "rename", "link", "unlink", "rmdir")


class Injector:
    """Wraps ``os`` functions; ``rule(name, path, args)`` decides which call fails."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.rule: Callable[[str, str, tuple], int | None] | None = None
        self.hits: list[tuple[str, str]] = []
        self.log: list[tuple[str, str, tuple]] | None = None
        for name in FAULTABLE:
            real = getattr(os, name)

            def wrapper(*args, _real=real, _name=name, **kwargs):
                rule, log = self.rule, self.log
                if rule is not None or log is not None:
                    path = call_path(_name, args, kwargs)
                    if log is not None:
                        extra = (os.fspath(args[1]),) if _name == "rename" and len(args) > 1 else ()
                        log.append((_name, path, extra))
                    if rule is not None:
                        err = rule(_name, path, args)
                        if err is not None:
                            self.hits.append((_name, path))
                            raise OSError(err, os.strerror(err), path)
                return _real(*args, **kwargs)

            monkeypatch.setattr(os, name, wrapper)

    @contextmanager
    def failing(self, rule: Callable[[str, str, tuple], int | None]) -> Iterator[list[tuple[str, str]]]:
        self.hits = []
        self.rule = rule
        try:
            yield self.hits
        finally:
            self.rule = None

    @contextmanager
    def recording(self) -> Iterator[list[tuple[str, str, tuple]]]:
        self.log = []
        try:
            yield self.log
        finally:
            self.log = None


# A payload file: an array's own .npy, or a pack of small arrays.
PAYLOAD_SUFFIXES = (".npy", ".bin")


def in_staging(path: str) -> bool:
    return "/.staging-" in path


def is_staging_dir(path: str) -> bool:
    return os.path.basename(path.rstrip("/")).startswith(".staging-")


# Each rule fails the calls it matches with the given errno.
TARGETED = {
    "mkdir-staging": lambda name, path: name == "mkdir" and is_staging_dir(path),
    "open-payload": lambda name, path: name == "open" and in_staging(path) and path.endswith(PAYLOAD_SUFFIXES),
    "write-payload": lambda name, path: name == "write" and in_staging(path) and path.endswith(PAYLOAD_SUFFIXES),
    "fsync-payload": lambda name, path: name == "fsync" and in_staging(path) and path.endswith(PAYLOAD_SUFFIXES),
    "write-manifest": lambda name, path: name == "write" and in_staging(path) and path.endswith("manifest.json"),
    "fsync-manifest": lambda name, path: name == "fsync" and in_staging(path) and path.endswith("manifest.json"),
    "fsync-staging-dir": lambda name, path: name == "fsync" and is_staging_dir(path),
    "rename-publish": lambda name, path: name == "rename" and is_staging_dir(path),
}


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("target", list(TARGETED))
@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_fault_inside_staging_keeps_previous_row(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, mode: str, target: str, err: int
) -> None:
    injector = Injector(monkeypatch)
    match = TARGETED[target]
    with Checkpoint(NAME, path=store, mode=mode) as session:
        state = bind_checkpoint_state(FaultState())
        for k in (1, 2):
            set_state(state, k)
            session.write(lead_time=k)
        before = tree(store)
        set_state(state, 3)
        with injector.failing(lambda name, path, args: err if match(name, path) else None) as hits:
            with pytest.raises(CheckpointWriteError) as info:
                session.write(lead_time=3)
        assert hits, "the fault was never injected"
        assert info.value.errno == err
        assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == err
        assert str(store) in str(info.value)
        # Nothing changed on disk: no new row, no staging dir, earlier rows untouched.
        assert tree(store) == before
        lead, restored_state = restored(store, -1, mode)
        assert lead == 2 and restored_state.step == 2
        np.testing.assert_array_equal(restored_state.data, values_for(2))
        assert cli_main(["verify", str(store)]) == 0
        # The session is still usable: the next commit succeeds.
        set_state(state, 4)
        entry = session.write(lead_time=4)
        assert entry.lead_time == 4
        assert leftovers(store) == []
    assert leftovers(store) == []
    lead, restored_state = restored(store, -1, mode)
    assert lead == 4 and restored_state.step == 4
    np.testing.assert_array_equal(restored_state.data, values_for(4))
    assert cli_main(["verify", str(store)]) == 0
    expected = [4] if mode == "overwrite" else [1, 2, 4]
    assert [e.lead_time for e in Checkpoint(NAME, path=store, mode=mode).catalog] == expected
    capsys.readouterr()


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_fault_on_the_nth_write_call(store: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """The second ``os.write`` of a commit fails (the first payload chunk went through)."""
    injector = Injector(monkeypatch)
    with Checkpoint(NAME, path=store, mode="append") as session:
        state = bind_checkpoint_state(FaultState())
        set_state(state, 1)
        session.write(lead_time=1)
        before = tree(store)
        calls = {"write": 0}

        def second_write(name: str, path: str, args: tuple) -> int | None:
            if name != "write":
                return None
            calls["write"] += 1
            return err if calls["write"] == 2 else None

        set_state(state, 2)
        with injector.failing(second_write) as hits:
            with pytest.raises(CheckpointWriteError) as info:
                session.write(lead_time=2)
        assert len(hits) == 1 and in_staging(hits[0][1])
        assert info.value.errno == err and str(store) in str(info.value)
        assert tree(store) == before
        set_state(state, 3)
        session.write(lead_time=3)
    assert leftovers(store) == []
    assert [e.lead_time for e in Checkpoint(NAME, path=store, mode="append").catalog] == [1, 3]


def test_fault_syncing_commits_dir_after_publish(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync of ``commits/`` fails after the rename: an error, yet every row is whole."""
    injector = Injector(monkeypatch)
    with Checkpoint(NAME, path=store, mode="overwrite") as session:
        state = bind_checkpoint_state(FaultState())
        set_state(state, 1)
        session.write(lead_time=1)
        set_state(state, 2)
        rule = lambda name, path, args: errno.EIO if name == "fsync" and path.endswith("/commits") else None  # noqa: E731
        with injector.failing(rule) as hits:
            with pytest.raises(CheckpointWriteError) as info:
                session.write(lead_time=2)
        assert hits
        assert info.value.errno == errno.EIO and str(store) in str(info.value)
        entries = Checkpoint(NAME, path=store).catalog
        assert entries[0].lead_time == 1  # the previous row was not retired
        for entry in entries:
            assert verify_row(entry.path) == []
        set_state(state, 3)
        session.write(lead_time=3)
    assert leftovers(store) == []
    entries = Checkpoint(NAME, path=store).catalog
    assert [e.lead_time for e in entries] == [3]
    assert restored(store)[1].step == 3


def test_failed_hard_link_falls_back_to_a_copy(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    injector = Injector(monkeypatch)
    with Checkpoint(NAME, path=store, mode="append", link_unchanged=True) as session:
        state = bind_checkpoint_state(FaultState())
        set_state(state, 1)
        first = session.write(lead_time=1)
        state.step = 2  # the array is unchanged: hard-linked when linking is on
        with injector.failing(lambda name, path, args: errno.EIO if name == "link" else None) as hits:
            second = session.write(lead_time=2)
        assert hits
    for entry in (first, second):
        assert verify_row(entry.path) == []
    assert os.stat(first_payload(second.path)).st_nlink == 1
    np.testing.assert_array_equal(restored(store, -1, "append")[1].data, values_for(1))


# --------------------------------------------------------------------------- every call, one at a time


def classify(name: str, path: str, extra: tuple) -> str:
    if in_staging(path) or is_staging_dir(path):
        return "stage"  # before the commit point
    if name in ("open", "fsync") and path.rstrip("/").endswith("/commits"):
        return "sync-commits"  # after the rename
    if name == "rename" and "/commits/" in path:
        return "retire"
    if "/.trash-" in path:
        return "delete-trash"
    return "other"


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_every_os_call_of_a_commit_failing_in_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Fail the 1st, 2nd, ... ``os`` call of one commit; check what the user sees and what is left.

    Before the commit point the error must leave the disk exactly as it was;
    after it, the new row must be whole. Failures while retiring an old row
    must not fail the commit. In every case the next successful commit
    leaves no ``.staging-*``/``.trash-*`` directory and the retention policy
    holds again.
    """
    injector = Injector(monkeypatch)

    def prepare(store: Path, session, state) -> None:
        for k in (1, 2, 3):
            set_state(state, k)
            session.write(lead_time=k)

    # Dry run: the calls one commit makes, in order.
    dry = tmp_path / "dry"
    with Checkpoint(NAME, path=dry, mode=mode) as session:
        state = bind_checkpoint_state(FaultState())
        prepare(dry, session, state)
        set_state(state, 4)
        with injector.recording() as log:
            session.write(lead_time=4)
    calls = [(name, path, classify(name, path, extra)) for name, path, extra in log]
    kinds = {kind for _, _, kind in calls}
    assert "other" not in kinds, [c for c in calls if c[2] == "other"]
    assert {"stage", "sync-commits"} <= kinds
    if mode == "overwrite":
        assert {"retire", "delete-trash"} <= kinds

    problems: list[str] = []
    keep = 1 if mode == "overwrite" else None
    for n, (call_name, call_target, kind) in enumerate(calls):
        err = errno.ENOSPC if n % 2 == 0 else errno.EIO
        store = tmp_path / f"store{n:03d}"
        label = f"call #{n} {call_name}({os.path.basename(call_target)}) [{kind}]"
        with Checkpoint(NAME, path=store, mode=mode) as session:
            state = bind_checkpoint_state(FaultState())
            prepare(store, session, state)
            before = tree(store)
            counter = {"n": -1}

            def nth(
                name: str, path: str, args: tuple, n: int = n, err: int = err, counter: dict[str, int] = counter
            ) -> int | None:
                counter["n"] += 1
                return err if counter["n"] == n else None

            set_state(state, 4)
            error: CheckpointWriteError | None = None
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with injector.failing(nth) as hits:
                    try:
                        session.write(lead_time=4)
                    except CheckpointWriteError as exc:
                        error = exc
            if [name for name, _ in hits] != [call_name]:
                problems.append(f"{label}: injected {hits}, expected the {call_name} call")
                continue
            cleanup = [w for w in caught if issubclass(w.category, CheckpointCleanupWarning)]
            other_warnings = [w for w in caught if issubclass(w.category, CheckpointWarning) and w not in cleanup]
            if other_warnings:
                problems.append(f"{label}: unexpected warnings {[str(w.message) for w in other_warnings]}")
            if kind == "stage":
                if error is None or error.errno != err or str(store) not in str(error):
                    problems.append(
                        f"{label}: expected CheckpointWriteError(errno={err}) naming {store}, got {error!r}"
                    )
                if tree(store) != before:
                    problems.append(f"{label}: the disk changed although the commit failed before its commit point")
            elif kind == "sync-commits":
                if error is None or error.errno != err:
                    problems.append(f"{label}: expected CheckpointWriteError(errno={err}), got {error!r}")
            elif kind in ("retire", "delete-trash"):
                if error is not None:
                    problems.append(f"{label}: failing to retire an old row failed the commit: {error}")
                if kind == "retire" and not cleanup:
                    problems.append(f"{label}: no CheckpointCleanupWarning for a row that could not be retired")
            # Whatever happened, every listed row is whole and the newest
            # restores consistently.
            entries = Checkpoint(NAME, path=store, mode=mode).catalog
            for entry in entries:
                if verify_row(entry.path):
                    problems.append(f"{label}: row {entry.commit_id} does not verify")
            lead, latest = restored(store, -1, mode)
            if latest.step != lead or not np.array_equal(latest.data, values_for(lead)):
                problems.append(f"{label}: newest row inconsistent")
            if lead != (3 if kind == "stage" else 4):
                problems.append(f"{label}: newest row has lead_time {lead}")
            # The next successful commit.
            set_state(state, 5)
            session.write(lead_time=5)
            left = leftovers(store)
            if left:
                problems.append(f"{label}: {left} left after the next successful commit")
            leads = [e.lead_time for e in Checkpoint(NAME, path=store, mode=mode).catalog]
            if keep is not None and len(leads) > keep:
                problems.append(f"{label}: {len(leads)} rows {leads} after the next successful commit; keeping {keep}")
            if keep is None and leads != ([1, 2, 3, 5] if kind == "stage" else [1, 2, 3, 4, 5]):
                problems.append(f"{label}: rows {leads} after the next successful commit")
        shutil.rmtree(store)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- bad values


@dataclass
class BadState:
    step: int = 0
    data: np.ndarray = field(default_factory=lambda: np.zeros(16))
    extra: object = None


def test_unsupported_value_fails_before_anything_is_written(store: Path) -> None:
    with Checkpoint(NAME, path=store, mode="append") as session:
        state = bind_checkpoint_state(BadState())
        session.write(lead_time=1)
        before = tree(store)
        listing = sorted(os.listdir(store))
        state.step = 2
        state.extra = {"fine": 1, "culprit": {1, 2, 3}}  # a set has no pickle-free encoding
        with pytest.raises(CheckpointSerializationError) as info:
            session.write(lead_time=2)
        assert "extra" in str(info.value) and "culprit" in str(info.value)
        assert tree(store) == before
        assert sorted(os.listdir(store)) == listing
        state.extra = None
        session.write(lead_time=3)
    assert [e.lead_time for e in Checkpoint(NAME, path=store, mode="append").catalog] == [1, 3]
    assert leftovers(store) == []


def test_unsupported_value_outside_a_session_touches_nothing(store: Path) -> None:
    """Serialization happens before the writer lock is taken: an empty store stays empty."""
    session = Checkpoint(NAME, path=store).select()
    state = session.bind(BadState(extra=lambda: None))
    with pytest.raises(CheckpointSerializationError):
        session.write(lead_time=1)
    assert os.listdir(store) == []
    assert not state.checkpoint_state_loaded


# --------------------------------------------------------------------------- real file systems


@contextmanager
def tmpfs(where: Path, *options: str) -> Iterator[Path]:
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(("size=512k", *options)), "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_real_enospc_on_a_tiny_tmpfs(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "tiny") as mount:
        store = mount / "store"
        with Checkpoint(NAME, path=store, mode="overwrite") as session:
            state = bind_checkpoint_state(FaultState())
            set_state(state, 1)  # 32 KiB
            session.write(lead_time=1)
            before = tree(store)
            state.step = 2
            state.data = np.ones(1 << 17)  # 1 MiB > the file system
            with pytest.raises(CheckpointWriteError) as info:
                session.write(lead_time=2)
            assert info.value.errno == errno.ENOSPC
            assert str(store) in str(info.value)
            assert tree(store) == before
            lead, restored_state = restored(store)
            assert lead == 1
            np.testing.assert_array_equal(restored_state.data, values_for(1))
            assert cli_main(["verify", str(store), "--json"]) == 0
            set_state(state, 3)  # fits again
            session.write(lead_time=3)
        assert leftovers(store) == []
        assert [e.lead_time for e in Checkpoint(NAME, path=store).catalog] == [3]
        assert restored(store)[1].step == 3


def test_real_read_only_file_system(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A store on a file system remounted read-only: reads work, a writer gets a clear error."""
    with tmpfs(tmp_path / "ro") as mount:
        store = mount / "store"
        with Checkpoint(NAME, path=store) as session:
            state = bind_checkpoint_state(FaultState())
            set_state(state, 1)
            session.write(lead_time=1)
        remount = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
        assert [e.lead_time for e in Checkpoint(NAME, path=store).catalog] == [1]
        assert restored(store)[1].step == 1
        assert cli_main(["verify", str(store)]) == 0
        capsys.readouterr()
        with pytest.raises(CheckpointWriteError) as info:
            with Checkpoint(NAME, path=store) as session:
                state = bind_checkpoint_state(FaultState())
                set_state(state, 2)
                session.write(lead_time=2)
        assert info.value.errno == errno.EROFS
        assert str(store) in str(info.value)


RO_SCRIPT = r"""
import json, sys
from restartable import Checkpoint, CheckpointError, CheckpointWriteError

store, case = sys.argv[1], sys.argv[2]


def attempt(fn):
    try:
        fn()
    except BaseException as exc:
        return {
            "type": type(exc).__name__,
            "checkpoint_error": isinstance(exc, CheckpointError),
            "write_error": isinstance(exc, CheckpointWriteError),
            "errno": getattr(exc, "errno", None),
            "message": str(exc),
        }
    return None


def session_write(lead_time):
    with Checkpoint("ro", path=store) as session:
        session.write(lead_time=lead_time)


def plain_write(lead_time):
    Checkpoint("ro", path=store).select().write(lead_time=lead_time)


out = {}
if case == "existing":
    checkpoint = Checkpoint("ro", path=store)
    out["catalog"] = [e.lead_time for e in checkpoint.catalog]
    out["selected"] = checkpoint.select(-1).lead_time
out["session_write"] = attempt(lambda: session_write(2))
out["plain_write"] = attempt(lambda: plain_write(3))
print(json.dumps(out))
"""


def _drop_dac_capabilities() -> None:  # pragma: no cover - runs in the child
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("case", ["existing", "fresh"])
def test_read_only_store_directory(tmp_path: Path, case: str) -> None:
    """``chmod 0o500`` on the store: reading works, writing raises CheckpointWriteError(EACCES).

    root ignores permissions; as root the scenario runs in a child whose
    bounding set lacks CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH/CAP_FOWNER (so
    root-owned files obey their mode bits), or is skipped if that fails.
    """
    store = tmp_path / "store"
    store.mkdir()
    if case == "existing":
        with Checkpoint("ro", path=store) as session:
            session.write(lead_time=1)
    before = tree(store)
    preexec = None
    if os.geteuid() == 0:
        try:
            subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_drop_dac_capabilities, check=True)
        except (subprocess.SubprocessError, OSError):
            pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: permissions are not enforced")
        preexec = _drop_dac_capabilities
    os.chmod(store, 0o500)
    try:
        result = subprocess.run(
            [sys.executable, "-c", RO_SCRIPT, str(store), case],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=preexec,
        )
    finally:
        os.chmod(store, 0o755)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    if case == "existing":
        assert out["catalog"] == [1] and out["selected"] == 1
    for how in ("session_write", "plain_write"):
        failure = out[how]
        assert failure is not None, f"{how}: writing into a read-only directory succeeded"
        assert failure["write_error"], f"{how}: expected CheckpointWriteError, got {failure}"
        assert failure["errno"] == errno.EACCES, failure
        assert str(store) in failure["message"], failure
    assert tree(store) == before
