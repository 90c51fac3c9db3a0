"""The ensemble workflow spread over ranks: real processes, real Zarr stores, real tensors.

``ensemble(..., checkpoint=Checkpoint(..., rank=r, world_size=W))`` runs
member batch ``b`` on rank ``b % W``; each rank writes only its own members
into its own IO, draws the noise of the batches it skips (so that every
member gets the noise of a single-process run) and resumes from its own
newest row.

The workflow tests compare with run A: the same ensemble, uninterrupted,
in one process, without a checkpoint. Rank runs are separate processes started
together (one per rank). A rank process logs every IO write and every step
its model yields as one JSON line on stdout (flushed); to kill it at an
exact point it announces that it holds there and sleeps until this process
SIGKILLs it. Then every rank is started again with the same arguments and
must finish the ensemble so that, for every member, the rank owning it has
written exactly (bitwise) what run A wrote, and no other member.

The rank processes are forked by a warm interpreter (``warm_python``) that
imported numpy, torch, zarr and restartable's components and workflows
once for the module: each is a process of its own (SIGKILL kills it
alone) that does not pay those imports again.

A restart with another world size must be refused before anything is
written. The last test guards a false damage warning first seen in
``benchmarks/bench_multirank.py``.
"""

from __future__ import annotations

import contextvars
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from restartable import Checkpoint, CheckpointWorldSizeError
from restartable.components import GaussianPerturbation, Lorenz96, MemoryIO, Persistence, SyntheticData, ZarrIO
from restartable.workflows import ensemble
from warm_python import XARRAY_WARMUP, WarmPython

NLAT, NLON = 4, 8
NSTEPS = 4
STEP_HOURS = 6
LEADS = [STEP_HOURS * i for i in range(NSTEPS + 1)]  # 0, 6, ..., 24 hours
TIME = ["2024-01-01T00:00"]
STD, PSEED = 0.5, 7
VARIABLES = ("u10m", "v10m")
COORDS = ("ensemble", "time", "lead_time", "lat", "lon")
CHILD_TIMEOUT = 180  # a hang guard, not a timing assertion
ALLOWED_WARNINGS = {"CheckpointLateBindWarning", "CheckpointCleanupWarning"}

# --------------------------------------------------------------------------- the rank process

CHILD_SOURCE = r'''
"""Runs the ensemble jobs given as JSON in argv[1], one after the other, each in a fresh context."""
import contextvars, json, os, sys, time, warnings

import numpy as np

from restartable import Checkpoint
from restartable.components import GaussianPerturbation, Lorenz96, Persistence, SyntheticData, ZarrIO
from restartable.workflows import ensemble

HOUR = np.timedelta64(1, "h")


def emit(**record):
    print(json.dumps(record), flush=True)


def hours(value):
    return None if value is None else int(np.asarray(value).reshape(-1)[-1] / HOUR)


def where(coords):
    return {"members": [int(m) for m in np.asarray(coords["ensemble"])], "lead": hours(coords["lead_time"])}


def hold(job, **what):
    """Tell the parent where we are, then wait for its SIGKILL."""
    emit(job=job["job"], event="hold", **what)
    time.sleep(600)
    os._exit(3)  # never reached in a passing test


def run(job):
    kill = job.get("kill") or [None, None]
    data = SyntheticData(job["nlat"], job["nlon"], seed=0)
    entries = Checkpoint("ens", path=job["ckpt"], rank=job["rank"], world_size=job["world_size"]).catalog
    last = entries[-1] if entries else None
    emit(
        job=job["job"],
        event="start",
        exists=last is not None,
        completed=None if last is None else last.metadata.get("completed_ensembles"),
        lead=None if last is None else hours(last.lead_time),
        pinned=None if last is None else last.pinned,
    )
    # The checkpoint first: components constructed now bind to it and are
    # restored when the workflow enters it.
    ckpt = Checkpoint(
        "ens", path=job["ckpt"], rank=job["rank"], world_size=job["world_size"],
        mode=job["mode"], flush_interval=job["flush_interval"], level=job["level"],
    )
    base = Lorenz96 if job["model"] == "lorenz96" else Persistence

    class Model(base):
        def create_iterator(self, x, coords):
            for item in super().create_iterator(x, coords):
                emit(job=job["job"], event="yield", **where(item[1]))
                yield item

    class Perturbation(GaussianPerturbation):
        draws = 0

        def __call__(self, x, coords):
            self.draws += 1
            if kill == ["draw", self.draws]:
                hold(job, draw=self.draws)
            return super().__call__(x, coords)

    class IO(ZarrIO):
        writes = 0

        def write(self, x, coords, names):
            self.writes += 1
            if job.get("pace"):
                time.sleep(job["pace"])  # the previous write's commit is done; a kill now lands between writes
            if kill == ["before", self.writes]:
                hold(job, write=self.writes)
            super().write(x, coords, names)
            emit(job=job["job"], event="write", n=self.writes, **where(coords))
            if kill == ["after", self.writes] or self.writes == job.get("hold_after"):
                hold(job, write=self.writes)

    if base is Persistence:
        model = Model(["u10m", "v10m"], lat=data.lat, lon=data.lon)
    else:
        model = Model(lat=data.lat, lon=data.lon)
    pert = Perturbation(job["std"], job["pseed"])
    io = IO(job["zarr"])
    ensemble(job["time"], job["nsteps"], job["nensemble"], model, data, io, pert,
             batch_size=job["batch_size"], verbose=False, checkpoint=ckpt)


def run_job(job):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run(job)
            error = None
        except Exception as exc:
            error = {"type": type(exc).__name__, "message": str(exc)}
    emit(job=job["job"], event="done", error=error, warnings=[[w.category.__name__, str(w.message)] for w in caught])


if __name__ == "__main__":
    for job in json.loads(sys.argv[1]):
        contextvars.Context().run(run_job, job)
'''


# What every rank child imports, and no more (zarr: ZarrIO imports it when it opens a store).
PRELOAD = (
    """
import contextvars, json, os, sys, time, warnings
import numpy
import torch
import zarr
from restartable import Checkpoint
from restartable.components import GaussianPerturbation, Lorenz96, Persistence, SyntheticData, ZarrIO
from restartable.workflows import ensemble
"""
    + XARRAY_WARMUP
)  # SyntheticData makes DataArrays


@pytest.fixture(scope="module")
def warm() -> Iterator[WarmPython]:
    with WarmPython(PRELOAD, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1")) as server:
        yield server


class Child:
    """The script rank processes run, and the warm interpreter that forks them."""

    def __init__(self, script: Path, warm: WarmPython) -> None:
        self.script, self.warm = script, warm


@pytest.fixture
def child(tmp_path: Path, warm: WarmPython) -> Child:
    path = tmp_path / "rankchild.py"
    path.write_text(CHILD_SOURCE, encoding="utf-8")
    return Child(path, warm)


class RankProcess:
    """One rank's process; its stdout (one JSON record a line, stderr merged in) is read while it runs.

    A reader thread keeps the lines and notifies ``changed`` (shared by the
    ranks started together) at each line and at the end of the output.
    """

    def __init__(self, child: Child, jobs: list[dict[str, Any]], changed: threading.Condition) -> None:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        self.changed = changed
        self.lines: list[str] = []
        self.proc = child.warm.popen([sys.executable, str(child.script), json.dumps(jobs)], env=env)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout as stream:
            for line in stream:
                with self.changed:
                    self.lines.append(line.rstrip("\n"))
                    self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait(self, timeout: float) -> int:
        """Wait for the process to end and its output to be read in full."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        return code

    def records(self) -> list[dict[str, Any]]:
        with self.changed:
            lines = list(self.lines)
        return [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]

    def events(self, event: str, job: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["event"] == event and (job is None or r["job"] == job)]

    def writes(self, job: str) -> list[tuple[tuple[int, ...], int]]:
        return [(tuple(r["members"]), r["lead"]) for r in self.events("write", job)]

    def yields(self, job: str) -> list[tuple[tuple[int, ...], int]]:
        return [(tuple(r["members"]), r["lead"]) for r in self.events("yield", job)]

    def start(self, job: str) -> dict[str, Any]:
        found = self.events("start", job)
        assert found, f"no start record for {job}\n{self}"
        return found[-1]

    def __str__(self) -> str:
        with self.changed:
            text = "\n".join(self.lines)
        return f"rc={self.proc.returncode}\nstdout and stderr:\n{text[-6000:]}"


def _start_ranks(child: Child, jobs: list[list[dict[str, Any]]]) -> list[RankProcess]:
    """Start one process per rank, all at once (``jobs[rank]`` is that rank's job list)."""
    changed = threading.Condition()
    return [RankProcess(child, rank_jobs, changed) for rank_jobs in jobs]


def _wait_all_ok(procs: list[RankProcess]) -> None:
    """Every rank process ends with status 0 and every job of it reports no error and no unexpected warning."""
    for proc in procs:
        proc.wait(timeout=CHILD_TIMEOUT)
    for rank, proc in enumerate(procs):
        assert proc.proc.returncode == 0, f"rank {rank}: {proc}"
        done = proc.events("done")
        assert done, f"rank {rank}: {proc}"
        for record in done:
            assert record["error"] is None, f"rank {rank} job {record['job']}: {record['error']}\n{proc}"
            unexpected = [w for w in record["warnings"] if w[0] not in ALLOWED_WARNINGS]
            assert unexpected == [], f"rank {rank} job {record['job']}: {unexpected}"


def _kill_when(procs: list[RankProcess], ready: Callable[[int, RankProcess], bool | float]) -> None:
    """SIGKILL each rank process as soon as ``ready(rank, proc)``; every one must still be running then.

    ``ready`` is asked again at each line a rank prints; it returns True (kill
    it now), False (not yet), or a ``time.monotonic()`` moment to ask again at.
    """
    pending = set(range(len(procs)))
    deadline = time.monotonic() + CHILD_TIMEOUT
    changed = procs[0].changed
    with changed:
        while pending:
            wake = deadline
            for rank in sorted(pending):
                proc = procs[rank]
                answer = ready(rank, proc)
                if answer is True:
                    proc.proc.kill()
                    pending.discard(rank)
                elif proc.proc.poll() is not None:
                    for other in pending - {rank}:
                        procs[other].proc.kill()
                    raise AssertionError(f"rank {rank} ended before it was killed:\n{proc}")
                elif answer is not False:
                    wake = min(wake, answer)
            if not pending:
                break
            if time.monotonic() > deadline:
                for rank in pending:
                    procs[rank].proc.kill()
                raise AssertionError(f"ranks {sorted(pending)} made no progress")
            # Every line a rank prints notifies, and so does the end of its output.
            changed.wait(timeout=max(0.0, wake - time.monotonic()))
    for proc in procs:
        proc.wait(timeout=CHILD_TIMEOUT)
    for rank, proc in enumerate(procs):
        assert proc.proc.returncode == -signal.SIGKILL, f"rank {rank}: {proc}"


# --------------------------------------------------------------------------- run A and comparisons


def _model(name: str, data: SyntheticData) -> Any:
    if name == "persistence":
        return Persistence(list(VARIABLES), lat=data.lat, lon=data.lon)
    return Lorenz96(lat=data.lat, lon=data.lon)


def _read_store(path: Path) -> dict[str, np.ndarray]:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(array[...]) for name, array in root.arrays()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int, int], dict[str, np.ndarray]]:
    """Run A: the ensemble in this process, uninterrupted, no checkpoint, into a Zarr store (cached per shape)."""
    cache: dict[tuple[str, int, int], dict[str, np.ndarray]] = {}

    def get(model: str, nensemble: int, batch_size: int) -> dict[str, np.ndarray]:
        key = (model, nensemble, batch_size)
        if key not in cache:
            path = tmp_path_factory.mktemp("run-a") / f"{model}-n{nensemble}-b{batch_size}.zarr"

            def go() -> None:
                data = SyntheticData(NLAT, NLON, seed=0)
                pert = GaussianPerturbation(STD, PSEED)
                ensemble(
                    TIME,
                    NSTEPS,
                    nensemble,
                    _model(model, data),
                    data,
                    ZarrIO(path),
                    pert,
                    batch_size=batch_size,
                    verbose=False,
                )

            contextvars.Context().run(go)
            arrays = _read_store(path)
            for name in VARIABLES:
                values = arrays[name]
                assert values.dtype == np.float32 and values.shape == (nensemble, 1, len(LEADS), NLAT, NLON)
                assert not np.isnan(values).any(), f"run A {name} is incomplete"
            # The members differ from each other: the noise reached every one.
            assert len({arrays["u10m"][m].tobytes() for m in range(nensemble)}) == nensemble
            cache[key] = arrays
        return cache[key]

    return get


def _batches(nensemble: int, batch_size: int) -> list[tuple[int, ...]]:
    return [tuple(range(first, min(first + batch_size, nensemble))) for first in range(0, nensemble, batch_size)]


def _owned(rank: int, world_size: int, nensemble: int, batch_size: int) -> list[tuple[int, ...]]:
    return [batch for b, batch in enumerate(_batches(nensemble, batch_size)) if b % world_size == rank]


def _rank_writes(rank: int, world_size: int, nensemble: int, batch_size: int) -> list[tuple[tuple[int, ...], int]]:
    """Every IO write of one rank, in order, in an uninterrupted run."""
    return [(batch, lead) for batch in _owned(rank, world_size, nensemble, batch_size) for lead in LEADS]


def assert_rank_store(
    path: Path, rank: int, world_size: int, nensemble: int, batch_size: int, expected: dict[str, np.ndarray]
) -> None:
    """The rank's members are bitwise those of run A; every other member is unwritten (NaN)."""
    got = _read_store(path)
    assert sorted(got) == sorted(expected), f"rank {rank}: arrays {sorted(got)} != {sorted(expected)}"
    for name in COORDS:
        assert got[name].dtype == expected[name].dtype and got[name].tobytes() == expected[name].tobytes(), (
            f"rank {rank}: coordinate {name}"
        )
    mine = {m for batch in _owned(rank, world_size, nensemble, batch_size) for m in batch}
    for name in VARIABLES:
        a, e = got[name], expected[name]
        assert a.dtype == e.dtype and a.shape == e.shape, (
            f"rank {rank} {name}: {a.dtype}{a.shape} != {e.dtype}{e.shape}"
        )
        for member in range(nensemble):
            if member in mine:
                assert a[member].tobytes() == e[member].tobytes(), (
                    f"rank {rank} {name}: member {member} differs from the single-process run"
                )
            else:
                assert np.isnan(a[member]).all(), (
                    f"rank {rank} {name}: member {member} belongs to another rank but was written"
                )


def _job(
    job: str, rank: int, world_size: int, tmp: Path, model: str, nensemble: int, batch_size: int, **extra: Any
) -> dict[str, Any]:
    spec = {
        "job": job,
        "rank": rank,
        "world_size": world_size,
        "model": model,
        "nensemble": nensemble,
        "batch_size": batch_size,
        "zarr": str(tmp / f"{model}-n{nensemble}-b{batch_size}-rank{rank}.zarr"),
        "ckpt": str(tmp / f"ckpt-{model}-n{nensemble}-b{batch_size}"),
        "level": 2,
        "mode": "overwrite",
        "flush_interval": 1,
        "nlat": NLAT,
        "nlon": NLON,
        "nsteps": NSTEPS,
        "time": TIME,
        "std": STD,
        "pseed": PSEED,
    }
    spec.update(extra)
    return spec


# --------------------------------------------------------------------------- uninterrupted


# (nensemble, batch_size) per world size: ranks owning different numbers of
# batches, a batch size that does not divide the ensemble (a short last
# batch), and, at 4 ranks, a rank that owns no batch. Batches of one member
# are the kill-and-resume tests' (below).
SHAPES = {2: [(6, 2), (5, 4)], 4: [(6, 2)]}


@pytest.mark.parametrize("world_size", [2, 4])
def test_each_rank_writes_exactly_its_members_of_the_single_process_ensemble(
    world_size: int, child: Child, tmp_path: Path, reference: Any
) -> None:
    # Lorenz96 (level-2 state) and Persistence (none), every shape; each rank
    # process runs them all, then all again (a rerun of a completed run).
    runs = [(model, n, b) for model in ("lorenz96", "persistence") for n, b in SHAPES[world_size]]
    jobs = [
        [
            _job(f"{phase}-{model}-n{n}b{b}", rank, world_size, tmp_path, model, n, b)
            for phase in ("run", "again")
            for model, n, b in runs
        ]
        for rank in range(world_size)
    ]
    procs = _start_ranks(child, jobs)
    _wait_all_ok(procs)
    for index, (model, n, b) in enumerate(runs):
        expected = reference(model, n, b)
        for rank, proc in enumerate(procs):
            job, again = jobs[rank][index], jobs[rank][index + len(runs)]
            assert proc.start(job["job"])["exists"] is False
            # Each rank writes its own batches, every lead time once, in order
            # (nothing at all for a rank that owns no batch).
            assert proc.writes(job["job"]) == _rank_writes(rank, world_size, n, b), f"rank {rank} {job['job']}"
            # Run again, the completed ensemble writes nothing.
            own = [member for batch in _owned(rank, world_size, n, b) for member in batch]
            # (A rank that owns no batch commits no row.)
            assert (proc.start(again["job"])["completed"] or []) == own, f"rank {rank} {again['job']}"
            assert proc.writes(again["job"]) == [], f"rank {rank} {again['job']}"
            assert_rank_store(Path(job["zarr"]), rank, world_size, n, b, expected)


# --------------------------------------------------------------------------- killed and resumed


class KillCase:
    """``kills[rank]`` is where that rank's process holds until SIGKILLed:

    - ``("after", k)``: its k-th IO write is in the store, not yet committed;
    - ``("before", k)``: in its k-th IO write, before writing anything;
    - ``("draw", j)``: in the j-th perturbation draw (its own batches and the
      ones it skips count alike), after its last write was committed.
    """

    def __init__(
        self,
        id: str,
        world_size: int,
        model: str,
        nensemble: int,
        batch_size: int,
        kills: list[tuple[str, int]],
        level: int = 2,
        mode: str = "overwrite",
    ) -> None:
        assert len(kills) == world_size
        self.id, self.world_size, self.model = id, world_size, model
        self.nensemble, self.batch_size, self.kills, self.level, self.mode = nensemble, batch_size, kills, level, mode

    def committed(self, rank: int, before_kill: list[Any]) -> int:
        """How many of the rank's writes were committed when it was killed (flush_interval=1)."""
        kind, k = self.kills[rank]
        return k - 1 if kind in ("before", "after") else len(before_kill)


L = len(LEADS)  # writes per batch
KILL_CASES = [
    # rank 0 owns batches 0 and 2 (members 0-1, 4-5), rank 1 batch 1 (members 2-3).
    # Rank 0 is killed inside its second batch, rank 1 after its only batch was
    # committed (drawing the noise of batch 2, which it skips), before its final flush.
    KillCase("2ranks-lorenz-b2", 2, "lorenz96", 6, 2, [("after", L + 2), ("draw", 3)]),
    # Rank 0 owns members 0, 2, 4; rank 1 members 1, 3, 5. Rank 0 is killed between
    # batches (member 0 committed, drawing the noise of member 1, before member 2 is
    # pinned); rank 1 inside member 3 (the model reruns it from lead 0).
    KillCase("2ranks-persistence-b1", 2, "persistence", 6, 1, [("draw", 2), ("after", L + 3)], level=1, mode="append"),
    # 4 ranks, two batches each: between the batches (the second one pinned and
    # perturbed, nothing of it written), inside the first batch, between the
    # batches (drawing the noise of a batch it skips), at the last write of the last batch.
    KillCase("4ranks-lorenz-b1", 4, "lorenz96", 8, 1, [("before", L + 1), ("after", 3), ("draw", 6), ("after", 2 * L)]),
    # 4 ranks, one batch each (7 members: the last batch has one): inside the
    # batch, in its last write, before the first write (the batch pinned), and
    # before its batch (no row yet) while drawing the others' noise. (A rank
    # that owns no batch has nothing to do and draws nothing.)
    KillCase(
        "4ranks-persistence-b2", 4, "persistence", 7, 2, [("after", 2), ("before", L), ("before", 1), ("draw", 2)]
    ),
]


def _check_resume(case: KillCase, rank: int, killed: RankProcess, resumed: RankProcess) -> None:
    everything = _rank_writes(rank, case.world_size, case.nensemble, case.batch_size)
    kind, k = case.kills[rank]
    before = killed.writes("B1")
    if kind == "after":
        assert before == everything[:k], f"rank {rank}"
    elif kind == "before":
        assert before == everything[: k - 1], f"rank {rank}"
    else:
        # Held in draw k (batch k - 1): every batch of its own before that one is written.
        own_before = [
            batch
            for batch in _owned(rank, case.world_size, case.nensemble, case.batch_size)
            if batch[0] < (k - 1) * case.batch_size
        ]
        assert before == [(batch, lead) for batch in own_before for lead in LEADS], f"rank {rank}"
    assert killed.events("hold", "B1"), f"rank {rank} was not killed where it held:\n{killed}"
    committed = case.committed(rank, before)

    # The resume writes exactly what was not committed, in order, once.
    after = resumed.writes("B2")
    assert after == everything[committed:], f"rank {rank}: killed at {case.kills[rank]}, start {resumed.start('B2')}"
    start = resumed.start("B2")
    if committed:
        assert start["exists"] is True and start["completed"] is not None, f"rank {rank}: {start}"

    # Inside a batch a level-2 Lorenz96 continues after the committed lead
    # time; a Persistence model (nothing to continue) reruns from lead 0.
    if after:
        batch = after[0][0]
        yields = [lead for members, lead in resumed.yields("B2") if members == batch]
        # A row inside a batch (not its start, not its end) is that batch's.
        if start["lead"] is not None and start["lead"] < LEADS[-1]:
            if case.model == "lorenz96" and case.level == 2:
                assert yields[0] == start["lead"] + STEP_HOURS, (rank, start, yields)
            else:
                assert yields[0] == 0, (rank, start, yields)
        else:
            assert yields[0] == 0, (rank, start, yields)


# The default run keeps the cases that together hold every kill point (after,
# before, in a draw; inside, between and at the end of batches; a rank owning
# one batch or none), both models, levels 1 and 2, overwrite and append, a
# short last batch. 2ranks-lorenz-b2 repeats kill points of 4ranks-lorenz-b1
# (inside a Lorenz96 batch, drawing a skipped batch's noise): stress run.
STRESS_KILL_CASES = {"2ranks-lorenz-b2"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.stress] if c.id in STRESS_KILL_CASES else []) for c in KILL_CASES],
)
def test_ranks_killed_at_different_points_resume_to_the_single_process_ensemble(
    case: KillCase, child: Child, tmp_path: Path, reference: Any
) -> None:
    n, b, w = case.nensemble, case.batch_size, case.world_size
    expected = reference(case.model, n, b)
    common = dict(level=case.level, mode=case.mode)
    first = [
        [_job("B1", rank, w, tmp_path, case.model, n, b, kill=list(case.kills[rank]), **common)] for rank in range(w)
    ]
    killed = _start_ranks(child, first)
    _kill_when(killed, lambda rank, proc: bool(proc.events("hold", "B1")))

    second = [[_job("B2", rank, w, tmp_path, case.model, n, b, **common)] for rank in range(w)]
    resumed = _start_ranks(child, second)
    _wait_all_ok(resumed)
    for rank in range(w):
        _check_resume(case, rank, killed[rank], resumed[rank])
        assert_rank_store(Path(first[rank][0]["zarr"]), rank, w, n, b, expected)


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("RESTARTABLE_TEST_SEED", random.randrange(2**32)))
    print(f"RESTARTABLE_TEST_SEED={seed}")
    return random.Random(seed)


# Random kill moments, a new seed each run: the default run keeps the
# 2-rank case; the 4-rank Lorenz96 one (the same code paths, more ranks and
# level-2 continuation, which KILL_CASES cover at fixed points) is the stress run's.
@pytest.mark.parametrize(
    "world_size, model", [(2, "persistence"), pytest.param(4, "lorenz96", marks=pytest.mark.stress)]
)
def test_ranks_killed_at_random_moments_resume_to_the_single_process_ensemble(
    world_size: int, model: str, child: Child, tmp_path: Path, reference: Any, rng: random.Random
) -> None:
    """SIGKILL from outside at any moment (in a commit, between writes), every rank at its own write count."""
    n, b = 8, 2
    expected = reference(model, n, b)
    pace = 0.03
    common = dict(flush_interval=2, mode="append", pace=pace)
    totals = [len(_rank_writes(rank, world_size, n, b)) for rank in range(world_size)]
    # At least two paced writes are left after the target: the rank is still running when the kill comes.
    targets = [rng.randint(1, total - 2) for total in totals]
    delays = [rng.uniform(0.0, pace / 2) for _ in totals]  # right after the write (its commit), or a little later
    seen: dict[int, float] = {}

    def ready(rank: int, proc: RankProcess) -> bool | float:
        if rank not in seen and len(proc.events("write", "B1")) >= targets[rank]:
            seen[rank] = time.monotonic()
        if rank not in seen:
            return False
        return time.monotonic() >= seen[rank] + delays[rank] or seen[rank] + delays[rank]

    # A rank holds after the second write past its target (until the kill):
    # however late the kill comes, the rank is still running then.
    first = [
        [_job("B1", rank, world_size, tmp_path, model, n, b, hold_after=targets[rank] + 2, **common)]
        for rank in range(world_size)
    ]
    killed = _start_ranks(child, first)
    _kill_when(killed, ready)

    second = [[_job("B2", rank, world_size, tmp_path, model, n, b, **common)] for rank in range(world_size)]
    resumed = _start_ranks(child, second)
    _wait_all_ok(resumed)
    for rank in range(world_size):
        everything = _rank_writes(rank, world_size, n, b)
        before, after = killed[rank].writes("B1"), resumed[rank].writes("B2")
        assert len(before) >= targets[rank] and before == everything[: len(before)], f"rank {rank}"
        # The resume picks up at or before the kill, never skips a write, and
        # redoes at most what the last two writes (one commit interval) left uncommitted.
        assert after == everything[len(everything) - len(after) :], f"rank {rank}: {after}"
        assert len(before) - 2 <= len(everything) - len(after) <= len(before), (
            f"rank {rank}: {len(before)} written, resumed at {len(everything) - len(after)}"
        )
        assert_rank_store(Path(first[rank][0]["zarr"]), rank, world_size, n, b, expected)


# --------------------------------------------------------------------------- another world size


class _Interrupt(Exception):
    pass


class _RecordingIO:
    """Forwards to ``inner``, records every call the workflow makes, and can fail at one write."""

    def __init__(self, inner: Any, fail_at: int | None = None) -> None:
        self.inner, self.fail_at = inner, fail_at
        self.calls: list[str] = []
        self.written: list[tuple[tuple[int, ...], int]] = []  # (members, lead hours) of every write done

    def add_array(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("add_array")
        self.inner.add_array(*args, **kwargs)

    def write(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("write")
        if self.calls.count("write") == self.fail_at:
            raise _Interrupt
        self.inner.write(*args, **kwargs)
        coords = args[1]
        lead = int(np.asarray(coords["lead_time"]).reshape(-1)[-1] / np.timedelta64(1, "h"))
        self.written.append((tuple(int(m) for m in coords["ensemble"]), lead))


def _run_rank_here(
    ckpt: Path,
    rank: int,
    world_size: int,
    io: Any,
    nensemble: int,
    batch_size: int,
    model: str = "persistence",
    session: bool = False,
    consistent: bool = True,
) -> None:
    """One rank's ensemble in this process, in a fresh context (as a separate process would be).

    ``session``: enter the checkpoint first and give the workflow the open
    session (the style of the workflows' docstring), else give it the
    :class:`Checkpoint`.
    """

    def go() -> None:
        checkpoint = Checkpoint(
            "ens", path=ckpt, rank=rank, world_size=world_size, flush_interval=1, level=2, consistent=consistent
        )
        data = SyntheticData(NLAT, NLON, seed=0)

        def call(target: Any) -> None:
            pert = GaussianPerturbation(STD, PSEED)
            ensemble(
                TIME,
                NSTEPS,
                nensemble,
                _model(model, data),
                data,
                io,
                pert,
                batch_size=batch_size,
                verbose=False,
                checkpoint=target,
            )

        if session:
            with checkpoint as open_session:
                call(open_session)
        else:
            call(checkpoint)

    contextvars.Context().run(go)


def _tree(path: Path) -> dict[str, bytes | None]:
    """Every directory (None) and file (its bytes) under ``path``."""
    out: dict[str, bytes | None] = {}
    for item in sorted(path.rglob("*")):
        out[str(item.relative_to(path))] = item.read_bytes() if item.is_file() else None
    return out


# Byte for byte unchanged by the refusal, a store resumes as any store does
# (the kill-and-resume tests); one case also shows it end to end.
@pytest.mark.parametrize(
    "before, after, resume",
    [(4, 2, False), (2, 1, True), (1, 2, False), (2, 4, False)],
    ids=["4-to-2", "2-to-1", "1-to-2", "2-to-4"],
)
@pytest.mark.filterwarnings("ignore::restartable.CheckpointLateBindWarning")
def test_restart_with_another_world_size_is_refused_before_anything_is_written(
    before: int, after: int, resume: bool, tmp_path: Path, reference: Any
) -> None:
    n, b = 6, 1
    ckpt = tmp_path / "ckpt"
    stores = [tmp_path / f"rank{rank}.zarr" for rank in range(before)]

    # Interrupted: every rank stops in its 3rd write (after one member or in the first).
    for rank in range(before):
        io = _RecordingIO(ZarrIO(stores[rank]), fail_at=3)
        with pytest.raises(_Interrupt):
            _run_rank_here(ckpt, rank, before, io, n, b)
    snapshot = _tree(ckpt)
    assert any("commits" in name for name in snapshot)

    for rank in range(after):
        io = _RecordingIO(MemoryIO())
        with pytest.raises(CheckpointWorldSizeError, match=rf"this run has world_size {after}\b"):
            _run_rank_here(ckpt, rank, after, io, n, b)
        assert io.calls == [], f"rank {rank} of {after} used its IO before the refusal: {io.calls}"
    assert _tree(ckpt) == snapshot, "the refused run changed the checkpoint store"

    # The store still resumes with its own world size, to the single-process ensemble.
    for rank in range(before if resume else 0):
        _run_rank_here(ckpt, rank, before, ZarrIO(stores[rank]), n, b)
        assert_rank_store(stores[rank], rank, before, n, b, reference("persistence", n, b))


# --------------------------------------------------------------------------- an open session instead of a Checkpoint


@pytest.mark.filterwarnings("ignore::restartable.CheckpointLateBindWarning")
def test_an_open_session_of_a_consistent_multirank_checkpoint_is_refused(tmp_path: Path) -> None:
    """Entering a consistent multi-rank checkpoint makes every rank resume from the common row; ensemble
    ranks are independent, so ensemble() refuses such a session with a clear error instead of redoing work."""
    io = _RecordingIO(MemoryIO())
    with pytest.raises(ValueError, match=r"pass the Checkpoint itself .* or create it with consistent=False"):
        _run_rank_here(tmp_path / "ckpt", 0, 2, io, 6, 1, "lorenz96", session=True)
    assert io.calls == []


@pytest.mark.parametrize("model", ["lorenz96", "persistence"])
@pytest.mark.filterwarnings("ignore::restartable.CheckpointLateBindWarning")
def test_ranks_given_open_independent_sessions_resume_to_the_single_process_ensemble(
    model: str, tmp_path: Path, reference: Any
) -> None:
    """Independent sessions, one per rank, resume to the single-process ensemble.

    ``with Checkpoint(..., rank=r, world_size=2, consistent=False) as session: ensemble(..., checkpoint=session)``.
    """
    n, b, w = 6, 1, 2
    ckpt = tmp_path / "ckpt"
    stores = [tmp_path / f"rank{rank}.zarr" for rank in range(w)]
    # Interrupted: rank 1 in its first member (3rd write), rank 0 in its second (member 2, 9th write).
    for rank, fail_at in ((1, 3), (0, 2 * L - 1)):
        with pytest.raises(_Interrupt):
            _run_rank_here(
                ckpt,
                rank,
                w,
                _RecordingIO(ZarrIO(stores[rank]), fail_at=fail_at),
                n,
                b,
                model,
                session=True,
                consistent=False,
            )
    # Resumed one rank after the other (as ranks that start at different moments).
    for rank in range(w):
        _run_rank_here(ckpt, rank, w, ZarrIO(stores[rank]), n, b, model, session=True, consistent=False)
    for rank in range(w):
        assert_rank_store(stores[rank], rank, w, n, b, reference(model, n, b))


@pytest.mark.filterwarnings("ignore::restartable.CheckpointLateBindWarning")
def test_ranks_given_open_independent_sessions_resume_from_their_own_newest_row(tmp_path: Path) -> None:
    """The ensemble's promise ("each rank resumes from its own newest row") with the session style."""
    n, b, w = 6, 1, 2
    ckpt = tmp_path / "ckpt"
    interrupted = {}
    for rank, fail_at in ((1, 3), (0, 2 * L - 1)):
        interrupted[rank] = _RecordingIO(MemoryIO(), fail_at=fail_at)
        with pytest.raises(_Interrupt):
            _run_rank_here(ckpt, rank, w, interrupted[rank], n, b, "lorenz96", session=True, consistent=False)
    everything = _rank_writes(0, w, n, b)
    assert interrupted[0].written == everything[: 2 * L - 2]
    resumed = _RecordingIO(MemoryIO())
    _run_rank_here(ckpt, 0, w, resumed, n, b, "lorenz96", session=True, consistent=False)
    # Everything rank 0 wrote before was committed (flush_interval=1): nothing of it is written again.
    assert resumed.written == everything[2 * L - 2 :], resumed.written[:3]


# ------------------------------------------------------------ found while running benchmarks/bench_multirank.py


def test_a_rank_committing_while_another_enters_is_not_reported_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranks of a consistent checkpoint that start at different moments (bench_multirank's 16 ranks hit this)."""
    import warnings

    import restartable.catalog._agreement as checkpoint_module
    from restartable import CheckpointFallbackWarning

    path = tmp_path / "ckpt"

    def commit(rank: int, rows: int) -> None:
        with Checkpoint("live", path=path, rank=rank, world_size=3) as session:
            for lead in range(1, rows + 1):
                session.write(lead_time=lead)

    contextvars.Context().run(commit, 2, 2)  # rank 2 has rows 1 and 2
    rank0 = contextvars.Context()  # rank 0 is running: row 1 committed, row 2 comes next
    checkpoint0 = rank0.run(Checkpoint, "live", path=path, rank=0, world_size=3)
    session0 = rank0.run(checkpoint0.__enter__)
    rank0.run(session0.write, lead_time=1)

    real_scan = checkpoint_module.scan_rows

    def scan_while_rank_0_commits(folder: Any, *args: Any, **kwargs: Any) -> Any:
        scan = real_scan(folder, *args, **kwargs)
        if str(folder) == str(path / "rank_000000"):  # the rank store, by its location
            rank0.run(session0.write, lead_time=2)  # rank 0's next commit lands right after rank 1 read its folder
        return scan

    monkeypatch.setattr(checkpoint_module, "scan_rows", scan_while_rank_0_commits)

    def enter_rank_1() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointFallbackWarning)
            with Checkpoint("live", path=path, rank=1, world_size=3) as session:
                assert not session.exists  # rank 1 has no row: nothing is common yet

    try:
        contextvars.Context().run(enter_rank_1)
    finally:
        rank0.run(checkpoint0.__exit__, None, None, None)
    # Nothing is damaged: rank 0's rows 1 and 2 are whole.
    assert [entry.lead_time for entry in Checkpoint("live", path=path, rank=0, world_size=3, consistent=False).catalog][
        -1
    ] == 2
