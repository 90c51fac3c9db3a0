"""Resumable workflows end to end: real processes, real Zarr stores, real tensors.

Every kill-and-resume test runs the same forecast twice:

- run A, uninterrupted and without a checkpoint, in this process;
- run B in a child process with a checkpoint, SIGKILLed at a random step
  (by itself, from inside its IO's ``write``, or by this process at a random
  moment), then resumed in a fresh child process with the same checkpoint and
  the same Zarr store (each child a new process forked from a warm
  interpreter that imported torch and restartable once: see ``warm``);

and asserts that the Zarr arrays of B are bitwise equal to A's. The children
log every IO write and every step their model yields to a JSON-lines file, so
the tests also check *what* a resume wrote and whether the model continued
or recomputed.

The random kill points come from one seed per test, printed on failure; set
``RESTARTABLE_TEST_SEED`` to replay one.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from restartable import Checkpoint, CheckpointLateBindWarning
from restartable.components import (
    GaussianPerturbation,
    Lorenz96,
    MemoryIO,
    Persistence,
    SyntheticData,
    WindSpeed,
    ZarrIO,
)
from restartable.workflows import PREEMPTED_EXIT_CODE, WorkflowPreempted, deterministic, diagnostic, ensemble
from warm_python import XARRAY_WARMUP, WarmProcess, WarmPython

NLAT, NLON = 4, 8
NSTEPS = 6
TIME = ["2024-01-01T00:00"]
STD, PSEED = 0.5, 7
STEP_HOURS = 6
LEADS = [STEP_HOURS * i for i in range(NSTEPS + 1)]  # hours: 0, 6, ..., 36
CHILD_TIMEOUT = 180  # a hang guard, not a timing assertion

# --------------------------------------------------------------------------- the child process

CHILD_SOURCE = (
    r'''
"""Runs workflow jobs given as JSON in argv[1]; each job in a fresh context."""
import contextvars, importlib, json, os, signal, sys, time, warnings

import numpy as np

from restartable import Checkpoint
from restartable.components import GaussianPerturbation, Lorenz96, Persistence, SyntheticData, WindSpeed, ZarrIO
from restartable import workflows

HOUR = np.timedelta64(1, "h")


def hours(value):
    if value is None:
        return None
    return int(np.asarray(value).reshape(-1)[-1] / HOUR)


def emit(record):
    print(json.dumps(record), flush=True)


class Log:
    """Appends one JSON line per event; each line is one write(2), so a SIGKILL never tears it."""

    def __init__(self, path, phase):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None
        self.phase = phase

    def __call__(self, event, coords):
        if self.fd is None:
            return
        record = {"phase": self.phase, "event": event, "lead": hours(coords["lead_time"])}
        if "ensemble" in coords:
            record["members"] = [int(m) for m in np.asarray(coords["ensemble"])]
        os.write(self.fd, (json.dumps(record) + "\n").encode())


def logged(base, log):
    """A subclass of the model class that logs the lead time of every yielded step."""

    class Logged(base):
        def create_iterator(self, x, coords):
            for item in super().create_iterator(x, coords):
                log("yield", item[1])
                yield item

    return Logged


def die():
    os.kill(os.getpid(), signal.SIGKILL)
    while True:  # never returns
        time.sleep(1)


def wait_for_stop_signal():
    """Tell the parent we are ready, then wait until its SIGTERM/SIGUSR1 has been handled."""
    got = []
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            got.append(signum)
            previous(signum, frame)  # the workflow's own handler

        signal.signal(sig, handler)
    emit({"ready": True})
    deadline = time.monotonic() + 120
    while not got:
        if time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.005)


class ChildIO(ZarrIO):
    def __init__(self, path, job, log):
        super().__init__(path)
        self.job, self.log, self.calls = job, log, 0

    def write(self, x, coords, names):
        self.calls += 1
        if self.job.get("pace"):
            time.sleep(self.job["pace"])
        kill = self.job.get("kill_at") == self.calls
        if kill and self.job.get("kill_when") == "before":
            die()
        super().write(x, coords, names)
        self.log("write", coords)
        if kill:
            die()
        if self.job.get("signal_at") == self.calls:
            wait_for_stop_signal()


def model_class(name):
    if name == "lorenz96":
        return Lorenz96
    if name == "persistence":
        return Persistence
    module, _, cls = name.partition(":")
    return getattr(importlib.import_module(module), cls)


def run(job, log, report):
    data = SyntheticData(job["nlat"], job["nlon"], seed=0)

    def components():
        cls = logged(model_class(job["model"]), log)
        if issubclass(cls, Persistence):
            model = cls(["u10m", "v10m"], lat=data.lat, lon=data.lon)
        else:
            model = cls(lat=data.lat, lon=data.lon)
        pert = GaussianPerturbation(job["std"], job["pseed"]) if job["workflow"] == "ensemble" else None
        return model, pert

    io = ChildIO(job["zarr"], job, log)

    def call(model, pert, session):
        common = dict(verbose=job.get("verbose", False), checkpoint=session)
        if job["workflow"] == "deterministic":
            workflows.deterministic(job["time"], job["nsteps"], model, data, io, **common)
        elif job["workflow"] == "diagnostic":
            workflows.diagnostic(job["time"], job["nsteps"], model, WindSpeed(), data, io, **common)
        else:
            workflows.ensemble(job["time"], job["nsteps"], job["nensemble"], model, data, io, pert, '''
    r"""batch_size=job["batch_size"], **common)

    if job.get("ckpt") is None:
        call(*components(), None)
        return
    ckpt = Checkpoint("wf", path=job["ckpt"], mode=job["mode"], """
    r"""flush_interval=job["flush_interval"], level=job["level"])
    if job.get("bind") == "late":
        model, pert = components()
    with ckpt as session:
        if job.get("bind") != "late":
            model, pert = components()
        rows = [e.commit_id for e in ckpt.catalog]
        meta = session.metadata
        report["start"] = {
            "exists": session.exists,
            "lead": hours(session.lead_time),
            "completed": meta.get("completed_ensembles"),
            "write_count": session.write_count,
        }
        emit({"phase": job["phase"], "start": report["start"]})
        call(model, pert, session)
        report["rows_before"], report["rows_after"] = rows, [e.commit_id for e in ckpt.catalog]


def run_job(job):
    log = Log(job.get("log"), job["phase"])
    report = {"phase": job["phase"], "error": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run(job, log, report)
        except Exception as exc:  # SystemExit (WorkflowPreempted) goes through
            report["error"] = {"type": type(exc).__name__, "message": str(exc), "mro": """
    r"""[c.__name__ for c in type(exc).__mro__]}
        finally:
            report["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
    emit(report)
    if job.get("hold"):
        emit({"held": True})
        time.sleep(120)  # wait for the parent's SIGKILL


if __name__ == "__main__":
    for job in json.loads(sys.argv[1]):
        contextvars.Context().run(run_job, job)
"""
)


# What the child script imports (numpy, torch, restartable and its workflows,
# ZarrIO's xarray and zarr): imported once by the module's warm interpreter.
CHILD_PRELOAD = (
    "import numpy, torch, xarray, zarr, restartable, restartable.components, restartable.workflows\n" + XARRAY_WARMUP
)


@dataclasses.dataclass(frozen=True)
class Child:
    """The child script and the warm interpreter that forks a process per run of it."""

    script: Path
    warm: WarmPython


@pytest.fixture(scope="module")
def warm() -> Iterator[WarmPython]:
    # Every child is a new process (SIGKILL kills it alone; a resume starts
    # from what is on disk) forked from an interpreter that has imported
    # torch, zarr and restartable but run nothing: a fresh interpreter would
    # spend ~3 s of CPU importing them for each of the module's children.
    with WarmPython(CHILD_PRELOAD, _env()) as server:
        yield server


@pytest.fixture
def child(tmp_path: Path, warm: WarmPython) -> Child:
    path = tmp_path / "wfchild.py"
    path.write_text(CHILD_SOURCE, encoding="utf-8")
    return Child(path, warm)


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("RESTARTABLE_TEST_SEED", random.randrange(2**32)))
    print(f"RESTARTABLE_TEST_SEED={seed}")
    return random.Random(seed)


def _env(*extra_paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    parts = [str(p) for p in extra_paths] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _job(
    phase: str, workflow: str, model: str, zarr: Path, log: Path, ckpt: Path | None = None, **extra: Any
) -> dict[str, Any]:
    job = {
        "phase": phase,
        "workflow": workflow,
        "model": model,
        "zarr": str(zarr),
        "log": str(log),
        "ckpt": None if ckpt is None else str(ckpt),
        "nlat": NLAT,
        "nlon": NLON,
        "nsteps": NSTEPS,
        "time": TIME,
        "std": STD,
        "pseed": PSEED,
        "nensemble": 4,
        "batch_size": 2,
        "mode": "overwrite",
        "flush_interval": 1,
        "level": 2,
    }
    job.update(extra)
    return job


def _spawn(child: Child, jobs: list[dict[str, Any]]) -> WarmProcess:
    """``python wfchild.py JOBS`` in a new process; its stdout and stderr merged in ``proc.stdout``."""
    return child.warm.popen([sys.executable, str(child.script), json.dumps(jobs)], env=_env(), cwd=child.script.parent)


def _communicate(proc: WarmProcess) -> str:
    """All the child's output, once it has ended (a hang guard of CHILD_TIMEOUT, not a timing)."""
    assert proc.stdout is not None
    stdout = proc.stdout
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(stdout.read()), daemon=True)
    reader.start()
    reader.join(CHILD_TIMEOUT)
    if reader.is_alive():
        proc.kill()
        reader.join(CHILD_TIMEOUT)
        raise AssertionError(f"child {proc.pid} hung")
    proc.wait(CHILD_TIMEOUT)
    stdout.close()
    return chunks[0]


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


class Result:
    """A child's exit status and output (stdout and stderr together: the JSON lines are whole lines)."""

    def __init__(self, returncode: int, output: str) -> None:
        self.returncode, self.output = returncode, output
        self.lines = _json_lines(output)

    def report(self, phase: str) -> dict[str, Any]:
        found = [r for r in self.lines if r.get("phase") == phase and "warnings" in r]
        assert found, f"no report for {phase}:\n{self.output}"
        return found[-1]

    def start(self, phase: str) -> dict[str, Any]:
        found = [r["start"] for r in self.lines if r.get("phase") == phase and "start" in r]
        assert found, f"no start line for {phase}:\n{self.output}"
        return found[-1]

    def __str__(self) -> str:
        return f"rc={self.returncode}\noutput:\n{self.output[-8000:]}"


def _run(child: Child, jobs: list[dict[str, Any]]) -> Result:
    proc = _spawn(child, jobs)
    output = _communicate(proc)
    return Result(proc.wait(), output)


def _run_ok(child: Child, jobs: list[dict[str, Any]]) -> Result:
    result = _run(child, jobs)
    assert result.returncode == 0, str(result)
    for job in jobs:
        report = result.report(job["phase"])
        assert report["error"] is None, f"{job['phase']}: {report['error']}\n{result}"
    return result


def _log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _writes(log: Path, phase: str) -> list[tuple[tuple[int, ...], int]]:
    return [
        (tuple(r.get("members", ())), r["lead"]) for r in _log(log) if r["phase"] == phase and r["event"] == "write"
    ]


def _yields(log: Path, phase: str) -> list[tuple[tuple[int, ...], int]]:
    return [
        (tuple(r.get("members", ())), r["lead"]) for r in _log(log) if r["phase"] == phase and r["event"] == "yield"
    ]


def _kill_from_parent(
    child: Child, job: dict[str, Any], log: Path, after_writes: int, delay: float
) -> tuple[Result, int]:
    """Start ``job`` and SIGKILL it ``delay`` seconds after its log shows ``after_writes`` writes."""
    proc = _spawn(child, [dict(job, hold=True)])
    deadline = time.monotonic() + CHILD_TIMEOUT
    while len(_writes(log, job["phase"])) < after_writes:
        if proc.poll() is not None:
            output = _communicate(proc)
            raise AssertionError(f"child ended before it was killed:\n{Result(proc.wait(), output)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child made no progress")
        time.sleep(0.002)
    time.sleep(delay)  # a random moment between two writes: the point of this kill
    proc.kill()
    output = _communicate(proc)
    return Result(proc.wait(), output), len(_writes(log, job["phase"]))


# --------------------------------------------------------------------------- run A and comparisons


def _in_fresh_context(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` with restartable's context variables unset (no stale current checkpoint)."""
    return contextvars.Context().run(func, *args, **kwargs)


def _model(name: str, data: SyntheticData) -> Any:
    if name == "persistence":
        return Persistence(["u10m", "v10m"], lat=data.lat, lon=data.lon)
    return Lorenz96(lat=data.lat, lon=data.lon)


def _call(
    workflow: str,
    model: Any,
    data: Any,
    io: Any,
    pert: Any = None,
    session: Any = None,
    nsteps: int = NSTEPS,
    nensemble: int = 4,
    batch_size: int = 2,
) -> Any:
    if workflow == "deterministic":
        return deterministic(TIME, nsteps, model, data, io, verbose=False, checkpoint=session)
    if workflow == "diagnostic":
        return diagnostic(TIME, nsteps, model, WindSpeed(), data, io, verbose=False, checkpoint=session)
    return ensemble(
        TIME, nsteps, nensemble, model, data, io, pert, batch_size=batch_size, verbose=False, checkpoint=session
    )


def run_a(path: Path, workflow: str, model: str, nensemble: int = 4, batch_size: int = 2) -> Path:
    """The uninterrupted reference run, without a checkpoint, into a Zarr store."""

    def go() -> None:
        data = SyntheticData(NLAT, NLON, seed=0)
        pert = GaussianPerturbation(STD, PSEED) if workflow == "ensemble" else None
        _call(workflow, _model(model, data), data, ZarrIO(path), pert, None, nensemble=nensemble, batch_size=batch_size)

    _in_fresh_context(go)
    return path


def _store(path: Path) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return {name: (np.asarray(array[...]), dict(array.attrs)) for name, array in root.arrays()}


DATA_VARIABLES = {"deterministic": ["u10m", "v10m"], "diagnostic": ["ws10m"], "ensemble": ["u10m", "v10m"]}


def assert_stores_equal(actual: Path, expected: Path) -> None:
    got, want = _store(actual), _store(expected)
    assert sorted(got) == sorted(want)
    for name in want:
        a, attrs_a = got[name]
        e, attrs_e = want[name]
        assert attrs_a == attrs_e, name
        assert a.dtype == e.dtype and a.shape == e.shape, name
        assert np.array_equal(a, e, equal_nan=e.dtype.kind in "fc"), f"{name}: values differ"
        assert a.tobytes() == e.tobytes(), f"{name}: bytes differ"


def assert_reference_complete(path: Path, workflow: str) -> None:
    arrays = _store(path)
    for name in DATA_VARIABLES[workflow]:
        values = arrays[name][0]
        assert values.size and not np.isnan(values).any(), f"reference {name} is incomplete"
        assert values.dtype == np.float32


def _catalog(path: Path) -> tuple[Any, ...]:
    return _in_fresh_context(lambda: Checkpoint("wf", path=path).catalog)


def _batches(nensemble: int, batch_size: int) -> list[tuple[int, ...]]:
    return [tuple(range(f, min(f + batch_size, nensemble))) for f in range(0, nensemble, batch_size)]


def _all_writes(workflow: str, nensemble: int, batch_size: int) -> list[tuple[tuple[int, ...], int]]:
    if workflow != "ensemble":
        return [((), lead) for lead in LEADS]
    return [(batch, lead) for batch in _batches(nensemble, batch_size) for lead in LEADS]


def _expected_resume_writes(
    workflow: str, start: dict[str, Any], nensemble: int, batch_size: int
) -> list[tuple[tuple[int, ...], int]]:
    """What a resume from the row described by ``start`` must write: everything after it, once."""
    done = start["lead"] if start["exists"] else None
    if workflow != "ensemble":
        return [((), lead) for lead in LEADS if done is None or lead > done]
    completed = set(start["completed"] or ()) if start["exists"] else set()
    out: list[tuple[tuple[int, ...], int]] = []
    for batch in _batches(nensemble, batch_size):
        if completed.issuperset(batch):
            continue
        # The row's lead time is inside the first batch not complete.
        mid = not out and done is not None and done < LEADS[-1]
        out += [(batch, lead) for lead in LEADS if not mid or lead > done]
    return out


# --------------------------------------------------------------------------- the kill-and-resume matrix


@dataclasses.dataclass(frozen=True)
class Case:
    workflow: str
    model: str
    level: int
    flush_interval: int
    mode: str
    kill: str  # "before" / "after": the child kills itself in its k-th IO write; "parent": we kill it
    nensemble: int = 4
    batch_size: int = 2

    @property
    def id(self) -> str:
        parts = [
            self.workflow[:4],
            self.model[:4],
            f"L{self.level}",
            f"f{self.flush_interval}",
            self.mode,
            f"kill-{self.kill}",
        ]
        if self.workflow == "ensemble":
            parts.insert(2, f"n{self.nensemble}b{self.batch_size}")
        return "-".join(parts)


# A pairwise selection over workflow x model, level, flush interval, mode,
# kill style and (ensembles) batch size, rather than the full product. The
# default run keeps the first six: every workflow, both models (deterministic
# and ensemble), levels 0, 1 and 2 (continue and recompute), flush intervals 1
# and 3, both modes, the three kill styles, batch sizes 1 and 3 (with an
# uneven last batch). Batches of 2, ensembles killed after a write and ensembles
# resumed at level 1 are covered by default by the level-0 ensemble, late
# binding and stop-signal tests; the rest of the matrix repeats these paths and
# runs with -m stress.
CASES = [
    Case("deterministic", "lorenz96", 2, 1, "overwrite", "after"),
    Case("deterministic", "lorenz96", 0, 3, "overwrite", "parent"),
    Case("deterministic", "persistence", 0, 1, "append", "after"),
    Case("diagnostic", "lorenz96", 1, 1, "overwrite", "before"),
    Case("ensemble", "lorenz96", 2, 3, "append", "parent", nensemble=5, batch_size=3),
    Case("ensemble", "persistence", 2, 1, "append", "before", nensemble=4, batch_size=1),
]
STRESS_CASES = [
    Case("deterministic", "lorenz96", 1, 3, "append", "before"),
    Case("deterministic", "lorenz96", 2, 3, "append", "parent"),
    Case("deterministic", "persistence", 2, 3, "overwrite", "before"),
    Case("deterministic", "persistence", 1, 1, "overwrite", "parent"),
    Case("diagnostic", "lorenz96", 2, 3, "append", "after"),
    Case("diagnostic", "lorenz96", 0, 1, "append", "parent"),
    Case("ensemble", "lorenz96", 2, 1, "overwrite", "after", nensemble=4, batch_size=2),
    Case("ensemble", "lorenz96", 1, 3, "append", "before", nensemble=4, batch_size=1),
    Case("ensemble", "lorenz96", 1, 1, "overwrite", "parent", nensemble=5, batch_size=2),
    Case("ensemble", "persistence", 1, 3, "overwrite", "after", nensemble=4, batch_size=2),
]


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id) for c in CASES]
    + [pytest.param(c, id=c.id, marks=pytest.mark.stress) for c in STRESS_CASES],
)
def test_killed_run_resumes_bitwise_equal_to_an_uninterrupted_run(
    case: Case, child: Child, tmp_path: Path, rng: random.Random
) -> None:
    a = run_a(tmp_path / "a.zarr", case.workflow, case.model, case.nensemble, case.batch_size)
    assert_reference_complete(a, case.workflow)

    b, ckpt, log = tmp_path / "b.zarr", tmp_path / "ckpt", tmp_path / "log.jsonl"
    everything = _all_writes(case.workflow, case.nensemble, case.batch_size)
    common = dict(
        level=case.level,
        flush_interval=case.flush_interval,
        mode=case.mode,
        nensemble=case.nensemble,
        batch_size=case.batch_size,
    )

    # B1: killed with SIGKILL at a random step.
    job = _job("B1", case.workflow, case.model, b, log, ckpt, **common)
    if case.kill == "parent":
        k = rng.randint(1, len(everything) - 1)
        killed, _ = _kill_from_parent(child, dict(job, pace=0.03), log, k, rng.uniform(0.0, 0.03))
    else:
        k = rng.randint(1, len(everything))
        killed = _run(child, [dict(job, kill_at=k, kill_when=case.kill)])
    assert killed.returncode == -signal.SIGKILL, str(killed)
    written_before = _writes(log, "B1")
    if case.kill == "before":
        assert written_before == everything[: k - 1]
    elif case.kill == "after":
        assert written_before == everything[:k]

    # B2 resumes in a fresh process; C then runs the completed forecast again.
    resumed = _run_ok(
        child,
        [
            _job("B2", case.workflow, case.model, b, log, ckpt, **common),
            _job("C", case.workflow, case.model, b, log, ckpt, **common),
        ],
    )
    start = resumed.start("B2")
    for phase in ("B2", "C"):
        unexpected = [w for w in resumed.report(phase)["warnings"] if w[0] != "CheckpointCleanupWarning"]
        assert unexpected == [], f"{phase}: {unexpected}"

    assert_stores_equal(b, a)

    # The resume writes exactly what was not committed, in order, once.
    writes_after = _writes(log, "B2")
    assert writes_after == _expected_resume_writes(case.workflow, start, case.nensemble, case.batch_size), (
        start,
        written_before,
    )
    if start["exists"] and start["lead"] is not None:
        # The committed boundary is a step B1 did write.
        assert any(lead == start["lead"] for _, lead in written_before)
    assert set(written_before) | set(writes_after) == set(everything)

    # Continued (level-2 Lorenz96) or recomputed from the initial condition.
    yields = _yields(log, "B2")
    if writes_after:
        first_batch = writes_after[0][0]
        batch_yields = [lead for members, lead in yields if members == first_batch]
        mid_run = start["exists"] and start["lead"] is not None and start["lead"] < LEADS[-1]
        if case.model == "lorenz96" and case.level == 2 and mid_run:
            assert batch_yields[0] == start["lead"] + STEP_HOURS, batch_yields
            assert all(lead > start["lead"] for lead in batch_yields)
        else:
            assert batch_yields[:1] == [0], batch_yields

    # Running the completed forecast again writes nothing to its IO (and, but
    # for the ensemble, commits nothing: see test_rerun_of_a_completed_run_*).
    assert _writes(log, "C") == []
    rerun = resumed.report("C")
    assert resumed.start("C")["exists"]
    if case.workflow != "ensemble":
        assert rerun["rows_after"] == rerun["rows_before"]
    assert_stores_equal(b, a)


# --------------------------------------------------------------------------- level 2 continues, level 1 recomputes


def test_level_2_continues_mid_rollout_and_level_1_recomputes_both_bitwise_equal(
    child: Child, tmp_path: Path, rng: random.Random
) -> None:
    a = run_a(tmp_path / "a.zarr", "deterministic", "lorenz96")
    log = tmp_path / "log.jsonl"
    k = rng.randint(3, len(LEADS) - 1)  # the k-th write is done but not committed
    for level in (2, 1):
        job = _job(
            f"B1-L{level}",
            "deterministic",
            "lorenz96",
            tmp_path / f"b{level}.zarr",
            log,
            tmp_path / f"ckpt{level}",
            level=level,
        )
        killed = _run(child, [dict(job, kill_at=k, kill_when="after")])
        assert killed.returncode == -signal.SIGKILL, str(killed)
    resumed = _run_ok(
        child,
        [
            _job(
                f"B2-L{level}",
                "deterministic",
                "lorenz96",
                tmp_path / f"b{level}.zarr",
                log,
                tmp_path / f"ckpt{level}",
                level=level,
            )
            for level in (2, 1)
        ],
    )
    committed = LEADS[k - 2]
    remaining = [lead for lead in LEADS if lead > committed]
    for level in (2, 1):
        assert resumed.start(f"B2-L{level}")["lead"] == committed
        assert [lead for _, lead in _writes(log, f"B2-L{level}")] == remaining
        assert_stores_equal(tmp_path / f"b{level}.zarr", a)
    # Level 2: the model restored its leapfrog state and yields only the next steps.
    assert [lead for _, lead in _yields(log, "B2-L2")] == remaining
    # Level 1: the rollout is recomputed from the initial condition.
    assert [lead for _, lead in _yields(log, "B2-L1")] == LEADS


# --------------------------------------------------------------------------- ensemble at level 0


def test_ensemble_resume_at_level_0_replays_the_perturbation(child: Child, tmp_path: Path, rng: random.Random) -> None:
    # Level 0 saves no component state: the perturbation's generator starts
    # again from its seed, so the workflow draws the noise of the completed
    # batches again before the resumed one, and every member gets the noise
    # of the uninterrupted run.
    a = run_a(tmp_path / "a.zarr", "ensemble", "persistence", 4, 2)
    b, ckpt, log = tmp_path / "b.zarr", tmp_path / "ckpt", tmp_path / "log.jsonl"
    job = _job("B1", "ensemble", "persistence", b, log, ckpt, level=0, nensemble=4, batch_size=2)
    k = rng.randint(len(LEADS) + 2, 2 * len(LEADS) - 1)  # inside the second batch, after a commit in it
    killed = _run(child, [dict(job, kill_at=k, kill_when="after")])
    assert killed.returncode == -signal.SIGKILL, str(killed)
    resumed = _run_ok(child, [dict(job, phase="B2")])
    start = resumed.start("B2")
    assert start["exists"] and start["completed"] == [0, 1]
    assert start["lead"] == LEADS[k - len(LEADS) - 2]
    # Persistence has no state to continue: the batch is rerun from lead 0,
    # and only the lead times after the committed one are written.
    assert _writes(log, "B2") == [((2, 3), lead) for lead in LEADS if lead > start["lead"]]
    assert_stores_equal(b, a)


# --------------------------------------------------------------------------- graceful stop


# By default: both signals, deterministic and ensemble workflows, a resume
# that continues (level 2) and one that recomputes (level 1), an uneven last
# batch. The diagnostic workflow stops through the same path (stress run).
@pytest.mark.parametrize(
    "workflow, level, sig, signal_at, nensemble",
    [
        pytest.param("deterministic", 2, signal.SIGTERM, 5, 4, id="deterministic-L2-SIGTERM"),
        pytest.param("diagnostic", 1, signal.SIGTERM, 2, 4, id="diagnostic-L1-SIGTERM", marks=pytest.mark.stress),
        pytest.param("ensemble", 1, signal.SIGUSR1, len(LEADS) + 3, 4, id="ensemble-L1-SIGUSR1"),
        pytest.param("ensemble", 2, signal.SIGTERM, len(LEADS) + 4, 5, id="ensemble-L2-SIGTERM"),
    ],
)
def test_stop_signal_commits_pending_writes_and_the_resume_does_not_redo_them(
    child: Child, tmp_path: Path, workflow: str, level: int, sig: int, signal_at: int, nensemble: int
) -> None:
    flush_interval, batch_size = 3, 2
    assert signal_at % flush_interval != 0  # there are uncommitted writes when the signal comes
    a = run_a(tmp_path / "a.zarr", workflow, "lorenz96", nensemble, batch_size)
    b, ckpt, log = tmp_path / "b.zarr", tmp_path / "ckpt", tmp_path / "log.jsonl"
    job = _job(
        "B1",
        workflow,
        "lorenz96",
        b,
        log,
        ckpt,
        level=level,
        flush_interval=flush_interval,
        nensemble=nensemble,
        batch_size=batch_size,
    )

    proc = _spawn(child, [dict(job, signal_at=signal_at, verbose=True)])
    assert proc.stdout is not None
    before_ready = []
    for line in proc.stdout:
        if line.startswith("{") and json.loads(line).get("ready"):
            break
        before_ready.append(line)
    else:
        raise AssertionError(f"child never got ready: rc={proc.wait(CHILD_TIMEOUT)}\n{''.join(before_ready)}")
    proc.send_signal(sig)
    # The child's stderr is in its output (the workflow reports the stop there:
    # test_memory_io_resumes_in_the_same_process_after_a_stop_signal checks the stream).
    output = _communicate(proc)
    assert proc.wait() == PREEMPTED_EXIT_CODE == 75, output
    assert f"{signal.Signals(sig).name} received" in output
    assert "Run the same command again to resume" in output

    everything = _all_writes(workflow, nensemble, batch_size)
    first = _writes(log, "B1")
    assert first == everything[:signal_at]
    latest = _catalog(ckpt)[-1]
    assert latest.write_count == signal_at  # the pending writes were committed
    last_members, last_lead = first[-1]
    assert latest.lead_time == np.timedelta64(last_lead, "h")
    if workflow == "ensemble":
        # The members of the batches before; with its final lead time, the last batch's too.
        assert latest.metadata["completed_ensembles"] == list(
            range(last_members[-1] + 1 if last_lead == LEADS[-1] else last_members[0])
        )

    resumed = _run_ok(child, [dict(job, phase="B2")])
    assert resumed.start("B2")["lead"] == last_lead
    second = _writes(log, "B2")
    assert second == everything[signal_at:]
    assert len(set(first + second)) == len(first + second)  # nothing written twice
    assert_stores_equal(b, a)


# --------------------------------------------------------------------------- late binding and schema changes


def test_components_bound_before_the_session_opens_are_restored_with_a_warning(
    child: Child, tmp_path: Path, rng: random.Random
) -> None:
    # Three batches: the third one draws its noise after the resume.
    a = run_a(tmp_path / "a.zarr", "ensemble", "lorenz96", 6, 2)
    b, ckpt, log = tmp_path / "b.zarr", tmp_path / "ckpt", tmp_path / "log.jsonl"
    job = _job("B1", "ensemble", "lorenz96", b, log, ckpt, level=2, bind="late", nensemble=6)
    k = rng.randint(len(LEADS) + 2, 2 * len(LEADS))  # inside the second batch
    killed = _run(child, [dict(job, kill_at=k, kill_when="after")])
    assert killed.returncode == -signal.SIGKILL, str(killed)
    # Binding late into a fresh catalog restores nothing, so it does not warn.
    started = [r for r in killed.lines if "start" in r]
    assert started and started[0]["start"]["exists"] is False

    def resume() -> list[Any]:
        checkpoint = Checkpoint("wf", path=ckpt, level=2)
        data = SyntheticData(NLAT, NLON, seed=0)
        model = Lorenz96(lat=data.lat, lon=data.lon)  # bound before the session opens
        pert = GaussianPerturbation(STD, PSEED)
        assert model.checkpoint.checkpoint_state_loaded is False
        with pytest.warns(CheckpointLateBindWarning) as record:
            with checkpoint as session:
                assert model.checkpoint.checkpoint_state_loaded and pert.checkpoint.checkpoint_state_loaded
                assert session.metadata["completed_ensembles"] == [0, 1]
                _call("ensemble", model, data, ZarrIO(b), pert, session, nensemble=6)
        return list(record)

    record = _in_fresh_context(resume)
    assert {type(w.message) for w in record} == {CheckpointLateBindWarning}
    message = " ".join(str(w.message) for w in record)
    assert "GaussianPerturbationState" in message and "Lorenz96State" in message
    assert_stores_equal(b, a)


SCHEMA_MODULE = "wfschema"
SCHEMA_SOURCE = '''
"""A Lorenz96 whose hidden state is a dataclass of this module."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from restartable import bind_checkpoint_state
from restartable.components import Lorenz96


@dataclass
class Lorenz96State:
    x_prev: torch.Tensor | None = None
    x_curr: torch.Tensor | None = None
    lead_time: np.timedelta64 | None = None
    batch_coords: dict[str, np.ndarray] = field(default_factory=dict)
#EXTRA


class CustomLorenz96(Lorenz96):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.checkpoint = bind_checkpoint_state(Lorenz96State())
'''


def test_resume_with_a_changed_component_dataclass_raises_schema_error(
    child: Child, tmp_path: Path, rng: random.Random
) -> None:
    # The user's module sits next to the child script (on its sys.path); each
    # child imports it afresh (the warm interpreter never imported it).
    source = child.script.parent / f"{SCHEMA_MODULE}.py"
    source.write_text(SCHEMA_SOURCE, encoding="utf-8")
    a = run_a(tmp_path / "a.zarr", "deterministic", "lorenz96")
    b, ckpt, log = tmp_path / "b.zarr", tmp_path / "ckpt", tmp_path / "log.jsonl"
    model = f"{SCHEMA_MODULE}:CustomLorenz96"
    job = _job("B1", "deterministic", model, b, log, ckpt, level=2)
    killed = _run(child, [dict(job, kill_at=rng.randint(3, len(LEADS)), kill_when="after")])
    assert killed.returncode == -signal.SIGKILL, str(killed)
    ids = _catalog(ckpt)[-1].state_ids
    assert f"{SCHEMA_MODULE}.Lorenz96State" in ids
    before = {name: value[0].tobytes() for name, value in _store(b).items()}

    # Same qualified name, one more field.
    source.write_text(SCHEMA_SOURCE.replace("#EXTRA", "    generation: int = 0"), encoding="utf-8")
    refused = _run(child, [dict(job, phase="inside"), dict(job, phase="late", bind="late")])
    assert refused.returncode == 0, str(refused)
    for phase in ("inside", "late"):
        error = refused.report(phase)["error"]
        assert error is not None and error["type"] == "CheckpointStateSchemaError", error
        assert "ValueError" in error["mro"]
        assert f"{SCHEMA_MODULE}.Lorenz96State" in error["message"]
        assert _writes(log, phase) == [] and _yields(log, phase) == []
    assert {name: value[0].tobytes() for name, value in _store(b).items()} == before

    # The refusal left the checkpoint usable: with the old definition the resume completes.
    source.write_text(SCHEMA_SOURCE, encoding="utf-8")
    _run_ok(child, [dict(job, phase="B2")])
    assert_stores_equal(b, a)


# --------------------------------------------------------------------------- rerunning a completed run


# By default every workflow and both modes (the ensemble, which keeps
# completed members in its rows, in both); the other pairs in the stress run.
@pytest.mark.parametrize(
    "mode, workflow",
    [
        ("overwrite", "deterministic"),
        pytest.param("append", "deterministic", marks=pytest.mark.stress),
        pytest.param("overwrite", "diagnostic", marks=pytest.mark.stress),
        ("append", "diagnostic"),
        ("overwrite", "ensemble"),
        ("append", "ensemble"),
    ],
)
def test_rerun_of_a_completed_run_writes_and_commits_nothing_new(workflow: str, mode: str, tmp_path: Path) -> None:
    def scenario() -> None:
        data = SyntheticData(NLAT, NLON, seed=0)
        io = ZarrIO(tmp_path / "out.zarr")

        def once() -> None:
            with Checkpoint("wf", path=tmp_path / "ckpt", mode=mode, level=2) as session:
                pert = GaussianPerturbation(STD, PSEED) if workflow == "ensemble" else None
                _call(workflow, Lorenz96(lat=data.lat, lon=data.lon), data, io, pert, session)

        once()
        rows = [e.commit_id for e in Checkpoint("wf", path=tmp_path / "ckpt").catalog]
        stored = {name: value[0].tobytes() for name, value in _store(tmp_path / "out.zarr").items()}
        once()
        assert {name: value[0].tobytes() for name, value in _store(tmp_path / "out.zarr").items()} == stored
        again = [e.commit_id for e in Checkpoint("wf", path=tmp_path / "ckpt").catalog]
        assert again == rows, "a rerun of a completed run committed a new catalog row"

    _in_fresh_context(scenario)


# --------------------------------------------------------------------------- run shape changes


def test_a_forecast_resumed_with_more_steps_continues_bitwise(tmp_path: Path) -> None:
    # "Resume and extend the forecast": the prefix of a rollout does not
    # depend on its length, so a run of 3 steps extended to 6 writes what a
    # run of 6 steps writes, continuing from the model's level-2 state.
    def scenario() -> None:
        data = SyntheticData(NLAT, NLON, seed=0)
        reference = MemoryIO()
        _call("deterministic", Lorenz96(lat=data.lat, lon=data.lon), data, reference, nsteps=6)
        io = MemoryIO()
        ckpt = tmp_path / "det"
        with Checkpoint("wf", path=ckpt) as session:
            _call("deterministic", Lorenz96(lat=data.lat, lon=data.lon), data, io, session=session, nsteps=3)
        yields: list[int] = []
        with Checkpoint("wf", path=ckpt) as session:
            model = Lorenz96(lat=data.lat, lon=data.lon)
            assert model.checkpoint.checkpoint_state_loaded
            longer = MemoryIO()
            longer.add_array(
                OrderedDict(
                    time=reference.coords["u10m"]["time"],
                    lead_time=reference.coords["u10m"]["lead_time"],
                    lat=data.lat,
                    lon=data.lon,
                ),
                ["u10m", "v10m"],
            )
            for name in ("u10m", "v10m"):
                longer[name][:, :4] = io[name]
            original = longer.write

            def write(x: Any, coords: Any, names: Any) -> None:
                yields.append(int(np.asarray(coords["lead_time"])[0] // np.timedelta64(1, "h")))
                original(x, coords, names)

            longer.write = write  # type: ignore[method-assign]
            _call("deterministic", model, data, longer, session=session, nsteps=6)
        assert yields == [24, 30, 36]  # only the new lead times
        for name in ("u10m", "v10m"):
            assert longer[name].tobytes() == reference[name].tobytes()
        # Fewer steps than done: nothing left to do, nothing committed.
        rows = [e.commit_id for e in Checkpoint("wf", path=ckpt).catalog]
        with Checkpoint("wf", path=ckpt) as session:
            _call("deterministic", Lorenz96(lat=data.lat, lon=data.lon), data, MemoryIO(), session=session, nsteps=2)
        assert [e.commit_id for e in Checkpoint("wf", path=ckpt).catalog] == rows

    _in_fresh_context(scenario)


def test_resuming_a_different_run_raises_value_error_saying_what_differs(tmp_path: Path) -> None:
    def scenario() -> None:
        data = SyntheticData(NLAT, NLON, seed=0)
        det = tmp_path / "det"
        with Checkpoint("wf", path=det) as session:
            _call(
                "deterministic", Persistence(["u10m"], data.lat, data.lon), data, MemoryIO(), session=session, nsteps=3
            )
        refused = [
            (
                dict(time=["2024-01-02T00:00"]),
                Persistence(["u10m"], data.lat, data.lon),
                r"time was \['2024-01-01T00:00:00.000000000'\], now \['2024-01-02",
            ),
            ({}, Persistence(["v10m"], data.lat, data.lon), "model's coordinates have the same sizes"),
            (
                {},
                Persistence(["u10m", "v10m"], data.lat, data.lon),
                "model's coordinates were .*'variable': 1.*now .*'variable': 2",
            ),
        ]
        for kwargs, model, message in refused:
            io = MemoryIO()
            with Checkpoint("wf", path=det) as session:
                with pytest.raises(ValueError, match=message) as excinfo:
                    deterministic(kwargs.get("time", TIME), 3, model, data, io, verbose=False, checkpoint=session)
            assert str(det) in str(excinfo.value)
            assert io.arrays == {}  # refused before laying out the IO

        ens = tmp_path / "ens"
        with Checkpoint("wf", path=ens) as session:
            pert = GaussianPerturbation(STD, PSEED)
            _call(
                "ensemble",
                Persistence(["u10m"], data.lat, data.lon),
                data,
                MemoryIO(),
                pert,
                session,
                nsteps=2,
                nensemble=3,
                batch_size=2,
            )
        for changed, message in (
            (dict(batch_size=1), "batch_size was 2, now 1"),
            (dict(nsteps=3), "completed with nsteps=2"),
        ):
            shape = dict(nsteps=2, nensemble=3, batch_size=2) | changed
            io = MemoryIO()
            with Checkpoint("wf", path=ens) as session:
                pert = GaussianPerturbation(STD, PSEED)
                with pytest.raises(ValueError, match=message):
                    _call("ensemble", Persistence(["u10m"], data.lat, data.lon), data, io, pert, session, **shape)
            assert io.arrays == {}
        # The same shape is accepted (and has nothing left to do).
        io = MemoryIO()
        with Checkpoint("wf", path=ens) as session:
            pert = GaussianPerturbation(STD, PSEED)
            _call(
                "ensemble",
                Persistence(["u10m"], data.lat, data.lon),
                data,
                io,
                pert,
                session,
                nsteps=2,
                nensemble=3,
                batch_size=2,
            )
        assert np.isnan(io["u10m"]).all()

    _in_fresh_context(scenario)


def test_an_ensemble_resumed_with_more_members_runs_only_the_new_ones(tmp_path: Path) -> None:
    # 4 members in batches of 2, then 6: the new batch (members 4-5) gets
    # the noise it gets in an uninterrupted run of 6, since 4 is a multiple
    # of the batch size.
    def scenario() -> None:
        data = SyntheticData(NLAT, NLON, seed=0)
        reference = MemoryIO()
        _call(
            "ensemble",
            Lorenz96(lat=data.lat, lon=data.lon),
            data,
            reference,
            GaussianPerturbation(STD, PSEED),
            nsteps=2,
            nensemble=6,
        )
        ckpt = tmp_path / "ens"
        first = MemoryIO()
        with Checkpoint("wf", path=ckpt, level=2) as session:
            _call(
                "ensemble",
                Lorenz96(lat=data.lat, lon=data.lon),
                data,
                first,
                GaussianPerturbation(STD, PSEED),
                session,
                nsteps=2,
                nensemble=4,
            )
        assert Checkpoint("wf", path=ckpt).select(-1).metadata_value("completed_ensembles") == [0, 1, 2, 3]
        more = MemoryIO()
        with Checkpoint("wf", path=ckpt, level=2) as session:
            _call(
                "ensemble",
                Lorenz96(lat=data.lat, lon=data.lon),
                data,
                more,
                GaussianPerturbation(STD, PSEED),
                session,
                nsteps=2,
                nensemble=6,
            )
        assert Checkpoint("wf", path=ckpt).select(-1).metadata_value("completed_ensembles") == [0, 1, 2, 3, 4, 5]
        for name in ("u10m", "v10m"):
            assert np.isnan(more[name][:4]).all()  # the completed members were not run again
            assert more[name][4:].tobytes() == reference[name][4:].tobytes()
            assert first[name].tobytes() == reference[name][:4].tobytes()

    _in_fresh_context(scenario)


# --------------------------------------------------------------------------- IO backends


def _coords(nlead: int = 3) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        time=np.array(["2024-01-01T00"], dtype="datetime64[ns]"),
        lead_time=(np.arange(nlead) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
        lat=np.array([10.0, -10.0]),
    )


def _write_lead(io: Any, index: int, value: float) -> None:
    coords = _coords()
    part = OrderedDict(coords, lead_time=coords["lead_time"][index : index + 1])
    x = torch.full((1, 1, 2), value, dtype=torch.float32)
    io.write([x, x + 1], part, ["t2m", "z500"])


def test_memory_io_add_array_on_an_existing_array_keeps_its_data() -> None:
    io = MemoryIO()
    io.add_array(_coords(), ["t2m", "z500"])
    _write_lead(io, 1, 3.5)
    snapshot = {name: io[name].copy() for name in ("t2m", "z500")}
    io.add_array(_coords(), ["t2m", "z500"])  # as a resumed workflow does
    for name in snapshot:
        assert io[name].tobytes() == snapshot[name].tobytes()
    assert io["t2m"][0, 1].tolist() == [3.5, 3.5] and io["z500"][0, 1].tolist() == [4.5, 4.5]
    assert np.isnan(io["t2m"][0, [0, 2]]).all()
    with pytest.raises(ValueError, match="other coordinates"):
        io.add_array(_coords(4), "t2m")
    assert io["t2m"].tobytes() == snapshot["t2m"].tobytes()


def test_zarr_io_add_array_on_an_existing_array_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    io = ZarrIO(path)
    io.add_array(_coords(), ["t2m", "z500"])
    _write_lead(io, 1, 3.5)
    io.add_array(_coords(), ["t2m", "z500"])
    reopened = ZarrIO(path)  # a resumed process opens the store again
    reopened.add_array(_coords(), ["t2m", "z500"])
    for store in (io, reopened):
        t2m, z500 = store["t2m"][...], store["z500"][...]
        assert t2m[0, 1].tolist() == [3.5, 3.5] and z500[0, 1].tolist() == [4.5, 4.5]
        assert np.isnan(t2m[0, [0, 2]]).all() and np.isnan(z500[0, [0, 2]]).all()
    coords = reopened.coords("t2m")
    assert list(coords) == ["time", "lead_time", "lat"]
    assert coords["lead_time"].dtype == np.dtype("timedelta64[ns]") and np.array_equal(
        coords["lead_time"], _coords()["lead_time"]
    )
    _write_lead(reopened, 2, -1.0)
    assert np.array_equal(
        ZarrIO(path)["t2m"][0], np.array([[np.nan, np.nan], [3.5, 3.5], [-1.0, -1.0]], np.float32), equal_nan=True
    )
    with pytest.raises(ValueError):
        reopened.add_array(_coords(4), "t2m")  # other lead times: refused, not clobbered
    assert ZarrIO(path)["t2m"][0, 1].tolist() == [3.5, 3.5]


# --------------------------------------------------------------------------- in-process stop and resume into MemoryIO


class _StopAt(MemoryIO):
    """A MemoryIO that logs the lead times written and raises a stop signal at one write."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.stop_at, self.calls, self.leads = stop_at, 0, []

    def write(self, x: Any, coords: Any, names: Any) -> None:
        super().write(x, coords, names)
        self.calls += 1
        self.leads.append(int(np.asarray(coords["lead_time"])[-1] / np.timedelta64(1, "h")))
        if self.calls == self.stop_at:
            signal.raise_signal(signal.SIGTERM)


def test_memory_io_resumes_in_the_same_process_after_a_stop_signal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def scenario() -> None:
        data = SyntheticData(NLAT, NLON, seed=0)
        reference = MemoryIO()
        deterministic(TIME, NSTEPS, Lorenz96(lat=data.lat, lon=data.lon), data, reference, verbose=False)

        io = _StopAt(stop_at=4)
        handler_before = signal.getsignal(signal.SIGTERM)
        with Checkpoint("wf", path=tmp_path / "ckpt", flush_interval=3, level=2) as session:
            model = Lorenz96(lat=data.lat, lon=data.lon)
            with pytest.raises(WorkflowPreempted) as stopped:
                deterministic(TIME, NSTEPS, model, data, io, verbose=False, checkpoint=session)
        assert stopped.value.code == PREEMPTED_EXIT_CODE
        assert "SIGTERM received" in str(stopped.value)
        assert io.leads == LEADS[:4]
        assert signal.getsignal(signal.SIGTERM) is handler_before  # the workflow put the old handler back
        first = list(io.leads)

        with Checkpoint("wf", path=tmp_path / "ckpt", flush_interval=3, level=2) as session:
            assert session.lead_time == np.timedelta64(LEADS[3], "h")
            model = Lorenz96(lat=data.lat, lon=data.lon)
            io.stop_at = None
            deterministic(TIME, NSTEPS, model, data, io, verbose=False, checkpoint=session)
        assert io.leads == first + LEADS[4:]  # nothing written twice
        for name in ("u10m", "v10m"):
            assert not np.isnan(io[name]).any()
            assert io[name].tobytes() == reference[name].tobytes()
        for dim, values in reference.coords["u10m"].items():
            assert np.array_equal(io.coords["u10m"][dim], values)

    _in_fresh_context(scenario)
    assert "Run the same command again to resume" in capsys.readouterr().err
