"""Multi-rank consistency: ranks killed at different points resume from one common row.

Every rank is a real process (``rank_child.py``, written to ``tmp_path``)
that binds a dataclass state, commits one row per step (``flush_interval=1``)
and reports on stdout, one line each (flushed):

* ``COMMITTED <i>`` after ``session.write(lead_time=i)`` returned;
* ``HOLD <i>`` when it reached the count it was told to die at; it then
  sleeps until this process SIGKILLs it, so that it dies with exactly that
  many rows committed;
* ``RESUMED <json>`` right after entering the checkpoint: the sequence,
  lead_time and restored state of the row it resumed from, and its catalog;
* ``SELECTED <json>`` the row ``select()`` gave, when asked to select first;
* ``AT <point>`` at a barrier: it then waits for a ``go`` line on stdin,
  which this process sends once every rank has reached that point. The
  barriers stand in for the coupling of real ranks (a rollout exchanging
  data), which the design relies on when ranks agree without collectives;
* ``WARNING <json>`` for every warning (the child shows all of them).

With ``dist`` the child joins a gloo process group (file rendezvous) before
it opens the checkpoint, so entering and ``select()`` are collective calls.

The rank processes are forked by a warm interpreter (``warm_python``) that
imported numpy, torch.distributed, s3fs and restartable once for the module:
each is still a process of its own (SIGKILL kills it alone), without paying
the imports again. The children read no environment at import time.

Step ``i`` of rank ``r`` in phase ``p`` stores ``state.step = i``,
``state.phase = p`` and ``values = arange(N) + 1000 i + 100 r + 10 p``;
since every row is one write, sequence number == lead_time == step.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from restartable import Checkpoint, CheckpointFallbackWarning
from restartable.store import LocalRowStore, RowStore, list_row_dirs, open_store, scan_rows, verify_row
from restartable.store._layout import rank_folder_name
from support import first_payload
from warm_python import WarmProcess, WarmPython

N = 6
PHASE_TIMEOUT = 60.0  # a hang guard for one phase of rank processes, not a timing assertion
NAME = "multirank"

CHILD_SOURCE = r"""
import json, os, signal, sys, time, warnings
from dataclasses import dataclass, field

import numpy as np

cfg = json.loads(sys.argv[1])
RANK, WORLD = cfg["rank"], cfg["world_size"]


def emit(kind, payload=None):
    text = kind if payload is None else kind + " " + (payload if isinstance(payload, str) else json.dumps(payload))
    print(text, flush=True)


def show(message, category, filename, lineno, file=None, line=None):
    emit("WARNING", {"category": category.__name__, "message": str(message)})


warnings.simplefilter("always")
warnings.showwarning = show


def barrier(point):
    if point in cfg.get("barriers", ()):
        emit("AT", point)
        if sys.stdin.readline().strip() != "go":
            sys.exit(3)


if cfg.get("dist"):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="file://" + cfg["rdzv"], rank=RANK, world_size=WORLD)

from restartable import Checkpoint

N = cfg["n"]


def expected(step, rank, phase):
    return np.arange(N, dtype=np.float64) + 1000.0 * step + 100.0 * rank + 10.0 * phase


@dataclass
class State:
    step: int = 0
    phase: int = 0
    values: np.ndarray = field(default_factory=lambda: np.zeros(N))


ckpt = Checkpoint(
    cfg["name"],
    path=cfg["root"],
    mode=cfg["mode"],
    history_size=cfg.get("history_size"),
    flush_interval=1,
    rank=RANK,
    world_size=WORLD,
    async_commit=cfg.get("async", False),
)

if cfg.get("select_first"):
    selected = ckpt.select()
    emit("SELECTED", {"sequence": None if selected.entry is None else selected.entry.sequence})
    barrier("selected")

with ckpt as session:
    state = session.bind(State())
    emit(
        "RESUMED",
        {
            "sequence": None if session.entry is None else session.entry.sequence,
            "lead_time": session.lead_time,
            "phase_meta": session.metadata.get("phase"),
            "step": state.step,
            "phase": state.phase,
            "values": state.values.tolist(),
            "catalog": [[e.sequence, e.all_ranks] for e in ckpt.catalog],
        },
    )
    barrier("resumed")
    start = state.step
    for i in range(start + 1, start + 1 + cfg["rows"]):
        time.sleep(cfg.get("pause", 0.0))
        state.step = i
        state.phase = cfg["phase"]
        state.values[:] = expected(i, RANK, cfg["phase"])
        entry = session.write(lead_time=i, phase=cfg["phase"])
        emit("COMMITTED", str(i))
        if entry is not None:  # None with async_commit: the row is persisted in the background
            emit("ROW", {"step": i, "sequence": entry.sequence})
        if i == cfg.get("hold_at"):
            emit("HOLD", str(i))
            while True:
                time.sleep(60)

if cfg.get("dist"):
    dist.destroy_process_group()
emit("DONE")
"""


def expected_values(step: int, rank: int, phase: int) -> list[float]:
    return (np.arange(N, dtype=np.float64) + 1000.0 * step + 100.0 * rank + 10.0 * phase).tolist()


# --------------------------------------------------------------------------- running rank processes

# What every rank child imports (s3fs for the S3 case, where installed), and no more.
PRELOAD = """
import json, os, signal, sys, time, warnings
from dataclasses import dataclass, field
import numpy
import torch.distributed
try:
    import s3fs
except ImportError:
    pass
from restartable import Checkpoint
"""


@pytest.fixture(scope="module")
def warm() -> Iterator[WarmPython]:
    with WarmPython(PRELOAD, env=dict(os.environ, OMP_NUM_THREADS="1")) as server:
        yield server


@dataclass
class RankRun:
    rank: int
    committed: list[int] = field(default_factory=list)
    sequences: dict[int, int] = field(default_factory=dict)  # step -> sequence of its row
    resumed: dict[str, Any] | None = None
    selected: dict[str, Any] | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)
    held: int | None = None
    done: bool = False
    returncode: int | None = None
    stdout: list[str] = field(default_factory=list)  # with stderr merged in

    def fallback_warnings(self) -> list[str]:
        return [w["message"] for w in self.warnings if w["category"] == "CheckpointFallbackWarning"]

    def checkpoint_warnings(self) -> list[dict[str, str]]:
        """Warnings of restartable (torch may warn about its own matters)."""
        return [w for w in self.warnings if w["category"].startswith("Checkpoint")]


def _describe(runs: dict[int, RankRun]) -> str:
    parts = []
    for rank, run in sorted(runs.items()):
        parts.append(f"--- rank {rank} (returncode {run.returncode})\nstdout and stderr:\n" + "\n".join(run.stdout))
    return "\n".join(parts)


def run_ranks(
    warm: WarmPython,
    tmp_path: Path,
    configs: list[dict[str, Any]],
    *,
    kill_at: dict[int, int] | None = None,
    timeout: float = PHASE_TIMEOUT,
) -> dict[int, RankRun]:
    """Start one process per config (forked by ``warm``), drive barriers and kills, wait for all of them.

    A rank is SIGKILLed when it prints ``HOLD``, or when it prints
    ``COMMITTED <kill_at[rank]>`` (without holding: it keeps running until
    the signal lands). Every process still alive at the end is killed. A
    child's stderr comes merged into its stdout: lines of no known kind
    are kept for the failure report only.
    """
    script = tmp_path / "rank_child.py"
    if not script.exists():
        script.write_text(CHILD_SOURCE)
    kill_at = kill_at or {}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    events: queue.Queue[tuple[int, str | None]] = queue.Queue()
    procs: dict[int, WarmProcess] = {}
    runs = {cfg["rank"]: RankRun(cfg["rank"]) for cfg in configs}
    threads = []

    def pump_stdout(rank: int, stream: Any) -> None:
        for line in stream:
            events.put((rank, line.rstrip("\n")))
        events.put((rank, None))

    try:
        for cfg in configs:
            rank = cfg["rank"]
            proc = warm.popen(
                [sys.executable, str(script), json.dumps(cfg)], env=env, cwd=tmp_path, stdin=subprocess.PIPE
            )
            procs[rank] = proc
            thread = threading.Thread(target=pump_stdout, args=(rank, proc.stdout), daemon=True)
            thread.start()
            threads.append(thread)
        barrier_counts: dict[str, set[int]] = {}
        open_ranks = set(procs)
        deadline = time.monotonic() + timeout
        while open_ranks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"rank processes did not finish within {timeout} s\n{_describe(runs)}")
            try:
                rank, line = events.get(timeout=remaining)
            except queue.Empty:
                continue
            run = runs[rank]
            if line is None:
                open_ranks.discard(rank)
                if not run.done and run.held is None and rank not in kill_at:
                    # It crashed: fail now rather than leave the others waiting at a barrier.
                    procs[rank].wait(timeout=10)
                    run.returncode = procs[rank].returncode
                    raise AssertionError(f"rank {rank} ended unexpectedly\n{_describe(runs)}")
                continue
            run.stdout.append(line)
            kind, _, rest = line.partition(" ")
            if kind == "COMMITTED":
                run.committed.append(int(rest))
                if kill_at.get(rank) == int(rest):
                    procs[rank].send_signal(signal.SIGKILL)
            elif kind == "HOLD":
                run.held = int(rest)
                procs[rank].send_signal(signal.SIGKILL)
            elif kind == "ROW":
                record = json.loads(rest)
                run.sequences[record["step"]] = record["sequence"]
            elif kind == "RESUMED":
                run.resumed = json.loads(rest)
            elif kind == "SELECTED":
                run.selected = json.loads(rest)
            elif kind == "WARNING":
                run.warnings.append(json.loads(rest))
            elif kind == "DONE":
                run.done = True
            elif kind == "AT":
                reached = barrier_counts.setdefault(rest, set())
                reached.add(rank)
                if len(reached) == len(procs):
                    for proc in procs.values():
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
        for rank, proc in procs.items():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            runs[rank].returncode = proc.returncode
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    stream.close()
        for thread in threads:
            thread.join(timeout=5)
    return runs


def config(
    root: Path | str, rank: int, world_size: int, mode: str, history_size: int | None, **extra: Any
) -> dict[str, Any]:
    cfg = {
        "name": NAME,
        "root": str(root),
        "rank": rank,
        "world_size": world_size,
        "mode": mode,
        "history_size": history_size,
        "n": N,
        "rows": 0,
        "phase": 1,
    }
    cfg.update(extra)
    return cfg


def rank_store(root: Path | str, rank: int) -> RowStore:
    return open_store(root).child(rank_folder_name(rank))


def rows_on_disk(root: Path | str, rank: int) -> list[int]:
    """Sequence numbers of the rows of a rank (names only)."""
    return [sequence for sequence, _ in rank_store(root, rank).list_rows()]


def catalog_of(root: Path | str, rank: int, world_size: int) -> dict[int, Any]:
    return {entry.sequence: entry for entry in Checkpoint(NAME, path=root, rank=rank, world_size=world_size).catalog}


def assert_finished(runs: dict[int, RankRun], killed: set[int] = frozenset()) -> None:
    for rank, run in runs.items():
        if rank in killed:
            assert run.returncode == -signal.SIGKILL, _describe(runs)
        else:
            assert run.returncode == 0 and run.done, _describe(runs)


def assert_resumed(run: RankRun, sequence: int, phase: int, runs: dict[int, RankRun]) -> None:
    """The rank resumed from row ``sequence`` with exactly the state it wrote there in ``phase``."""
    resumed = run.resumed
    assert resumed is not None, _describe(runs)
    where = f"rank {run.rank}: {resumed}"
    assert resumed["sequence"] == sequence, where
    assert resumed["lead_time"] == sequence, where
    assert resumed["step"] == sequence, where
    assert resumed["phase"] == phase and resumed["phase_meta"] == phase, where
    assert resumed["values"] == expected_values(sequence, run.rank, phase), where
    catalog = dict((seq, flag) for seq, flag in resumed["catalog"])
    assert max(catalog) == sequence, f"rows newer than the agreed one were kept: {where}"
    assert catalog[sequence] is True, where


def rdzv(tmp_path: Path, label: str) -> str:
    return str(tmp_path / f"rdzv-{label}")


# --------------------------------------------------------------------------- 1 + 2: kill, restart, continue, restart


KILL_COUNTS = {0: 3, 1: 5, 2: 6, 3: 8}


# The default run keeps one case of each retention mode, each backend and
# each way ranks agree: overwrite and append (history 2) retention, local
# folders and S3 prefixes, agreement read from the shared path and by
# collectives. The other combinations are the stress run's.
@pytest.mark.parametrize(
    ("backend", "mode", "history_size", "dist"),
    [
        pytest.param("local", "overwrite", None, False, id="overwrite-shared-path"),
        pytest.param("local", "append", 2, True, id="append-history2-torch-distributed"),
        pytest.param("s3", "append", 2, False, id="s3-append-history2-shared-path"),
        pytest.param("local", "overwrite", None, True, id="overwrite-torch-distributed", marks=pytest.mark.stress),
        pytest.param("local", "append", 2, False, id="append-history2-shared-path", marks=pytest.mark.stress),
        pytest.param("s3", "append", 2, True, id="s3-append-history2-torch-distributed", marks=pytest.mark.stress),
    ],
)
def test_ranks_killed_at_different_points_resume_from_the_newest_common_row(
    warm: WarmPython,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    backend: str,
    mode: str,
    history_size: int | None,
    dist: bool,
) -> None:
    # On S3 (moto's server) the ranks' prefixes take the place of their
    # folders: the agreement and HEAD are store operations, the same on both.
    root: Path | str = tmp_path / "store" if backend == "local" else f"{request.getfixturevalue('s3_bucket')}/store"
    world = len(KILL_COUNTS)
    common = min(KILL_COUNTS.values())

    # Phase 1: every rank commits until its own count, then is SIGKILLed.
    runs = run_ranks(
        warm,
        tmp_path,
        [
            config(root, rank, world, mode, history_size, rows=20, hold_at=count, dist=dist, rdzv=rdzv(tmp_path, "1"))
            for rank, count in KILL_COUNTS.items()
        ],
    )
    assert_finished(runs, killed=set(KILL_COUNTS))
    for rank, count in KILL_COUNTS.items():
        assert runs[rank].committed == list(range(1, count + 1)), _describe(runs)
        assert runs[rank].checkpoint_warnings() == [], _describe(runs)
        on_disk = rows_on_disk(root, rank)
        # Retention never retired the newest common row or anything newer.
        assert set(range(common, count + 1)) <= set(on_disk), (rank, on_disk)
        assert max(on_disk) == count
        assert rank_store(root, rank).read_head() == count

    # Phase 2: restart every rank; all resume from the newest row every rank
    # committed, then commit two more rows. The ranks wait for each other
    # after entering (coupled ranks would, by their data exchange): each
    # reports its catalog, whose all-ranks flags read the other ranks'
    # folders, before any rank writes. Without that wait a rank slow to
    # report could find the common row already retired by a faster rank
    # (legitimately, once every rank's HEAD is past it) and the flags would
    # depend on scheduling. With collectives, entering is still collective.
    runs = run_ranks(
        warm,
        tmp_path,
        [
            config(
                root,
                rank,
                world,
                mode,
                history_size,
                rows=2,
                phase=2,
                dist=dist,
                rdzv=rdzv(tmp_path, "2"),
                barriers=["resumed"],
            )
            for rank in range(world)
        ],
    )
    assert_finished(runs)
    for rank in range(world):
        assert_resumed(runs[rank], common, phase=1, runs=runs)
        assert runs[rank].committed == [common + 1, common + 2], _describe(runs)
        # The new rows got sequence common+1, common+2 on every rank.
        assert runs[rank].sequences == {common + 1: common + 1, common + 2: common + 2}, _describe(runs)
        unexpected = [
            message
            for message in runs[rank].fallback_warnings()
            # Without collectives a rank may scan another while it retires its
            # newer rows (see test_restart_retires_newest_first_...).
            if dist or "is damaged or missing" not in message
        ]
        assert unexpected == [], _describe(runs)
    for rank in range(world):
        catalog = catalog_of(root, rank, world)
        # The rows beyond the agreed one were retired: every row newer than it
        # is one of the two just written.
        assert max(catalog) == common + 2, (rank, sorted(catalog))
        assert {seq: catalog[seq].metadata["phase"] for seq in catalog if seq > common}.items() <= {
            common + 1: 2,
            common + 2: 2,
        }.items(), (rank, sorted(catalog))
        if mode == "append":
            assert set(catalog) >= {common + 1, common + 2}
        assert all(catalog[seq].metadata["phase"] == 1 for seq in catalog if seq <= common)
        assert rank_store(root, rank).read_head() == common + 2

    # Phase 3: restart again; every rank resumes from the new newest row.
    runs = run_ranks(
        warm,
        tmp_path,
        [config(root, rank, world, mode, history_size, dist=dist, rdzv=rdzv(tmp_path, "3")) for rank in range(world)],
    )
    assert_finished(runs)
    for rank in range(world):
        assert_resumed(runs[rank], common + 2, phase=2, runs=runs)
        assert runs[rank].checkpoint_warnings() == [], _describe(runs)


# --------------------------------------------------------------------------- 3: a damaged common row


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("dist", [False, True], ids=["shared-path", "torch-distributed"])
def test_damaged_newest_common_row_on_one_rank_makes_every_rank_fall_back(
    warm: WarmPython, tmp_path: Path, dist: bool
) -> None:
    root = tmp_path / "store"
    world, rows, damaged_rank = 4, 4, 2
    mode, history = "append", 3
    runs = run_ranks(warm, tmp_path, [config(root, rank, world, mode, history, rows=rows) for rank in range(world)])
    assert_finished(runs)
    for rank in range(world):
        assert set(range(rows - history + 1, rows + 1)) <= set(rows_on_disk(root, rank))

    row = dict(list_row_dirs(root / f"rank_{damaged_rank:06d}"))[rows]
    payload = first_payload(row)
    size = payload.stat().st_size
    flip_last_byte(payload)
    assert payload.stat().st_size == size
    assert verify_row(row), "the flipped byte must make the row fail verification"
    # Manifest and sizes still check out: only the payload checksum tells.
    assert rows in {r.sequence for r in scan_rows(root / f"rank_{damaged_rank:06d}").rows}

    runs = run_ranks(
        warm,
        tmp_path,
        [
            config(
                root,
                rank,
                world,
                mode,
                history,
                rows=1,
                phase=2,
                dist=dist,
                rdzv=rdzv(tmp_path, "d"),
                select_first=True,
                barriers=["selected", "resumed"],
            )
            for rank in range(world)
        ],
    )
    assert_finished(runs)
    for rank in range(world):
        run = runs[rank]
        # select() (no rank has retired anything yet: the barrier follows it)
        # gives the previous common row on every rank, with a warning naming
        # the damaged rank and row.
        assert run.selected == {"sequence": rows - 1}, _describe(runs)
        warned = run.fallback_warnings()
        names_it = [
            message
            for message in warned
            if f"row {rows} of rank {damaged_rank} " in message or f"rank {damaged_rank} row {rows} " in message
        ]
        assert any(f"row {rows} of rank {damaged_rank} " in message for message in warned), _describe(runs)
        if dist:
            # Entering gathers every rank's view before any rank retires:
            # every rank warns again on entering.
            assert len(names_it) >= 2, _describe(runs)
        # No other rank is blamed.
        for other in set(range(world)) - {damaged_rank}:
            assert not any(f"rank {other}" in message for message in warned), _describe(runs)
        assert_resumed(run, rows - 1, phase=1, runs=runs)
        assert run.committed == [rows], _describe(runs)
    for rank in range(world):
        catalog = catalog_of(root, rank, world)
        assert max(catalog) == rows
        assert catalog[rows].metadata["phase"] == 2, rank
        assert verify_row(catalog[rows].path) == []


# --------------------------------------------------------------------------- 4: retention keeps the common row


def test_overwrite_retention_keeps_rows_from_the_slowest_ranks_head(warm: WarmPython, tmp_path: Path) -> None:
    root = tmp_path / "store"
    world = 2
    runs = run_ranks(warm, tmp_path, [config(root, 1, world, "overwrite", None, rows=2)])
    assert_finished(runs)
    runs = run_ranks(warm, tmp_path, [config(root, 0, world, "overwrite", None, rows=6)])
    assert_finished(runs)
    assert LocalRowStore(root / "rank_000001").read_head() == 2
    assert LocalRowStore(root / "rank_000000").read_head() == 6
    # Nothing at or above rank 1's HEAD (2) was retired on rank 0; row 1 was.
    assert rows_on_disk(root, 0) == [2, 3, 4, 5, 6]
    # Rank 1 ran while rank 0 had no HEAD: it counted as 0, so nothing was retired.
    assert rows_on_disk(root, 1) == [1, 2]

    # Restart one after the other (rank 0 retires rows 3-6 on entering; a
    # rank scanning its folder at that moment could see a passing gap).
    for rank in (1, 0):
        runs = run_ranks(warm, tmp_path, [config(root, rank, world, "overwrite", None)])
        assert_finished(runs)
        assert_resumed(runs[rank], 2, phase=1, runs=runs)
        assert runs[rank].checkpoint_warnings() == [], _describe(runs)
    assert rows_on_disk(root, 0) == [2]
    assert rows_on_disk(root, 1) == [1, 2]


# --------------------------------------------------------------------------- 5: catalog flags and positions


def _commit_in_process(root: Path, rank: int, world_size: int, rows: int, mode: str = "append") -> None:
    with Checkpoint(NAME, path=root, mode=mode, rank=rank, world_size=world_size) as session:
        start = session.lead_time or 0
        for step in range(start + 1, start + 1 + rows):
            session.write(lead_time=step, rank=rank)


@pytest.fixture
def uneven_ranks(tmp_path: Path) -> Path:
    """Three ranks: rank 0 rows 1-4, rank 1 rows 2-3 (row 1 deleted), rank 2 rows 1-5."""
    root = tmp_path / "store"
    for rank, rows in ((0, 4), (1, 3), (2, 5)):
        _commit_in_process(root, rank, 3, rows)
    shutil.rmtree(dict(list_row_dirs(root / "rank_000001"))[1])
    return root


def test_catalog_flags_rows_that_every_rank_holds(uneven_ranks: Path) -> None:
    flags = {
        rank: [
            (entry.sequence, entry.all_ranks)
            for entry in Checkpoint(NAME, path=uneven_ranks, rank=rank, world_size=3).catalog
        ]
        for rank in range(3)
    }
    assert flags == {
        0: [(1, False), (2, True), (3, True), (4, False)],
        1: [(2, True), (3, True)],
        2: [(1, False), (2, True), (3, True), (4, False), (5, False)],
    }
    # A serial catalog has no such flag.
    serial = uneven_ranks.parent / "serial"
    _commit_in_process(serial, 0, 1, 2)
    assert [entry.all_ranks for entry in Checkpoint(NAME, path=serial).catalog] == [None, None]


def test_select_positions_count_rows_common_to_every_rank(uneven_ranks: Path) -> None:
    for rank in range(3):
        checkpoint = Checkpoint(NAME, path=uneven_ranks, rank=rank, world_size=3)
        for position, sequence in ((0, 2), (1, 3), (-1, 3), (-2, 2), (None, 3)):
            session = checkpoint.select(position)
            assert session.entry.sequence == sequence, (rank, position)
            assert session.lead_time == sequence
            assert session.entry.rank == rank
            assert session.metadata["rank"] == rank
        for position in (2, -3):
            with pytest.raises(IndexError, match="common to every rank"):
                checkpoint.select(position)
    # Selecting reads: nothing was retired.
    assert rows_on_disk(uneven_ranks, 2) == [1, 2, 3, 4, 5]
    # Entering retires rank 2's rows beyond the common one and numbers the next row after it.
    with Checkpoint(NAME, path=uneven_ranks, mode="append", rank=2, world_size=3) as session:
        assert session.entry.sequence == 3
        assert session.write(lead_time=33).sequence == 4
    assert rows_on_disk(uneven_ranks, 2) == [1, 2, 3, 4]


def test_damaged_row_above_the_common_one_is_warned_about(tmp_path: Path) -> None:
    root = tmp_path / "store"
    for rank in range(2):
        _commit_in_process(root, rank, 2, 4)
    manifest = dict(list_row_dirs(root / "rank_000001"))[4] / "manifest.json"
    flip_last_byte(manifest)
    # Rank 1's row 4 no longer counts as whole: 3 is the newest common row.
    checkpoint = Checkpoint(NAME, path=root, mode="append", rank=0, world_size=2)
    with pytest.warns(
        CheckpointFallbackWarning, match=r"rank 1 row 4 of .* is damaged or missing; every rank falls back to row 3"
    ):
        assert checkpoint.select().entry.sequence == 3
    # The catalog flag reads names only: rank 1's folder does hold a row 4.
    assert [(entry.sequence, entry.all_ranks) for entry in checkpoint.catalog] == [
        (1, True),
        (2, True),
        (3, True),
        (4, True),
    ]
    with pytest.warns(CheckpointFallbackWarning, match=r"rank 1 row 4 of .* is damaged or missing"):
        with checkpoint as session:
            assert session.entry.sequence == 3
            assert session.write(lead_time=40).sequence == 4
    assert rows_on_disk(root, 0) == [1, 2, 3, 4]
    assert checkpoint.catalog[-1].lead_time == 40


def test_writing_from_a_selected_session_keeps_ranks_aligned(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _commit_in_process(root, 0, 2, 3)
    _commit_in_process(root, 1, 2, 5)
    # Both ranks select the common row before either writes (as ranks running together would).
    sessions = {rank: Checkpoint(NAME, path=root, mode="append", rank=rank, world_size=2).select() for rank in range(2)}
    assert {rank: session.entry.sequence for rank, session in sessions.items()} == {0: 3, 1: 3}
    written = {}
    for rank, session in sessions.items():
        with session:
            written[rank] = session.write(lead_time=100).sequence
    assert written == {0: 4, 1: 4}


# --------------------------------------------------------------------------- retire order


def test_restart_retires_newest_first_so_no_reader_sees_a_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    # Killed at rows 2, 5 and 3: the agreed row is 2.
    for rank, rows in ((0, 2), (1, 5), (2, 3)):
        _commit_in_process(root, rank, 3, rows)
    import restartable.store.writer as writer_module

    real_rename = os.rename
    seen: list[list[int]] = []

    caught: list[warnings.WarningMessage] = []

    def rename_then_look(src: Any, dst: Any) -> None:
        real_rename(src, dst)
        if Path(src).parent.name == "commits" and Path(src).parent.parent.name == "rank_000001" and not seen:
            # Rank 0 agrees now, while rank 1 is part way through retiring its rows 3-5
            # (rank 2, not restarted yet, still has its row 3).
            seen.append(rows_on_disk(root, 1))
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                selected = Checkpoint(NAME, path=root, rank=0, world_size=3).select()
            caught.extend(record)
            assert selected.entry.sequence == 2

    monkeypatch.setattr(writer_module.os, "rename", rename_then_look)
    with Checkpoint(NAME, path=root, mode="append", rank=1, world_size=3) as session:
        assert session.entry.sequence == 2
    assert seen, "rank 1 retired nothing"
    assert rows_on_disk(root, 1) == [1, 2]
    # Rows 3-5 of rank 1 are a future rank 0 never reached, being retired: not damage.
    assert [str(w.message) for w in caught if issubclass(w.category, CheckpointFallbackWarning)] == []


# --------------------------------------------------------------------------- 6: async commits


def test_async_commits_killed_mid_run_resume_on_the_same_row(warm: WarmPython, tmp_path: Path) -> None:
    root = tmp_path / "store"
    world = 2
    kill_at = {0: 3, 1: 6}
    runs = run_ranks(
        warm,
        tmp_path,
        [
            config(root, rank, world, "overwrite", None, rows=400, pause=0.005, **{"async": True})
            for rank in range(world)
        ],
        kill_at=kill_at,
    )
    assert_finished(runs, killed={0, 1})
    newest = {}
    for rank, count in kill_at.items():
        assert runs[rank].committed[:count] == list(range(1, count + 1)), _describe(runs)
        whole = [row.sequence for row in scan_rows(root / f"rank_{rank:06d}").rows]
        # write(i) returned: its snapshot was taken, so row i-1 is durable.
        assert max(whole) >= count - 1, (rank, whole)
        newest[rank] = max(whole)
    common = min(newest.values())
    for rank in range(world):
        assert common in {row.sequence for row in scan_rows(root / f"rank_{rank:06d}").rows}, rank

    runs = run_ranks(
        warm,
        tmp_path,
        [
            config(root, rank, world, "overwrite", None, rows=2, phase=2, barriers=["resumed"], **{"async": True})
            for rank in range(world)
        ],
    )
    assert_finished(runs)
    for rank in range(world):
        assert_resumed(runs[rank], common, phase=1, runs=runs)
        # A kill during a background persist leaves a staging directory: only cleanup may be reported.
        assert {w["category"] for w in runs[rank].checkpoint_warnings()} <= {"CheckpointCleanupWarning"}, _describe(
            runs
        )
    for rank in range(world):
        catalog = catalog_of(root, rank, world)
        assert max(catalog) == common + 2
        assert all(catalog[seq].metadata["phase"] == 2 for seq in catalog if seq > common), (rank, sorted(catalog))
