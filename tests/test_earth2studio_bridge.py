"""The earth2studio bridge against the real earth2studio 0.19: install/uninstall,
``python -m restartable.earth2studio``, kill-and-resume of earth2studio's own
workflows and components, and ``import-earth2studio`` of stores that
earth2studio itself wrote.

``install()``/``uninstall()`` change interpreter-wide state (``sys.modules``,
attributes of earth2studio's modules), so everything that installs the
bridge or imports earth2studio runs in a fresh child process; this process
never imports earth2studio.

Importing ``earth2studio.run`` costs ~11 s of CPU, so the module keeps the
number of such children small: each forecast process runs several workflows
in turn (a resumed run goes on to the next workflow, which the next kill
interrupts), and the module-scoped ``runs`` fixture starts all scenarios at
once, as chains of processes on threads, so that both CPUs stay busy while
the steps of one chain wait on each other. One uninterrupted earth2studio run
(no bridge, no checkpoint) is the reference every resumed run must equal.

Kill points are deterministic: the forecast script's IO backend (a
``ZarrBackend`` subclass) prints ``@@W <workflow> <lead hours> <members>``
after each write and, when gated, waits for a line on stdin; this process
answers each line or SIGKILLs the child while it waits, so a run dies right
after the N-th IO write and before the checkpoint boundary that follows it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from warm_python import XARRAY_WARMUP, WarmProcess, WarmPython

_RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "WORLD_SIZE", "SLURM_NTASKS")
# A guard against hangs, not a measure of speed: children wait for a CPU
# (see _SLOTS) before they start, so this bounds one child's own run.
_TIMEOUT = 600
# At most one child process per CPU at a time: the module's chains start
# together, and on a busy 2-CPU machine a dozen processes importing
# earth2studio at once would each take minutes.
_SLOTS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("earth2studio") is None or importlib.util.find_spec("zarr") is None,
        reason="earth2studio and zarr are needed",
    ),
    # The first test to need the module's runs waits for them (each chain
    # is a few processes that import earth2studio, one per CPU at a time).
    pytest.mark.timeout(3 * _TIMEOUT),
]


# --------------------------------------------------------------------------- scripts

# An ordinary earth2studio forecast script: nothing in it knows restartable.
# --what picks the workflows to run, in order: det (run.deterministic with
# Persistence), ens (run.ensemble with Persistence and Gaussian(seed=7)),
# plus (run.deterministic with PlusOne, a prognostic that binds no state),
# ens64 (as ens, with a float64 data source). --ckpt DIR gives each workflow
# Checkpoint(<what>, path=DIR/<what>), created before its components (as
# earth2studio's docs do); without it the workflows get no checkpoint.
# The ensemble probes run 4 members in batches of 1 with Gaussian(seed=11):
# m1before (Persistence and Gaussian built before the Checkpoint exists, as
# earth2studio's basic use does), m1inside (built inside the checkpoint's
# session) and m1plus (PlusOne, no checkpoint support, built before).
FORECAST = r'''
import argparse
import contextlib
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
import xarray as xr

from earth2studio import run
from earth2studio.io import ZarrBackend
from earth2studio.models.px import Persistence
from earth2studio.perturbation import Gaussian
from earth2studio.utils.checkpoint import Checkpoint

LAT = np.linspace(60.0, -60.0, 4)
LON = np.linspace(0.0, 315.0, 8)
DOMAIN = OrderedDict(lat=LAT, lon=LON)
VARIABLES = ["t2m", "u10m"]
TIME = ["2024-01-01T00:00"]
GATE = os.environ.get("E2S_TEST_GATE") == "1"


class FixedSource:
    """A DataSource returning the same irregular, strictly positive values on every call."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __call__(self, time, variable):
        time = np.atleast_1d(np.asarray(time, dtype="datetime64[ns]"))
        variable = [str(v) for v in np.atleast_1d(variable)]
        n = len(time) * len(variable) * len(LAT) * len(LON)
        values = np.abs(np.sin(np.arange(n, dtype=np.float64) * 1.7)) * 10 + 3
        values = values.reshape(len(time), len(variable), len(LAT), len(LON)).astype(self.dtype)
        return xr.DataArray(values, dims=["time", "variable", "lat", "lon"],
                            coords=dict(time=time, variable=variable, lat=LAT, lon=LON))


class PlusOne(torch.nn.Module):
    """An earth2studio-style prognostic without checkpoint support: x + 1 per 6 h step."""

    def input_coords(self):
        return OrderedDict(batch=np.empty(0), lead_time=np.array([np.timedelta64(0, "h")]),
                           variable=np.array(VARIABLES), lat=LAT, lon=LON)

    def output_coords(self, input_coords):
        out = OrderedDict(input_coords)
        out["lead_time"] = np.asarray(input_coords["lead_time"])[-1:] + np.timedelta64(6, "h")
        return out

    def __call__(self, x, coords):
        return x + 1, self.output_coords(coords)

    def create_iterator(self, x, coords):
        coords = OrderedDict(coords)
        yield x, coords
        while True:
            x, coords = self(x, coords)
            yield x, coords


class LoggedZarr(ZarrBackend):
    """ZarrBackend that reports each write (and, gated, waits for the test's go-ahead)."""

    def __init__(self, path, tag):
        super().__init__(path)
        self.tag = tag

    def write(self, x, coords, array_name):
        super().write(x, coords, array_name)
        lead = int(np.asarray(coords["lead_time"]).reshape(-1)[-1] // np.timedelta64(1, "h"))
        members = ",".join(str(int(m)) for m in coords["ensemble"]) if "ensemble" in coords else "-"
        print(f"@@W {self.tag} {lead} {members}", flush=True)
        if GATE and not sys.stdin.readline():
            os._exit(3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--what", default="det")
    parser.add_argument("--ckpt")
    args = parser.parse_args()
    print(f"@@INFO {Checkpoint.__module__} {run.deterministic.__module__}", flush=True)
    for what in args.what.split(","):
        kwargs = {}
        if args.ckpt:
            kwargs["checkpoint"] = Checkpoint(what, path=os.path.join(args.ckpt, what))
        io = LoggedZarr(os.path.join(args.out, what + ".zarr"), what)
        if what == "det":
            run.deterministic(TIME, 5, Persistence(VARIABLES, DOMAIN), FixedSource("float32"), io,
                              device="cpu", verbose=False, **kwargs)
        elif what == "plus":
            run.deterministic(TIME, 8, PlusOne(), FixedSource("float32"), io, device="cpu", verbose=False, **kwargs)
        elif what in ("ens", "ens64"):
            source = FixedSource("float32" if what == "ens" else "float64")
            run.ensemble(TIME, 2, 4, Persistence(VARIABLES, DOMAIN), source, io, Gaussian(seed=7),
                         batch_size=2, device="cpu", verbose=False, **kwargs)
        elif what in ("m1before", "m1plus"):
            model = PlusOne() if what == "m1plus" else Persistence(VARIABLES, DOMAIN)
            perturbation = Gaussian(seed=11)
            if args.ckpt:  # created only now: the components above are not bound to it
                kwargs["checkpoint"] = Checkpoint(what, path=os.path.join(args.ckpt, what))
            run.ensemble(TIME, 2, 4, model, FixedSource("float32"), io, perturbation,
                         batch_size=1, device="cpu", verbose=False, **kwargs)
        elif what == "m1inside":
            with kwargs.pop("checkpoint", contextlib.nullcontext()) as session:
                model, perturbation = Persistence(VARIABLES, DOMAIN), Gaussian(seed=11)
                if session is not None:
                    kwargs["checkpoint"] = session
                run.ensemble(TIME, 2, 4, model, FixedSource("float32"), io, perturbation,
                             batch_size=1, device="cpu", verbose=False, **kwargs)
        else:
            raise SystemExit(f"unknown workflow {what}")
        print(f"@@DONE {what}", flush=True)


main()
'''

# ----------------------------------------------------------------- child processes


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _RANK_VARS and k != "E2S_TEST_GATE"}
    env.update(
        EARTH2STUDIO_CACHE=str(root / "e2s-cache"),
        RESTARTABLE_CACHE=str(root / "restartable-cache"),
        PYTHONUNBUFFERED="1",
        LOGURU_LEVEL="WARNING",
    )
    return env


class Child:
    """A child process whose stdout lines are collected as they come.

    With ``kill_when``, the child is gated: after each ``@@W`` line it waits
    on stdin, and this process either lets it go on or SIGKILLs it when
    ``kill_when(writes)`` is true (``writes``: the ``@@W`` lines so far, split).
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        kill_when: Callable[[list[list[str]]], bool] | None = None,
        warm: WarmPython | None = None,
    ) -> None:
        env = dict(env)
        if kill_when is not None:
            env["E2S_TEST_GATE"] = "1"
        self.argv = argv
        self.kill_when = kill_when
        self.lines: list[str] = []
        self.writes: list[list[str]] = []
        self.killed = False
        _SLOTS.acquire()  # released by the reader once the process has ended
        stdin = subprocess.PIPE if kill_when is not None else subprocess.DEVNULL
        try:
            self.proc: subprocess.Popen[str] | WarmProcess = (
                subprocess.Popen(
                    argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                if warm is None
                else warm.popen(argv, env=env, cwd=cwd, stdin=stdin)
            )
        except BaseException:
            _SLOTS.release()
            raise
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        try:
            self._read()
        finally:
            self.proc.wait()
            _SLOTS.release()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if not line.startswith("@@W "):
                continue
            self.writes.append(line.split()[1:])
            if self.kill_when is None or self.killed:
                continue
            if self.kill_when(self.writes):
                self.proc.send_signal(signal.SIGKILL)
                self.killed = True
            else:
                try:
                    assert self.proc.stdin is not None
                    self.proc.stdin.write("\n")
                    self.proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass

    def result(self, timeout: float = _TIMEOUT) -> Child:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.argv} timed out:\n{self.output}") from None
        self._reader.join(30)
        return self

    @property
    def output(self) -> str:
        return "".join(self.lines)[-6000:]

    def writes_of(self, tag: str) -> list[list[str]]:
        return [w for w in self.writes if w[0] == tag]

    def info(self) -> list[str]:
        return next(line.split()[1:] for line in self.lines if line.startswith("@@INFO "))

    def completed(self) -> Child:
        self.result()
        assert self.proc.returncode == 0 and not self.killed, (
            f"{self.argv} failed ({self.proc.returncode}):\n{self.output}"
        )
        return self

    def was_killed(self) -> Child:
        self.result()
        assert self.killed and self.proc.returncode == -signal.SIGKILL, (
            f"{self.argv} was not killed as planned ({self.proc.returncode}):\n{self.output}"
        )
        return self


def _kill_at(tag: str, count: int) -> Callable[[list[list[str]]], bool]:
    return lambda writes: sum(1 for w in writes if w[0] == tag) >= count


# What FORECAST imports, for the warm interpreters its runs are forked from.
_PRELOAD = (
    """
import numpy, torch, xarray
import earth2studio.run, earth2studio.io, earth2studio.models.px, earth2studio.perturbation
import earth2studio.utils.checkpoint
"""
    + XARRAY_WARMUP
)


def _forecast(script: Path, out: Path, what: str, ckpt: Path | None = None, bridge: bool = False) -> list[str]:
    argv = [sys.executable]
    if bridge:
        argv += ["-m", "restartable.earth2studio"]
    argv += [str(script), str(out), "--what", what]
    if ckpt is not None:
        argv += ["--ckpt", str(ckpt)]
    return argv


def _python(code: str, *args: str, env: dict[str, str], cwd: Path, warm: WarmPython | None = None) -> Child:
    return Child([sys.executable, "-c", textwrap.dedent(code), *args], env, cwd, warm=warm)


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "restartable.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=_TIMEOUT,
    )


# ------------------------------------------------------------------ zarr comparison


def _zarr_arrays(path: Path) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][...]) for name in sorted(group.array_keys())}


def _assert_zarr_identical(actual: Path, expected: Path) -> None:
    got, want = _zarr_arrays(actual), _zarr_arrays(expected)
    assert list(got) == list(want), f"{actual}: arrays {list(got)} != {list(want)}"
    for name in want:
        a, e = got[name], want[name]
        assert a.dtype == e.dtype and a.shape == e.shape, f"{name}: {a.dtype}{a.shape} != {e.dtype}{e.shape}"
        if a.tobytes() != e.tobytes():
            differ = int(np.sum(a != e)) if a.dtype.kind in "fiu" else "some"
            raise AssertionError(f"{actual}/{name}: {differ} of {a.size} values differ from the uninterrupted run")


def _data_arrays(path: Path) -> dict[str, np.ndarray]:
    return {name: a for name, a in _zarr_arrays(path).items() if name in ("t2m", "u10m")}


# -------------------------------------------------------------- shared background runs


class _Chain:
    """Steps run one after the other on a thread; :meth:`get` returns their result or raises their error."""

    def __init__(self, name: str, steps: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(steps,), name=name, daemon=True)
        self.thread.start()

    def _run(self, steps: Callable[[], Any]) -> None:
        try:
            self.value = steps()
        except BaseException as exc:  # re-raised in the test that asks for it
            self.error = exc

    def get(self) -> Any:
        self.thread.join(3 * _TIMEOUT)
        assert not self.thread.is_alive(), f"{self.thread.name} did not finish"
        if self.error is not None:
            raise self.error
        return self.value


class _Runs:
    """Every forecast run of the module, as independent chains started together.

    Each chain is the sequence of processes of one scenario (kill, resume...);
    the tests assert on what the chains saw and wrote. Starting them all at
    once keeps both CPUs busy while the sequential steps of one chain wait.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = _env(root)
        self.script = root / "forecast.py"
        self.script.write_text(FORECAST)
        self.children: list[Child] = []
        self.closed = False
        # Every run is a fresh process forked from an interpreter that has
        # imported earth2studio already (see warm_python): earth2studio's own
        # runs from one that never saw restartable, bridged runs from one
        # where the bridge was installed first, as `python -m
        # restartable.earth2studio` does. Their children would otherwise
        # spend ~20 s of CPU each importing earth2studio.
        self.warm = {
            False: WarmPython(_PRELOAD, self.env, root),
            True: WarmPython(
                "import restartable.earth2studio\nrestartable.earth2studio.install()\n" + _PRELOAD, self.env, root
            ),
        }
        self.chains = {
            name: _Chain(name, steps)
            for name, steps in (
                ("reference", self._reference),
                ("det,ens", self._det_ens),
                ("plus,ens,ens64", self._plus_ens),
                ("earth2studio plus,det", self._earth2studio),
                ("member 1 probes", self._member_one_probes),
            )
        }

    def get(self, name: str) -> Any:
        return self.chains[name].get()

    def reference_dir(self) -> Path:
        return self.get("reference")

    def child(self, argv: list[str], kill_when: Callable[[list[list[str]]], bool] | None = None) -> Child:
        if self.closed:
            raise RuntimeError("the module's runs were torn down")
        bridged = argv[1:3] == ["-m", "restartable.earth2studio"]
        child = Child(argv, self.env, self.root, kill_when, warm=self.warm[bridged])
        self.children.append(child)
        return child

    def close(self) -> None:
        self.closed = True
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        for server in self.warm.values():
            server.close()

    def _reference(self) -> Path:
        # Uninterrupted earth2studio: no bridge, no checkpoint. What every resumed run must equal.
        self.child(
            _forecast(self.script, self.root / "reference", "det,ens,plus,ens64,m1before,m1inside,m1plus")
        ).completed()
        return self.root / "reference"

    def _det_ens(self) -> tuple[Path, list[Child]]:
        # Under the bridge, the same command three times:
        # 1: killed after the 3rd of the 6 writes of the deterministic rollout;
        # 2: resumes it, then is killed inside the last member batch of the ensemble;
        # 3: finishes.
        out = self.root / "det-ens"
        argv = _forecast(self.script, out, "det,ens", ckpt=self.root / "det-ens-ckpt", bridge=True)
        first = self.child(argv, _kill_at("det", 3)).was_killed()
        second = self.child(argv, _kill_at("ens", 5)).was_killed()
        return out, [first, second, self.child(argv).completed()]

    def _plus_ens(self) -> tuple[Path, list[Child]]:
        # Under the bridge, the same command three times:
        # 1: killed after 4 of the 9 writes of PlusOne's rollout;
        # 2: resumes it, then is killed inside the first member batch of the ensemble;
        # 3: finishes the ensemble, then runs ens64 (float64 data, a fresh checkpoint).
        out = self.root / "bridged"
        argv = _forecast(self.script, out, "plus,ens,ens64", ckpt=self.root / "bridged-ckpt", bridge=True)
        first = self.child(argv, _kill_at("plus", 4)).was_killed()
        second = self.child(argv, _kill_at("ens", 2)).was_killed()
        return out, [first, second, self.child(argv).completed()]

    def _member_one_probes(self) -> tuple[Path, list[Child]]:
        # Under the bridge, each ensemble probe is killed inside member 1
        # (after its lead time 6 h, the 5th write) and resumed by the next
        # process, which goes on to the next probe.
        out = self.root / "probes"
        argv = _forecast(self.script, out, "m1before,m1inside,m1plus", ckpt=self.root / "probes-ckpt", bridge=True)
        steps = [self.child(argv, _kill_at(what, 5)).was_killed() for what in ("m1before", "m1inside", "m1plus")]
        return out, [*steps, self.child(argv).completed()]

    def _earth2studio(self) -> tuple[Path, list[Child], tuple[int, dict[str, Any]], Child]:
        # earth2studio's own workflows and checkpoint, no bridge:
        # 1: killed after 4 of the 9 writes of PlusOne's rollout;
        # 2: resumes it, then is killed after the 3rd write of the deterministic rollout;
        # then its deterministic store is imported, and the run finished under the bridge.
        out = self.root / "earth2studio"
        argv = _forecast(self.script, out, "plus,det", ckpt=self.root / "e2s-ckpt")
        first = self.child(argv, _kill_at("plus", 4)).was_killed()
        second = self.child(argv, _kill_at("det", 3)).was_killed()
        code, report, _ = _import(
            self.root / "e2s-ckpt" / "det", self.root / "migrated-ckpt" / "det", self.env, self.root
        )
        resumed = self.child(
            _forecast(self.script, out, "det", ckpt=self.root / "migrated-ckpt", bridge=True)
        ).completed()
        return out, [first, second], (code, report), resumed


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    started = _Runs(tmp_path_factory.mktemp("e2s-runs"))
    yield started
    started.close()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return _env(tmp_path)


# =========================================================== 1. install / uninstall

_INSTALL_BEFORE_IMPORT = (
    r"""
import inspect, sys
from collections import OrderedDict
from pathlib import Path

import restartable
import restartable.earth2studio.run as wf
import restartable.earth2studio as bridge
from restartable.earth2studio import checkpoint as bridged

bridge.install()
bridge.install()
assert bridge.installed()
assert "earth2studio" not in sys.modules, "install() imported earth2studio"

import earth2studio
import earth2studio.utils
import earth2studio.run as run
import earth2studio.models.px.persistence as persistence
import earth2studio.perturbation.gaussian as gaussian
import earth2studio.utils.checkpoint as e2c

E2S_FILE = (Path(earth2studio.__file__).parent / "utils" / "checkpoint.py").resolve()
WORKFLOWS = ("deterministic", "diagnostic", "ensemble")

assert sys.modules["earth2studio.utils.checkpoint"] is bridged
assert e2c is bridged and earth2studio.utils.checkpoint is bridged
assert e2c.Checkpoint is bridged.Checkpoint and issubclass(bridged.Checkpoint, restartable.Checkpoint)
assert persistence.bind_checkpoint_state is restartable.bind_checkpoint_state
assert gaussian.bind_checkpoint_state is restartable.bind_checkpoint_state
assert run.Checkpoint is bridged.Checkpoint
assert run.NullCheckpoint is bridged.NullCheckpoint is restartable.NullCheckpoint
assert run.CheckpointSession is restartable.CheckpointSession
for name in WORKFLOWS:
    assert getattr(run, name) is getattr(wf, name), name

bridge.uninstall()
bridge.uninstall()
assert not bridge.installed()
original = sys.modules["earth2studio.utils.checkpoint"]
assert original is not bridged
assert Path(original.__file__).resolve() == E2S_FILE, original.__file__
assert earth2studio.utils.checkpoint is original
assert run.Checkpoint is original.Checkpoint and run.NullCheckpoint is original.NullCheckpoint
assert run.CheckpointSession is original.CheckpointSession
assert persistence.bind_checkpoint_state is original.bind_checkpoint_state
assert gaussian.bind_checkpoint_state is original.bind_checkpoint_state
for name in WORKFLOWS:
    workflow = getattr(run, name)
    assert workflow is not getattr(wf, name) and workflow.__module__ == "earth2studio.run", name
    default = inspect.signature(workflow).parameters["checkpoint"].default
    assert type(default) is original.NullCheckpoint, (name, type(default))
assert not any(type(f).__module__.startswith("restartable") for f in sys.meta_path), sys.meta_path

# earth2studio works on its own again: its workflow commits earth2studio rows.
import numpy as np, xarray as xr
from earth2studio.io import ZarrBackend
LAT, LON = np.linspace(60.0, -60.0, 4), np.linspace(0.0, 315.0, 8)
class Ones:
    def __call__(self, time, variable):
        time = np.atleast_1d(np.asarray(time, dtype="datetime64[ns]"))
        variable = [str(v) for v in np.atleast_1d(variable)]
        return xr.DataArray(np.ones((len(time), len(variable), 4, 8), dtype="float32"), """
    r"""dims=["time", "variable", "lat", "lon"],
                            coords=dict(time=time, variable=variable, lat=LAT, lon=LON))
store = Path(sys.argv[1])
ckpt = original.Checkpoint("after-uninstall", path=store)
model = persistence.Persistence(["t2m"], OrderedDict(lat=LAT, lon=LON))
run.deterministic(["2024-01-01"], 2, model, Ones(), ZarrBackend(), device="cpu", verbose=False, checkpoint=ckpt)
assert (store / "catalog.json").is_file(), list(store.iterdir())
assert [e.write_count for e in original.Checkpoint("after-uninstall", path=store).catalog] == [3]
print("CHILD-OK")
"""
)

_INSTALL_AFTER_IMPORT = r"""
import inspect, sys
from pathlib import Path

import earth2studio
import earth2studio.utils
import earth2studio.run as run
from earth2studio.utils.checkpoint import Checkpoint, CheckpointSession, NullCheckpoint, bind_checkpoint_state
import earth2studio.models.px.persistence as persistence
import earth2studio.perturbation.gaussian as gaussian
original = sys.modules["earth2studio.utils.checkpoint"]
WORKFLOWS = ("deterministic", "diagnostic", "ensemble")
own = {name: getattr(run, name) for name in WORKFLOWS}

import restartable
import restartable.earth2studio.run as wf
import restartable.earth2studio as bridge
from restartable.earth2studio import checkpoint as bridged

main = sys.modules["__main__"]
E2S_FILE = (Path(earth2studio.__file__).parent / "utils" / "checkpoint.py").resolve()


def default_of(function):
    return inspect.signature(function).parameters["checkpoint"].default


def check_installed(workflows):
    assert bridge.installed()
    assert sys.modules["earth2studio.utils.checkpoint"] is bridged
    assert earth2studio.utils.checkpoint is bridged
    assert main.Checkpoint is bridged.Checkpoint and main.NullCheckpoint is bridged.NullCheckpoint
    assert main.CheckpointSession is restartable.CheckpointSession
    assert main.bind_checkpoint_state is restartable.bind_checkpoint_state
    assert run.Checkpoint is bridged.Checkpoint and run.NullCheckpoint is bridged.NullCheckpoint
    assert run.CheckpointSession is restartable.CheckpointSession
    assert persistence.bind_checkpoint_state is restartable.bind_checkpoint_state
    assert gaussian.bind_checkpoint_state is restartable.bind_checkpoint_state
    for name in WORKFLOWS:
        if workflows:
            assert getattr(run, name) is getattr(wf, name), name
        else:
            assert getattr(run, name) is own[name], name
            # earth2studio's workflow, with the bridged no-op checkpoint as its default.
            assert type(default_of(own[name])) is bridged.NullCheckpoint, (name, default_of(own[name]))


def check_uninstalled():
    assert not bridge.installed()
    assert sys.modules["earth2studio.utils.checkpoint"] is original
    assert Path(original.__file__).resolve() == E2S_FILE
    assert earth2studio.utils.checkpoint is original
    assert main.Checkpoint is original.Checkpoint and main.NullCheckpoint is original.NullCheckpoint
    assert main.CheckpointSession is original.CheckpointSession
    assert main.bind_checkpoint_state is original.bind_checkpoint_state
    assert run.Checkpoint is original.Checkpoint and run.NullCheckpoint is original.NullCheckpoint
    assert run.CheckpointSession is original.CheckpointSession
    assert persistence.bind_checkpoint_state is original.bind_checkpoint_state
    assert gaussian.bind_checkpoint_state is original.bind_checkpoint_state
    for name in WORKFLOWS:
        assert getattr(run, name) is own[name], name
        assert type(default_of(own[name])) is original.NullCheckpoint, (name, default_of(own[name]))
    assert not any(type(f).__module__.startswith("restartable") for f in sys.meta_path), sys.meta_path


bridge.install()
bridge.install()
check_installed(True)
bridge.uninstall()
check_uninstalled()

bridge.install(workflows=False)
bridge.install(workflows=False)
check_installed(False)
bridge.install()  # routes the workflows of an installation made without them
check_installed(True)
bridge.uninstall()
check_uninstalled()

# python -m restartable.earth2studio --no-workflows SCRIPT ARGS (its main(), here after the import)
import restartable.earth2studio.__main__ as launcher
assert launcher.main(["--no-workflows", sys.argv[1], "a", "--b"]) == 0
check_installed(False)
bridge.uninstall()
check_uninstalled()
print("CHILD-OK")
"""

# Run by ``python -m restartable.earth2studio --no-workflows`` (its main(), from _INSTALL_AFTER_IMPORT).
_NO_WORKFLOWS_SCRIPT = r"""
import inspect, sys
import restartable
import restartable.earth2studio.run as wf
import restartable.earth2studio as bridge
from restartable.earth2studio import checkpoint as bridged
import earth2studio.run as run

assert __name__ == "__main__" and bridge.installed()
assert sys.argv[1:] == ["a", "--b"], sys.argv
assert run.Checkpoint is bridged.Checkpoint
for name in ("deterministic", "diagnostic", "ensemble"):
    workflow = getattr(run, name)
    assert workflow.__module__ == "earth2studio.run" and workflow is not getattr(wf, name), name
    assert type(inspect.signature(workflow).parameters["checkpoint"].default) is restartable.NullCheckpoint
print("SCRIPT-OK")
"""


def test_install_and_uninstall_before_and_after_importing_earth2studio(
    tmp_path: Path, env: dict[str, str], runs: _Runs
) -> None:
    # Asking for ``runs`` starts the module's forecast runs now, so that they
    # overlap with this test's children. Installing after earth2studio was
    # imported runs in a child of the interpreter that imported it for
    # earth2studio's own runs (it never saw restartable); installing before
    # needs an interpreter that has imported nothing.
    script = tmp_path / "no_workflows.py"
    script.write_text(_NO_WORKFLOWS_SCRIPT)
    children = {
        "install before import": _python(
            _INSTALL_BEFORE_IMPORT, str(tmp_path / "after-uninstall"), env=env, cwd=tmp_path
        ),
        "install after import": _python(
            _INSTALL_AFTER_IMPORT, str(script), env=env, cwd=tmp_path, warm=runs.warm[False]
        ),
        "import restartable": _python(
            """
            import sys
            import restartable, restartable.workflows, restartable.cli
            import restartable.earth2studio, restartable.earth2studio.checkpoint, restartable.earth2studio.migrate
            assert "earth2studio" not in sys.modules, sorted(m for m in sys.modules if m.startswith("earth2studio"))
            assert not restartable.earth2studio.installed()
            print("CHILD-OK")
            """,
            env=env,
            cwd=tmp_path,
        ),
    }
    for name, child in children.items():
        child.result()
        assert child.proc.returncode == 0 and "CHILD-OK" in child.output, f"{name}:\n{child.output}"
    assert "SCRIPT-OK" in children["install after import"].output


# =========================================================== 5. python -m restartable.earth2studio


def test_main_help_script_errors_and_module_form(tmp_path: Path, env: dict[str, str]) -> None:
    failing = tmp_path / "failing.py"
    failing.write_text(
        "import restartable.earth2studio as b\nassert b.installed()\n"
        "def inner():\n    raise RuntimeError('boom from the script')\ninner()\n"
    )
    exiting = tmp_path / "exiting.py"
    exiting.write_text("import sys\nsys.exit(7)\n")
    (tmp_path / "e2s_probe_module.py").write_text(
        textwrap.dedent(
            """
            import json, sys
            import restartable.earth2studio as bridge
            from restartable.earth2studio import checkpoint as bridged
            from earth2studio.utils.checkpoint import Checkpoint
            print("PROBE", json.dumps({"name": __name__, "installed": bridge.installed(), "bridged": """
            """Checkpoint is bridged.Checkpoint,
                                       "argv": sys.argv[1:]}))
            """
        )
    )
    module_env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")])))
    main = [sys.executable, "-m", "restartable.earth2studio"]
    procs = {
        "help": subprocess.Popen(
            [*main, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        ),
        "failing": subprocess.Popen(
            [*main, str(failing)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        ),
        "exiting": subprocess.Popen(
            [*main, str(exiting)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        ),
        "module": subprocess.Popen(
            [*main, "-m", "e2s_probe_module", "--flag=3", "-v"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=module_env,
            cwd=tmp_path,
        ),
        "nothing": subprocess.Popen(
            main, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        ),
    }
    out = {name: (p, *p.communicate(timeout=_TIMEOUT)) for name, p in procs.items()}

    p, stdout, stderr = out["help"]
    assert p.returncode == 0, stderr
    assert "usage:" in stdout and "--no-workflows" in stdout and "SCRIPT" in stdout

    p, stdout, stderr = out["failing"]
    assert p.returncode not in (0, None), (p.returncode, stdout, stderr)
    assert "Traceback (most recent call last)" in stderr, stderr
    assert "RuntimeError: boom from the script" in stderr and "in inner" in stderr, stderr

    p, stdout, stderr = out["exiting"]
    assert p.returncode == 7, (p.returncode, stderr)

    p, stdout, stderr = out["module"]
    assert p.returncode == 0, stderr
    probe = json.loads(next(line for line in stdout.splitlines() if line.startswith("PROBE ")).split(" ", 1)[1])
    assert probe == {"name": "__main__", "installed": True, "bridged": True, "argv": ["--flag=3", "-v"]}

    p, stdout, stderr = out["nothing"]
    assert p.returncode == 2 and "usage:" in stderr, (p.returncode, stderr)


def test_main_passes_every_argument_after_the_script_unchanged(tmp_path: Path, env: dict[str, str]) -> None:
    script = tmp_path / "argv.py"
    script.write_text("import json, sys\nprint('ARGV', json.dumps(sys.argv[1:]))\n")
    result = subprocess.run(
        [sys.executable, "-m", "restartable.earth2studio", str(script), "--no-workflows", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    argv = [json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("ARGV ")]
    assert argv == [["--no-workflows", "--help"]], result.stdout


def test_main_module_form_passes_positional_arguments(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "e2s_argv_module.py").write_text("import json, sys\nprint('ARGV', json.dumps(sys.argv[1:]))\n")
    module_env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "restartable.earth2studio", "-m", "e2s_argv_module", "2024-01-01", "--nsteps", "3"],
        capture_output=True,
        text=True,
        env=module_env,
        cwd=tmp_path,
        timeout=_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    argv = [json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("ARGV ")]
    assert argv == [["2024-01-01", "--nsteps", "3"]], result.stdout


def test_import_of_the_checkpoint_module_by_its_full_name_after_install(tmp_path: Path, env: dict[str, str]) -> None:
    child = _python(
        """
        import restartable.earth2studio as bridge
        from restartable.earth2studio import checkpoint as bridged
        bridge.install()
        import earth2studio.utils.checkpoint as e2c
        assert e2c is bridged
        import earth2studio.utils.checkpoint
        assert earth2studio.utils.checkpoint.Checkpoint is bridged.Checkpoint
        print("CHILD-OK")
        """,
        env=env,
        cwd=tmp_path,
    ).result()
    assert child.proc.returncode == 0 and "CHILD-OK" in child.output, child.output


# =========================================================== 4a. import-earth2studio of a store earth2studio wrote

_STATE_DEFINITIONS = r"""
import dataclasses, json, sys
from dataclasses import dataclass, field
import numpy as np
import torch


@dataclass
class Inner:
    scale: float = 1.0
    table: np.ndarray = field(default_factory=lambda: np.zeros((2, 3), dtype=np.int32))


@dataclass
class State:
    step: int = 0
    grid: np.ndarray = field(default_factory=lambda: np.zeros((3, 4), dtype=np.float32))
    mask: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=bool))
    weights: torch.Tensor = field(default_factory=lambda: torch.zeros(5, dtype=torch.float64))
    inner: Inner = field(default_factory=Inner)
    pair: tuple = (0, "start")


def fill(state, i):
    state.step = i
    state.grid = (np.arange(12, dtype=np.float32).reshape(3, 4) * np.float32(i + 0.1)) - np.float32(1 / 3)
    state.mask = np.array([i % 2 == 0, True, False, i > 2])
    state.weights = torch.linspace(-1, 1, 5, dtype=torch.float64) * (i + 1) / 7
    state.inner = Inner(scale=i / 3, table=np.full((2, 3), i, dtype=np.int32) + np.arange(3, dtype=np.int32))
    state.pair = (i, f"row{i}")


def digest(value):
    if isinstance(value, torch.Tensor):
        return ["tensor", str(value.dtype), list(value.shape), value.detach().cpu().numpy().tobytes().hex()]
    if isinstance(value, np.ndarray):
        return ["ndarray", str(value.dtype), list(value.shape), value.tobytes().hex()]
    if dataclasses.is_dataclass(value):
        return [type(value).__qualname__, {f.name: digest(getattr(value, f.name)) for f in dataclasses.fields(value)}]
    if isinstance(value, (tuple, list)):
        return [type(value).__name__, [digest(v) for v in value]]
    if isinstance(value, float):
        return ["float", value.hex()]
    return [type(value).__name__, repr(value)]
"""

_E2S_WRITER = (
    _STATE_DEFINITIONS
    + r"""
from earth2studio.utils.checkpoint import Checkpoint, bind_checkpoint_state

path = sys.argv[1]
with Checkpoint("mig", path=path, mode="append") as session:
    state = bind_checkpoint_state(State())
    for i in range(5):
        fill(state, i)
        session.write(lead_time=np.timedelta64(6 * i, "h"), note=f"row{i}")
        last = digest(state.checkpoint_dataclass)
catalog = Checkpoint("mig", path=path, mode="append").catalog
print("RESULT", json.dumps({
    "last": last,
    "rows": [{"commit": e.commit_id, "lead": str(e.lead_time), "write_count": e.write_count, "note": e.metadata["note"]}
             for e in catalog],
}))
"""
)

_RESTARTABLE_READER = (
    _STATE_DEFINITIONS + r"""
from restartable import Checkpoint, bind_checkpoint_state

result = {}
for path in sys.argv[1:]:
    checkpoint = Checkpoint("mig", path=path, mode="append")
    rows = [{"lead": str(e.lead_time), "write_count": e.write_count, "note": e.metadata["note"]} """
    r"""for e in checkpoint.catalog]
    with checkpoint as session:
        state = bind_checkpoint_state(State())
        restored = state.checkpoint_state_loaded
        result[path] = {"rows": rows, "restored": restored, "state": digest(state.checkpoint_dataclass),
                        "write_count": session.write_count, "lead": str(session.lead_time)}
        # The migrated row is a restart point: the run goes on committing after it.
        fill(state, 5)
        session.write(lead_time=np.timedelta64(30, "h"), note="row5")
    after = Checkpoint("mig", path=path, mode="append")
    result[path]["after"] = [[str(e.lead_time), e.write_count] for e in after.catalog][-1]
    with after:
        again = bind_checkpoint_state(State())
        result[path]["again"] = digest(again.checkpoint_dataclass)
print("RESULT", json.dumps(result))
"""
)


def _result(child: Child) -> Any:
    child.completed()
    return json.loads(next(line for line in child.lines if line.startswith("RESULT ")).split(" ", 1)[1])


def _import(src: Path, dest: Path, env: dict[str, str], cwd: Path) -> tuple[int, dict[str, Any], str]:
    result = _cli("import-earth2studio", str(src), str(dest), "--json", env=env, cwd=cwd)
    assert result.returncode in (0, 1), (result.returncode, result.stdout, result.stderr)
    return result.returncode, json.loads(result.stdout), result.stderr


def test_import_earth2studio_store_then_resume_with_restartable(
    tmp_path: Path, env: dict[str, str], runs: _Runs
) -> None:
    src = tmp_path / "e2s-store"
    # earth2studio's own checkpoint writes the store, in a child of the
    # interpreter that imported earth2studio for its own runs.
    written = _result(_python(_E2S_WRITER, str(src), env=env, cwd=tmp_path, warm=runs.warm[False]))
    rows = written["rows"]
    assert [r["write_count"] for r in rows] == [1, 2, 3, 4, 5]
    commits = [r["commit"] for r in rows]

    # Damage: one array of a middle commit deleted, and (separately) another's manifest corrupted.
    missing_npy, bad_manifest = tmp_path / "src-missing-npy", tmp_path / "src-bad-manifest"
    shutil.copytree(src, missing_npy)
    shutil.copytree(src, bad_manifest)
    arrays = sorted((missing_npy / "commits" / commits[2] / "states").rglob("grid.npy"))
    assert len(arrays) == 1, arrays
    arrays[0].unlink()
    (bad_manifest / "commits" / commits[1] / "manifest.json").write_text(
        '{"commit_id": "' + commits[1] + '", "states": {'
    )

    results = {}
    for name, source in (("whole", src), ("missing-npy", missing_npy), ("bad-manifest", bad_manifest)):
        results[name] = _import(source, tmp_path / f"dest-{name}", env, tmp_path)

    code, report, _ = results["whole"]
    assert code == 0 and report == {"imported": commits, "damaged": []}, report
    code, report, _ = results["missing-npy"]
    assert code == 1, report
    assert report["imported"] == commits[:2] + commits[3:]
    assert [d["row"] for d in report["damaged"]] == [commits[2]] and "grid.npy" in report["damaged"][0]["reason"], (
        report
    )
    code, report, _ = results["bad-manifest"]
    assert code == 1, report
    assert report["imported"] == commits[:1] + commits[2:]
    assert [d["row"] for d in report["damaged"]] == [commits[1]] and "manifest.json" in report["damaged"][0][
        "reason"
    ], report

    dests = [tmp_path / f"dest-{name}" for name in ("whole", "missing-npy", "bad-manifest")]
    read = _result(_python(_RESTARTABLE_READER, *map(str, dests), env=env, cwd=tmp_path))
    expected_rows = [{k: r[k] for k in ("lead", "write_count", "note")} for r in rows]
    for dest, kept in zip(dests, (range(5), (0, 1, 3, 4), (0, 2, 3, 4)), strict=True):
        got = read[str(dest)]
        assert got["rows"] == [expected_rows[i] for i in kept], (dest.name, got["rows"])
        # Resumed from the last row: the dataclass holds what earth2studio last committed.
        assert got["restored"] is True
        assert got["state"] == written["last"], dest.name
        assert (got["write_count"], got["lead"]) == (5, rows[-1]["lead"])
        assert got["after"] == [str(np.timedelta64(30, "h")), 6]
        assert got["again"][1]["step"] == ["int", "5"] and got["again"][1]["pair"] == [
            "tuple",
            [["int", "5"], ["str", "'row5'"]],
        ]


# ======================================================== 2. earth2studio workflows killed and resumed under the bridge


def test_deterministic_and_ensemble_killed_and_resumed_under_bridge_match_earth2studio(runs: _Runs) -> None:
    out, (first, second, third) = runs.get("det,ens")
    for child in (first, second, third):
        assert child.info() == ["restartable.earth2studio.checkpoint", "restartable.earth2studio.run"], child.output
    assert [w[1] for w in first.writes_of("det")] == ["0", "6", "12"]
    # Resumed after lead 6 h, the last committed boundary: Persistence continues
    # from its restored state, nothing before 12 h is written again.
    assert [w[1] for w in second.writes_of("det")] == ["12", "18", "24", "30"], second.output
    assert second.writes_of("ens") == [
        ["ens", "0", "0,1"],
        ["ens", "6", "0,1"],
        ["ens", "12", "0,1"],
        ["ens", "0", "2,3"],
        ["ens", "6", "2,3"],
    ]
    # The finished deterministic run is not redone; the member batch is finished from lead 6 h.
    assert third.writes_of("det") == []
    assert third.writes_of("ens") == [["ens", "6", "2,3"], ["ens", "12", "2,3"]], third.output

    reference = runs.reference_dir()
    _assert_zarr_identical(out / "det.zarr", reference / "det.zarr")
    _assert_zarr_identical(out / "ens.zarr", reference / "ens.zarr")


def test_ensemble_killed_in_its_first_member_batch_resumes_every_batch(runs: _Runs) -> None:
    out, (_, killed, resumed) = runs.get("plus,ens,ens64")
    assert killed.writes_of("ens") == [["ens", "0", "0,1"], ["ens", "6", "0,1"]]
    assert resumed.info()[1] == "restartable.earth2studio.run"
    members = {w[2] for w in resumed.writes_of("ens")}
    assert "2,3" in members, f"the resumed run wrote no lead time of members 2-3: {resumed.writes_of('ens')}"
    _assert_zarr_identical(out / "ens.zarr", runs.reference_dir() / "ens.zarr")


@pytest.mark.parametrize("what", ["m1before", "m1inside", "m1plus"])
def test_ensemble_killed_inside_member_1_resumes_bitwise_wherever_its_components_were_built(
    runs: _Runs, what: str
) -> None:
    # earth2studio's Gaussian(seed=...) with Persistence built before the
    # checkpoint existed (nothing bound: the generator starts from its seed
    # again, so the noise of member 0 is drawn again before member 1's),
    # built inside the session (the generator state restored from the row),
    # and a model without checkpoint support (member 1 rerun from lead 0).
    out, chain = runs.get("member 1 probes")
    killed = chain[["m1before", "m1inside", "m1plus"].index(what)]
    resumed = chain[["m1before", "m1inside", "m1plus"].index(what) + 1]
    assert killed.writes_of(what)[-1] == [what, "6", "1"], killed.output
    _assert_zarr_identical(out / f"{what}.zarr", runs.reference_dir() / f"{what}.zarr")
    # The kill came after the IO write of 6 h and before its checkpoint
    # boundary. Restored inside the session, Persistence continues member 1
    # after 0 h; otherwise member 1 is rerun from lead 0 and, as earth2studio
    # does, its lead times are written again.
    member_1 = ["6", "12"] if what == "m1inside" else ["0", "6", "12"]
    expected = [[what, lead, "1"] for lead in member_1] + [[what, lead, m] for m in "23" for lead in ("0", "6", "12")]
    assert resumed.writes_of(what) == expected, resumed.output


# =========================================================== 3. a prognostic without checkpoint support


def test_stateless_prognostic_killed_and_resumed_under_bridge_has_no_gaps(runs: _Runs) -> None:
    reference = runs.reference_dir() / "plus.zarr"
    bridged_out, (killed, resumed, _) = runs.get("plus,ens,ens64")
    assert [w[1] for w in killed.writes_of("plus")] == ["0", "6", "12", "18"]
    assert resumed.info() == ["restartable.earth2studio.checkpoint", "restartable.earth2studio.run"]
    # Under the bridge: PlusOne restarts from the initial condition, the lead times
    # already committed (0-12 h) are recomputed and, as earth2studio does, written
    # again, and the store is complete and bitwise equal to the uninterrupted run.
    assert [w[1] for w in resumed.writes_of("plus")] == [str(6 * i) for i in range(9)], resumed.output
    for name, values in _data_arrays(bridged_out / "plus.zarr").items():
        assert np.isfinite(values).all() and (values != 0).all(), f"{name}: lead times left unwritten"
    _assert_zarr_identical(bridged_out / "plus.zarr", reference)

    # The same kill and resume with earth2studio's own workflow and checkpoint:
    # its resumed rollout starts again at lead 0 but counts steps from the
    # restart point, so it stops early and the last lead times are never written
    # (zeros, the store's fill value). This is the defect the bridge fixes.
    e2s_out, (killed, resumed), _, _ = runs.get("earth2studio plus,det")
    assert resumed.info() == ["earth2studio.utils.checkpoint", "earth2studio.run"]
    assert [w[1] for w in killed.writes_of("plus")] == ["0", "6", "12", "18"]
    assert [w[1] for w in resumed.writes_of("plus")] == ["0", "6", "12", "18", "24", "30"], resumed.output
    expected = _data_arrays(reference)
    for name, values in _data_arrays(e2s_out / "plus.zarr").items():
        assert (values[:, 6:] == 0).all(), f"{name}: earth2studio's resume wrote the last lead times"
        assert values[:, :6].tobytes() == expected[name][:, :6].tobytes()


# =========================================================== 4b. a run started by earth2studio, finished by restartable


def test_workflow_started_by_earth2studio_migrated_and_resumed_under_bridge(runs: _Runs) -> None:
    out, (_, killed), (code, report), resumed = runs.get("earth2studio plus,det")
    assert killed.info() == ["earth2studio.utils.checkpoint", "earth2studio.run"]
    assert [w[1] for w in killed.writes_of("det")] == ["0", "6", "12"]
    # earth2studio's overwrite-mode catalog holds one row: lead 6 h with Persistence's state.
    assert code == 0 and len(report["imported"]) == 1 and report["damaged"] == [], report
    assert resumed.info() == ["restartable.earth2studio.checkpoint", "restartable.earth2studio.run"]
    # The rollout goes on from the migrated row, it does not start over.
    assert [w[1] for w in resumed.writes_of("det")] == ["12", "18", "24", "30"], resumed.output
    _assert_zarr_identical(out / "det.zarr", runs.reference_dir() / "det.zarr")


# =========================================================== the bridge's workflows and earth2studio's on float64 data


def test_bridged_workflows_match_earth2studio_on_float64_data(runs: _Runs) -> None:
    out, (_, _, last) = runs.get("plus,ens,ens64")
    assert last.info()[1] == "restartable.earth2studio.run"
    assert len(last.writes_of("ens64")) == 6, last.output
    _assert_zarr_identical(out / "ens64.zarr", runs.reference_dir() / "ens64.zarr")
