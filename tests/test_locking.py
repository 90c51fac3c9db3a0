"""One writer per store, any number of readers.

Writers in this process and in other processes are refused with
:class:`CheckpointLockedError` while one holds the lock; the kernel frees the
lock when the holder is SIGKILLed. Readers take no lock and never see an
error or a partly written row while a writer commits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from restartable import Checkpoint, CheckpointLockedError
from restartable.cli import main as cli_main

NAME = "locks"

HOLDER = r"""
import sys, time
from restartable import Checkpoint
with Checkpoint("locks", path=sys.argv[1], mode="append") as session:
    session.write(lead_time=1)
    print("ready", flush=True)
    time.sleep(600)
"""


@contextmanager
def holder(store: Path) -> Iterator[subprocess.Popen]:
    """Another process inside ``with Checkpoint(...)``, blocked until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", (
            f"holder failed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        )
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_second_writer_in_the_same_process_is_refused(store: Path) -> None:
    first = Checkpoint(NAME, path=store, mode="append")
    with first as session:
        session.write(lead_time=1)
        second = Checkpoint(NAME, path=store, mode="append")
        with pytest.raises(CheckpointLockedError) as info:
            with second:
                pytest.fail("entered a second writer session")  # pragma: no cover
        assert str(store) in str(info.value)
        assert f"process {os.getpid()}" in str(info.value)
        # A commit outside a session takes the lock for the commit: refused too.
        with pytest.raises(CheckpointLockedError):
            second.select().write(lead_time=99)
        # The refused attempts did not release the first writer's lock.
        assert cli_main(["gc", str(store)]) == 3
        session.write(lead_time=2)
    # Free now.
    with second as session:
        assert session.lead_time == 2
        session.write(lead_time=3)
    assert [e.lead_time for e in Checkpoint(NAME, path=store, mode="append").catalog] == [1, 2, 3]


def test_writer_in_another_process_then_sigkill(store: Path) -> None:
    with holder(store) as proc:
        with pytest.raises(CheckpointLockedError) as info:
            with Checkpoint(NAME, path=store, mode="append"):
                pytest.fail("entered while another process writes")  # pragma: no cover
        assert str(store) in str(info.value)
        assert f"process {proc.pid}" in str(info.value)
        with pytest.raises(CheckpointLockedError):
            Checkpoint(NAME, path=store, mode="append").select().write(lead_time=5)
        # Readers are not blocked.
        assert [e.lead_time for e in Checkpoint(NAME, path=store, mode="append").catalog] == [1]
        assert cli_main(["ls", str(store)]) == 0
        assert cli_main(["verify", str(store)]) == 0
        assert cli_main(["gc", str(store)]) == 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # The kernel released the lock with the process.
    with Checkpoint(NAME, path=store, mode="append") as session:
        assert session.lead_time == 1
        session.write(lead_time=2)
    assert [e.lead_time for e in Checkpoint(NAME, path=store, mode="append").catalog] == [1, 2]
    assert cli_main(["gc", str(store)]) == 0


def test_gc_on_a_locked_store_exits_3(store: Path, capsys: pytest.CaptureFixture) -> None:
    with Checkpoint(NAME, path=store) as session:
        session.write(lead_time=1)
        (store / ".staging-left").mkdir()
        assert cli_main(["gc", str(store)]) == 3
        message = capsys.readouterr().err
        assert str(store) in message and f"process {os.getpid()}" in message
        result = subprocess.run(
            [sys.executable, "-m", "restartable.cli", "gc", str(store)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 3, result.stderr
        assert str(store) in result.stderr
        assert (store / ".staging-left").exists()  # nothing was removed under the writer
    with holder(store):  # the holder, a new writer, removed the leftover when it opened
        (store / ".staging-left").mkdir()
        assert cli_main(["gc", str(store), "--json"]) == 3
        assert (store / ".staging-left").exists()
    assert cli_main(["gc", str(store)]) == 0
    assert not (store / ".staging-left").exists()


# --------------------------------------------------------------------------- readers during commits

STATE_MODULE = textwrap.dedent(
    """
    from dataclasses import dataclass, field

    import numpy as np

    ELEMENTS = 32768


    def derive(i: int) -> np.ndarray:
        return np.arange(ELEMENTS, dtype=np.float64) * 0.5 + i


    @dataclass
    class ReaderState:
        counter: int = 0
        tag: str = "c0"
        data: np.ndarray = field(default_factory=lambda: derive(0))
    """
)

WRITER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[4])
from restartable import Checkpoint, bind_checkpoint_state
from restartable_locktest_state import ReaderState, derive

store, mode, stop = sys.argv[1], sys.argv[2], sys.argv[3]
ROWS = 200
with Checkpoint("readers", path=store, mode=mode, history_size=None) as session:
    state = bind_checkpoint_state(ReaderState())
    i = 0
    # Bounded so that a catalog read stays cheap on a slow machine: every
    # reader scans all rows, and append keeps them all.
    while i < ROWS and not os.path.exists(stop):
        i += 1
        state.counter, state.tag, state.data = i, "c%d" % i, derive(i)
        session.write(lead_time=i)
        if i == 1:
            print("ready", flush=True)
        time.sleep(0.001)
print("done", i, flush=True)
"""


@pytest.mark.parametrize("mode", ["append", "overwrite"])
def test_readers_never_see_errors_or_partial_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    module_dir = tmp_path / "mod"
    module_dir.mkdir()
    (module_dir / "restartable_locktest_state.py").write_text(STATE_MODULE)
    monkeypatch.syspath_prepend(str(module_dir))
    from restartable_locktest_state import ReaderState, derive

    store = tmp_path / "store"
    stop = tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store), mode, str(stop), str(module_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[str] = set()
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"{line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        shared = Checkpoint("readers", path=store, mode=mode)
        for iteration in range(80):
            # Alternate a long-lived reader and a fresh one; any warning is an error here.
            reader = shared if iteration % 2 else Checkpoint("readers", path=store, mode=mode)
            entries = reader.catalog
            assert entries, "a reader saw an empty catalog"
            leads = [e.lead_time for e in entries]
            assert leads == sorted(set(leads))
            if mode == "append":
                assert leads == list(range(1, len(leads) + 1))
            session = reader.select(-1)
            state = session.bind(ReaderState())
            assert state.checkpoint_state_loaded
            assert state.counter == session.lead_time
            assert state.tag == f"c{state.counter}"
            np.testing.assert_array_equal(state.data, derive(state.counter))
            seen.add(session.commit_id)
    finally:
        stop.touch()
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    _out, err = proc.communicate()
    assert proc.returncode == 0, err
    # The writer really committed while the reads went on.
    assert len(seen) >= 2, seen
