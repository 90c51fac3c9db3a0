"""What earth2studio's own tests expect of the bridge, with earth2studio's real components.

Each scenario runs under ``restartable.earth2studio.install()`` in one child
process (installing changes interpreter-wide state, and importing
earth2studio costs ~11 s of CPU, so they share one), with earth2studio's
``Persistence``, ``Identity``, ``Random``, ``Zero``, ``Gaussian`` and
``ZarrBackend``. The child prints one JSON line of facts per scenario; the
tests assert on them. These are our own tests of the behaviours that
earth2studio's ``test/run`` and ``test/utils/test_checkpoint.py`` cover
(see docs/architecture.md, "The earth2studio bridge").

Rank detection through PhysicsNeMo needs no earth2studio and is tested in
this process, against ``restartable.earth2studio.checkpoint`` imported
directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import restartable
from restartable.earth2studio import checkpoint as e2c

needs_earth2studio = pytest.mark.skipif(
    importlib.util.find_spec("earth2studio") is None or importlib.util.find_spec("zarr") is None,
    reason="earth2studio and zarr are needed",
)

SCENARIOS = r'''
import json
import sys
from collections import OrderedDict
from pathlib import Path

import restartable.earth2studio
restartable.earth2studio.install()

import numpy as np
import torch
import earth2studio.run as run
from earth2studio.data import Random
from earth2studio.io import ZarrBackend
from earth2studio.models.dx import Identity
from earth2studio.models.px import Persistence
from earth2studio.perturbation import Gaussian, Zero
from earth2studio.utils.checkpoint import Checkpoint

ROOT = Path(sys.argv[1])
DOMAIN = OrderedDict(lat=np.arange(3, dtype=float), lon=np.arange(5, dtype=float))
VARIABLES = ["u10m", "v10m"]


def report(name, **facts):
    print(json.dumps({"scenario": name, **facts}), flush=True)


class Recording:
    """An IO backend that records what it is given."""

    def __init__(self):
        self.arrays, self.writes = {}, []

    def add_array(self, coords, array_name, **kwargs):
        for name in [array_name] if isinstance(array_name, str) else list(array_name):
            self.arrays[name] = {k: int(np.asarray(v).size) for k, v in coords.items()}

    def write(self, x, coords, array_name):
        members = [int(m) for m in coords["ensemble"]] if "ensemble" in coords else None
        lead = coords.get("lead_time")
        hours = None if lead is None else [int(h) for h in np.asarray(lead) // np.timedelta64(1, "h")]
        self.writes.append({"names": list(array_name), "dims": list(coords), "lead": hours, "members": members})


class OnlyVariables(torch.nn.Module):
    """A diagnostic that names only batch and variable: it keeps the first variable."""

    def input_coords(self):
        return OrderedDict(batch=np.empty(0), variable=np.array(VARIABLES))

    def output_coords(self, input_coords):
        return OrderedDict(batch=np.empty(0), variable=np.array(VARIABLES[:1]))

    def __call__(self, x, coords):
        axis = list(coords).index("variable")
        out = OrderedDict(coords)
        out["variable"] = np.array(VARIABLES[:1])
        return x.narrow(axis, 0, 1), out


def run_diagnostic(diagnostic):
    io = Recording()
    run.diagnostic(["2024-01-01"], 2, Persistence(VARIABLES, DOMAIN), diagnostic, Random(domain_coords=DOMAIN), io,
                   device="cpu", verbose=False)
    return io


io = run_diagnostic(Identity())
report("identity", arrays=io.arrays, writes=len(io.writes), dims=io.writes[0]["dims"])
io = run_diagnostic(OnlyVariables())
report("only-variables", arrays=io.arrays, writes=len(io.writes), dims=io.writes[0]["dims"])

# Level 1: the rerun of a longer forecast starts at lead 0 and writes it all again.
io = Recording()
checkpoint = Checkpoint("level1", path=ROOT / "level1", mode="append", level=1)
for nsteps in (1, 3):
    run.deterministic(["2024-01-01"], nsteps, Persistence(VARIABLES, DOMAIN), Random(domain_coords=DOMAIN), io,
                      device="cpu", verbose=False, checkpoint=checkpoint)
report("level1", leads=[w["lead"][0] for w in io.writes], last=str(checkpoint.select(-1).lead_time))

# Level 2: resumed with more steps, the forecast continues from the model's state.
io = Recording()
checkpoint = Checkpoint("extend", path=ROOT / "extend", mode="append")
for nsteps in (1, 3):
    with checkpoint.select(-1) if nsteps == 3 else checkpoint as session:
        run.deterministic(["2024-01-01"], nsteps, Persistence(VARIABLES, DOMAIN), Random(domain_coords=DOMAIN), io,
                          device="cpu", verbose=False, checkpoint=session)
last = checkpoint.select(-1)
report("extend", leads=[w["lead"][0] for w in io.writes], last=str(last.lead_time), write_count=last.write_count)

# A different run is refused, with what differs.
try:
    run.deterministic(["2024-02-01"], 3, Persistence(VARIABLES, DOMAIN), Random(domain_coords=DOMAIN), Recording(),
                      device="cpu", verbose=False, checkpoint=checkpoint)
except ValueError as exc:
    report("other-time", error=str(exc))

# An ensemble resumed with more members runs only the new ones, and records
# earth2studio's list of completed members.
io = Recording()
checkpoint = Checkpoint("members", path=ROOT / "members", mode="append")
for nensemble in (1, 3):
    run.ensemble(["2024-01-01"], 1, nensemble, Persistence(VARIABLES, DOMAIN), Random(domain_coords=DOMAIN), io, Zero(),
                 batch_size=1, device="cpu", verbose=False, checkpoint=checkpoint)
report("members", written=[(w["members"], w["lead"][0]) for w in io.writes],
       completed=checkpoint.select(-1).metadata_value("completed_ensembles"))

# A row whose completed_ensembles is earth2studio's list (here written by
# hand, mid-member 1 at level 1): the run goes on from member 1, rerun from 0.
io = Recording()
checkpoint = Checkpoint("e2s-row", path=ROOT / "e2s-row", mode="append", level=1)
with checkpoint as session:
    session.write(lead_time=np.timedelta64(6, "h"), completed_ensembles=[0])
run.ensemble(["2024-01-01"], 2, 3, Persistence(VARIABLES, DOMAIN), Random(domain_coords=DOMAIN), io, Gaussian(seed=3),
             batch_size=1, device="cpu", verbose=False, checkpoint=checkpoint)
report("e2s-row", written=[(w["members"], w["lead"][0]) for w in io.writes],
       completed=checkpoint.select(-1).metadata_value("completed_ensembles"))
'''


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("e2s-behaviours")
    script = root / "scenarios.py"
    script.write_text(SCENARIOS)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "WORLD_SIZE")}
    env.update(EARTH2STUDIO_CACHE=str(root / "cache"), LOGURU_LEVEL="WARNING")
    done = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {line.pop("scenario"): line for line in lines}


@needs_earth2studio
def test_diagnostic_identity_keeps_the_prognostic_grid(facts: dict[str, Any]) -> None:
    # earth2studio's Identity has input coordinates of batch only (no
    # "variable"); the IO arrays have the prognostic's lat/lon.
    identity = facts["identity"]
    assert identity["arrays"] == {name: {"time": 1, "lead_time": 3, "lat": 3, "lon": 5} for name in ("u10m", "v10m")}
    assert identity["writes"] == 3
    assert identity["dims"] == ["time", "lead_time", "lat", "lon"]


@needs_earth2studio
def test_diagnostic_that_names_only_variables_keeps_lat_and_lon(facts: dict[str, Any]) -> None:
    only = facts["only-variables"]
    assert only["arrays"] == {"u10m": {"time": 1, "lead_time": 3, "lat": 3, "lon": 5}}
    assert only["writes"] == 3 and only["dims"] == ["time", "lead_time", "lat", "lon"]


@needs_earth2studio
def test_level_1_rerun_writes_every_lead_time_again(facts: dict[str, Any]) -> None:
    # earth2studio's test counts the writes: 2 for the first run, 4 for the
    # longer rerun from lead 0.
    assert facts["level1"]["leads"] == [0, 6, 0, 6, 12, 18]
    assert facts["level1"]["last"] == "18 hours"


@needs_earth2studio
def test_resume_with_more_steps_continues_the_forecast(facts: dict[str, Any]) -> None:
    extend = facts["extend"]
    assert extend["leads"] == [0, 6, 12, 18]  # the resumed model continued after 6 h
    assert extend["last"] == "18 hours" and extend["write_count"] == 4


@needs_earth2studio
def test_other_times_are_refused_with_what_differs(facts: dict[str, Any]) -> None:
    error = facts["other-time"]["error"]
    assert "different run" in error and "time was ['2024-01-01T00:00:00.000000000'], now ['2024-02-01" in error


@needs_earth2studio
def test_ensemble_resumed_with_more_members_runs_only_the_new_ones(facts: dict[str, Any]) -> None:
    members = facts["members"]
    assert members["written"] == [[[0], 0], [[0], 6], [[1], 0], [[1], 6], [[2], 0], [[2], 6]]
    assert members["completed"] == [0, 1, 2]


@needs_earth2studio
def test_rows_with_earth2studios_completed_list_are_resumed(facts: dict[str, Any]) -> None:
    row = facts["e2s-row"]
    # Member 1 is rerun from lead 0 (level 1: nothing to continue), its
    # lead times written again as earth2studio does; member 0 is not rerun.
    assert row["written"][:3] == [[[1], 0], [[1], 6], [[1], 12]]
    assert [m for m, _ in row["written"]] == [[1]] * 3 + [[2]] * 3
    assert row["completed"] == [0, 1, 2]


# --------------------------------------------------------------------------- PhysicsNeMo rank detection


def _physicsnemo(monkeypatch: pytest.MonkeyPatch, initialized: bool, rank: int = 3, world_size: int = 4) -> type:
    """A ``physicsnemo`` package in ``sys.modules`` without a ``__spec__``,
    as a test stand-in or a lazy importer leaves it."""
    package = ModuleType("physicsnemo")
    package.__path__ = []  # type: ignore[attr-defined]
    distributed = ModuleType("physicsnemo.distributed")

    class DistributedManager:
        initialize_calls = 0

        @classmethod
        def is_initialized(cls) -> bool:
            return initialized or cls.initialize_calls > 0

        @classmethod
        def initialize(cls) -> None:
            cls.initialize_calls += 1

        def __init__(self) -> None:
            if not type(self).is_initialized():
                raise AssertionError("DistributedManager constructed before initialize()")
            self.rank, self.world_size = rank, world_size

    distributed.DistributedManager = DistributedManager  # type: ignore[attr-defined]
    package.distributed = distributed  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "physicsnemo", package)
    monkeypatch.setitem(sys.modules, "physicsnemo.distributed", distributed)
    for name in (
        "RANK",
        "LOCAL_RANK",
        "SLURM_PROCID",
        "OMPI_COMM_WORLD_RANK",
        "WORLD_SIZE",
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)
    return DistributedManager


def test_bridged_checkpoint_initializes_physicsnemo_as_earth2studio_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = _physicsnemo(monkeypatch, initialized=False)
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    assert (checkpoint.rank, checkpoint.world_size) == (3, 4)
    assert manager.initialize_calls == 1
    assert checkpoint.rank_path == tmp_path / "rank_000003"


def test_restartable_checkpoint_leaves_physicsnemo_uninitialized(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # restartable's own Checkpoint asks an initialised manager only: an
    # initialize() may start a process group behind the program's back.
    manager = _physicsnemo(monkeypatch, initialized=False)
    checkpoint = restartable.Checkpoint("forecast", path=tmp_path)
    assert (checkpoint.rank, checkpoint.world_size) == (0, 1)
    assert manager.initialize_calls == 0
    _physicsnemo(monkeypatch, initialized=True, rank=1, world_size=2)
    assert (
        restartable.Checkpoint("forecast", path=tmp_path).rank,
        restartable.Checkpoint("forecast", path=tmp_path).world_size,
    ) == (1, 2)


def test_serial_physicsnemo_manager_lets_the_environment_decide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _physicsnemo(monkeypatch, initialized=True, rank=0, world_size=1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    assert (checkpoint.rank, checkpoint.world_size) == (2, 4)


def test_bridged_workflows_are_restartables_with_earth2studios_rewrite() -> None:
    import inspect

    from restartable import workflows
    from restartable.earth2studio import run

    for name in ("deterministic", "diagnostic", "ensemble"):
        bridged, own = getattr(run, name), getattr(workflows, name)
        assert bridged.__module__ == "restartable.earth2studio.run" and bridged.__wrapped__ is own
        assert inspect.signature(bridged).parameters["rewrite"].default is True
        assert inspect.signature(own).parameters["rewrite"].default is False
        assert list(inspect.signature(bridged).parameters) == list(inspect.signature(own).parameters)
