"""Crash safety: writers killed with SIGKILL at random points never damage the catalog.

A "zygote" process imports numpy and restartable once, then repeatedly forks a
writer child that opens the checkpoint, restores its state and commits in a
loop. The zygote SIGKILLs the child after a random delay, reaps it and, never
holding the writer lock itself, checks the catalog:

* it opens without error or warning, and every listed row verifies;
* no directory under ``commits/`` is anything but a whole row;
* the newest row's state decodes consistently (every value is derived from
  its counter, which equals the row's ``lead_time``);
* append mode: lead times are exactly 1..n (nothing lost, nothing repeated)
  and every commit the child reported as returned is present;
* overwrite mode: the newest row is at least as new as every reported
  commit, and no row older than a reported commit is listed (``write()``
  returns only after retirement; kills between publish and retirement may
  leave extra rows, which the next completed commit retires);
* a writer that got its lock removed every staging directory older than it.

The zygote prints a JSON summary that the test asserts on.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from restartable import Checkpoint
from restartable.store import verify_row

ZYGOTE = r'''
import json, os, random, select, shutil, signal, sys, time, traceback, warnings
from dataclasses import dataclass, field

import numpy as np

from restartable import (
    Checkpoint,
    CheckpointCleanupWarning,
    CheckpointFallbackWarning,
    CheckpointWarning,
    bind_checkpoint_state,
)
from restartable.store import verify_row

cfg = json.loads(sys.argv[1])
ROOT = cfg["root"]
MODE = cfg["mode"]
KILLS = cfg["kills"]
PER_STORE = cfg["kills_per_store"]
MAX_SLEEP = cfg["max_sleep"]
KEEP_STORES = cfg["keep_stores"]
BASE = np.arange(cfg["elements"], dtype=np.float64)
rng = random.Random(cfg["seed"])


def derive(i):
    return BASE * 0.5 + float(i)


@dataclass
class CrashState:
    counter: int = 0
    tag: str = "c0"
    data: np.ndarray = field(default_factory=lambda: derive(0))


def consistent(state, lead_time):
    return (
        state.counter == lead_time
        and state.tag == "c%d" % state.counter
        and state.data.shape == BASE.shape
        and bool(np.array_equal(state.data, derive(state.counter)))
    )


def leftovers(store, prefixes=(".staging-",)):
    try:
        return {n for n in os.listdir(store) if n.startswith(prefixes)}
    except FileNotFoundError:
        return set()


# ----------------------------------------------------------------- the writer child

def run_child(store, report_path, ready_fd):
    code = 0
    fd = os.open(report_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def report(line):
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)

    try:
        warnings.simplefilter("ignore", CheckpointCleanupWarning)
        # A kill must never leave a damaged row behind: make that fatal.
        warnings.simplefilter("error", CheckpointFallbackWarning)
        with Checkpoint("crash", path=store, mode=MODE, history_size=None) as session:
            state = bind_checkpoint_state(CrashState())
            i = state.counter
            if not consistent(state, session.lead_time if session.exists else 0):
                report("error restored an inconsistent state: counter=%r lead_time=%r"
                       % (state.counter, session.lead_time))
                os._exit(3)
            report("open %d" % i)
            os.write(ready_fd, b"r")
            while True:
                i += 1
                state.counter = i
                state.tag = "c%d" % i
                state.data = derive(i)
                entry = session.write(lead_time=i)
                report("commit %d %d" % (entry.sequence, entry.lead_time))
    except BaseException:
        try:
            report("error " + traceback.format_exc().replace("\n", " | "))
        except BaseException:
            pass
        code = 2
    os._exit(code)


# ----------------------------------------------------------------- checks

summary = {
    "mode": MODE,
    "kills": 0,
    "stores": 0,
    "commits_reported": 0,
    "killed_before_open": 0,
    "killed_with_staging": 0,
    "cleanup_warnings": 0,
    "max_rows": 0,
    "rows_total": 0,
    "violation_count": 0,
    "violations": [],
}


def violation(message):
    summary["violation_count"] += 1
    if len(summary["violations"]) < 40:
        summary["violations"].append(message)


class StoreCheck:
    def __init__(self, store):
        self.store = store
        self.report_path = store + ".report"
        self.offset = 0
        self.reported = {}  # lead_time -> sequence
        self.verified = set()
        self.failed = False

    def read_report(self):
        with open(self.report_path, "ab+") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a line without its newline was not reported
        self.offset += end
        return data[:end].decode().splitlines()

    def bad(self, message):
        self.failed = True
        violation(message)

    def check(self, label, opened_before=None):
        """Check the store. ``opened_before``: staging names that existed
        before a writer that got its lock (those must be gone)."""
        store = self.store
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                checkpoint = Checkpoint("crash", path=store, mode=MODE, history_size=None)
                entries = checkpoint.catalog
            except Exception as exc:  # noqa: BLE001
                self.bad("%s: opening the catalog raised %r" % (label, exc))
                return None
        for w in caught:
            if issubclass(w.category, CheckpointWarning):
                self.bad("%s: reading the catalog warned: %s" % (label, w.message))
        commits = os.path.join(store, "commits")
        row_dirs = sorted(os.listdir(commits)) if os.path.isdir(commits) else []
        if row_dirs != sorted(e.commit_id for e in entries):
            self.bad("%s: commits/ holds %r but the catalog lists %r"
                     % (label, row_dirs, [e.commit_id for e in entries]))
        sequences = [e.sequence for e in entries]
        leads = [e.lead_time for e in entries]
        if sequences != sorted(set(sequences)):
            self.bad("%s: sequences not strictly increasing: %r" % (label, sequences))
        if leads != sorted(set(leads)):
            self.bad("%s: lead times not strictly increasing: %r" % (label, leads[-10:]))
        present = dict(zip(leads, sequences))
        if MODE == "append":
            if leads != list(range(1, len(leads) + 1)):
                self.bad("%s: lead times are not exactly 1..%d: %r" % (label, len(leads), leads[-10:]))
            for lead, seq in self.reported.items():
                if present.get(lead) != seq:
                    self.bad("%s: reported commit lead_time=%d sequence=%d is missing (have %r)"
                             % (label, lead, seq, present.get(lead)))
            ids = {e.commit_id for e in entries}
            lost = self.verified - ids
            if lost:
                self.bad("%s: previously verified rows disappeared: %r" % (label, sorted(lost)[:5]))
        else:
            if self.reported:
                newest = max(self.reported)
                if not entries or entries[-1].lead_time < newest:
                    self.bad("%s: reported commit %d is newer than the newest row %r"
                             % (label, newest, entries[-1].lead_time if entries else None))
                # write() returns only after older rows were retired: a row
                # older than a reported commit must never be seen again.
                floor = self.reported[newest]
                stale = [e.sequence for e in entries if e.sequence < floor]
                if stale:
                    self.bad("%s: rows %r older than the reported commit %d are still listed"
                             % (label, stale, floor))
        for entry in entries:
            if entry.commit_id not in self.verified:
                problems = verify_row(entry.path)
                if problems:
                    self.bad("%s: row %s does not verify: %s" % (label, entry.commit_id, problems))
                self.verified.add(entry.commit_id)
        if entries:
            try:
                session = checkpoint.select(-1)
                state = session.bind(CrashState())
                if not state.checkpoint_state_loaded or not consistent(state, entries[-1].lead_time):
                    self.bad("%s: newest row %s is inconsistent: counter=%r lead_time=%r tag=%r"
                             % (label, entries[-1].commit_id, state.counter, entries[-1].lead_time, state.tag))
            except Exception as exc:  # noqa: BLE001
                self.bad("%s: selecting the newest row raised %r" % (label, exc))
        staging = leftovers(store)
        if opened_before is not None:
            stale = staging & opened_before
            if stale:
                self.bad("%s: staging dirs older than the last writer survived it: %r" % (label, sorted(stale)))
            if len(staging) > 1:
                self.bad("%s: %d staging dirs after one writer" % (label, len(staging)))
        summary["max_rows"] = max(summary["max_rows"], len(entries))
        return entries

    def kill_round(self, index):
        before = leftovers(self.store)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            run_child(self.store, self.report_path, w)
        os.close(w)
        if rng.random() < 0.5:
            # Time the kill from the moment the writer is ready: kills land in commits.
            select.select([r], [], [], 60)
        # Otherwise from the fork: kills also land in open, lock, cleanup and restore.
        time.sleep(rng.uniform(0.0, MAX_SLEEP))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(r)
        summary["kills"] += 1
        label = "kill %d (%s)" % (index, os.path.basename(self.store))
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            self.bad("%s: the writer exited on its own (status %d)" % (label, status))
        opened = False
        for line in self.read_report():
            kind, _, rest = line.partition(" ")
            if kind == "open":
                opened = True
            elif kind == "commit":
                seq, lead = (int(x) for x in rest.split())
                self.reported[lead] = seq
                summary["commits_reported"] += 1
            elif kind == "error":
                self.bad("%s: writer error: %s" % (label, rest[:2000]))
        if not opened:
            summary["killed_before_open"] += 1
        if leftovers(self.store):
            summary["killed_with_staging"] += 1
        self.check(label, before if opened else None)

    def finish(self):
        """One writer that is not killed: it must clean up and commit."""
        store = self.store
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with Checkpoint("crash", path=store, mode=MODE, history_size=None) as session:
                    state = bind_checkpoint_state(CrashState())
                    if not consistent(state, session.lead_time if session.exists else 0):
                        self.bad("final writer restored an inconsistent state")
                    i = state.counter + 1
                    state.counter, state.tag, state.data = i, "c%d" % i, derive(i)
                    entry = session.write(lead_time=i)
                    self.reported[i] = entry.sequence
            except Exception as exc:  # noqa: BLE001
                self.bad("final writer raised %r" % (exc,))
        for w in caught:
            if issubclass(w.category, CheckpointCleanupWarning):
                summary["cleanup_warnings"] += 1
            elif issubclass(w.category, CheckpointWarning):
                self.bad("final writer warned: %s" % (w.message,))
        left = leftovers(store, (".staging-", ".trash-"))
        if left:
            self.bad("leftovers after a clean writer: %r" % sorted(left))
        entries = self.check("final") or []
        if MODE == "overwrite" and len(entries) != 1:
            self.bad("final: a completed overwrite commit left %d rows" % len(entries))
        for entry in entries:  # verify everything once more
            problems = verify_row(entry.path)
            if problems:
                self.bad("final: row %s does not verify: %s" % (entry.commit_id, problems))
        summary["rows_total"] += len(entries)


store_check = None
for k in range(KILLS):
    if k % PER_STORE == 0:
        if store_check is not None:
            store_check.finish()
            if not store_check.failed and not KEEP_STORES:
                shutil.rmtree(store_check.store)
        store = os.path.join(ROOT, "store%03d" % (k // PER_STORE))
        os.makedirs(store)
        summary["stores"] += 1
        store_check = StoreCheck(store)
    store_check.kill_round(k)
if store_check is not None:
    store_check.finish()
print(json.dumps(summary))
'''


def _run_zygote(tmp_path: Path, mode: str, kills: int, kills_per_store: int, seed: int, timeout: float) -> dict:
    script = tmp_path / "zygote.py"
    script.write_text(ZYGOTE)
    root = tmp_path / "stores"
    root.mkdir()
    cfg = {
        "root": str(root),
        "mode": mode,
        "kills": kills,
        "kills_per_store": kills_per_store,
        "seed": seed,
        "elements": 40_000,  # 320 kB of float64: kills land mid-write
        "max_sleep": 0.030,
        "keep_stores": False,
    }
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, (
        f"zygote failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def _assert_clean(summary: dict, kills: int) -> None:
    assert summary["violation_count"] == 0, json.dumps(summary["violations"], indent=1)
    assert summary["kills"] >= kills
    # The run really exercised what it claims to: commits returned before
    # kills, some kills landed before the writer opened, some mid-commit.
    assert summary["commits_reported"] > 0, summary
    assert summary["killed_before_open"] > 0, summary
    assert summary["killed_with_staging"] > 0, summary


def test_sigkill_append_every_reported_commit_survives(tmp_path: Path) -> None:
    # 100 kills take half the time of 200; the stress run does 2,000.
    summary = _run_zygote(tmp_path, "append", kills=100, kills_per_store=100, seed=20240601, timeout=240)
    _assert_clean(summary, 100)
    assert summary["rows_total"] > 0


def test_sigkill_overwrite_latest_row_always_whole(tmp_path: Path) -> None:
    summary = _run_zygote(tmp_path, "overwrite", kills=100, kills_per_store=100, seed=7, timeout=240)
    _assert_clean(summary, 100)


@pytest.mark.stress
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("mode", ["append", "overwrite"])
def test_sigkill_stress(tmp_path: Path, mode: str, request: pytest.FixtureRequest) -> None:
    if "stress" not in (request.config.getoption("markexpr", "") or ""):
        pytest.skip("stress run: select it with -m stress")
    summary = _run_zygote(tmp_path, mode, kills=2000, kills_per_store=100, seed=int(time.time()), timeout=3500)
    _assert_clean(summary, 2000)


# --------------------------------------------------------------------------- a real process, a big state

BIG_MODULE = r"""
from dataclasses import dataclass, field

import numpy as np


def derive(elements: int, i: int) -> np.ndarray:
    return np.arange(elements, dtype=np.float64) + i


@dataclass
class BigState:
    counter: int = 0
    data: np.ndarray = field(default_factory=lambda: np.zeros(0))
"""

BIG_WRITER = r"""
import sys, warnings
sys.path.insert(0, sys.argv[3])
import numpy as np
from restartable import Checkpoint, CheckpointCleanupWarning, bind_checkpoint_state
from restartable_crashtest_big import BigState, derive

warnings.simplefilter("ignore", CheckpointCleanupWarning)
elements = int(sys.argv[2])

with Checkpoint("big", path=sys.argv[1], mode="overwrite") as session:
    state = bind_checkpoint_state(BigState())
    i = state.counter
    if i:
        assert np.array_equal(state.data, derive(elements, i)), "restored an inconsistent state"
    print("open", i, flush=True)
    while True:
        i += 1
        state.counter = i
        state.data = derive(elements, i)
        session.write(lead_time=i)
        print("commit", i, flush=True)
"""


def _staging(store: Path) -> set[str]:
    try:
        return {n for n in os.listdir(store) if n.startswith(".staging-")}
    except FileNotFoundError:
        return set()


def _start_big_writer(store: Path, elements: int, module_dir: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BIG_WRITER, str(store), str(elements), str(module_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()
    if not first.startswith("open"):
        proc.kill()
        proc.wait()
        raise AssertionError(f"writer failed to open: {first!r}\n{proc.stderr.read()}")
    return proc, int(first.split()[1])


def test_sigkill_real_process_mid_commit_of_big_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill a plain ``python -c`` writer (no fork) while it commits a 50 MB array."""
    module_dir = tmp_path / "mod"
    module_dir.mkdir()
    (module_dir / "restartable_crashtest_big.py").write_text(BIG_MODULE)
    monkeypatch.syspath_prepend(str(module_dir))
    from restartable_crashtest_big import BigState, derive

    elements = 50 * 1024 * 1024 // 8
    store = tmp_path / "big"
    rng = random.Random(1234)
    reported = 0
    for _ in range(5):
        before = _staging(store)
        proc, restored = _start_big_writer(store, elements, module_dir)
        try:
            assert restored >= reported
            # The writer holds the lock now: every older staging dir is gone.
            assert not (_staging(store) & before)
            # Let one commit complete, wait until the next is in progress (its
            # staging dir exists), then kill somewhere inside it.
            line = proc.stdout.readline()
            assert line.startswith("commit"), f"{line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
            reported = max(reported, int(line.split()[1]))
            deadline = time.monotonic() + 60
            while not _staging(store):
                assert proc.poll() is None, f"writer died: {proc.stderr.read()}"
                assert time.monotonic() < deadline, "no commit started"
            time.sleep(rng.uniform(0.0, 0.04))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        for line in proc.stdout.read().splitlines():
            if line.startswith("commit"):
                reported = max(reported, int(line.split()[1]))
        # The catalog opens without warning (warnings are errors here); every row verifies.
        checkpoint = Checkpoint("big", path=store, mode="overwrite")
        entries = checkpoint.catalog
        for entry in entries:
            assert verify_row(entry.path) == [], entry.path
        if reported:
            assert entries and entries[-1].lead_time >= reported
        if entries:
            state = checkpoint.select(-1).bind(BigState())
            assert state.checkpoint_state_loaded
            assert state.counter == entries[-1].lead_time
            np.testing.assert_array_equal(state.data, derive(elements, state.counter))
        assert len(_staging(store)) <= 1
    assert reported >= 1, "no commit completed in five rounds; the test exercised nothing"
    # One more writer: it restores the newest row consistently (the script
    # asserts it) and removes the killed commit's staging directory.
    before = _staging(store)
    proc, restored = _start_big_writer(store, elements, module_dir)
    try:
        assert restored >= reported
        assert not (_staging(store) & before)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
