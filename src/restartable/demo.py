"""``restartable demo``: an ensemble forecast killed with SIGKILL, resumed, and checked bit for bit.

What it does, each run in a fresh Python process:

1. **Run 1** starts an ensemble forecast (:func:`restartable.workflows.ensemble`)
   with the stateful :class:`~restartable.components.Lorenz96` model,
   :class:`~restartable.components.GaussianPerturbation` noise and
   :class:`~restartable.components.SyntheticData` initial conditions, writing
   into a Zarr v3 store with a level-2 checkpoint (``flush_interval=2``,
   ``mode="overwrite"``). The child reports each step it writes; after
   ``kill_after`` of them the parent kills it with SIGKILL — no cleanup, as
   when a node dies. The last step is then in the Zarr store but not in the
   checkpoint, and with ``flush_interval=2`` the step before it may not be
   either.
2. **Resume**: the same command again, same store, same checkpoint. It starts
   from the last committed row: finished member batches are skipped, the
   interrupted batch continues from the model's saved leapfrog state and the
   perturbation's saved random state.
3. **Reference**: the same forecast, uninterrupted and without a
   checkpoint, into a second Zarr store.

Then every array of the two stores is compared (``numpy.array_equal`` and a
SHA-256 of the bytes). The exit status is 0 when they are identical, 1
otherwise.

Only the standard library and numpy are imported at module level; torch,
xarray and zarr are imported when the demo runs, and checked for before it
starts any run (``pip install 'restartable[workflows]'`` installs them).

Run ``restartable demo --help`` for the options; ``python -m
restartable.demo`` is the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from ._extras import MissingExtraError, require

__all__ = ["DemoConfig", "DemoError", "DemoUsageError", "add_arguments", "compare_stores", "main", "run_demo"]

CHECKPOINT_NAME = "restartable-demo"
CHECKPOINT_DIR = "demo-checkpoint"
RESUMED_STORE = "demo-resumed.zarr"
REFERENCE_STORE = "demo-reference.zarr"
MARKER = ".restartable-demo"
START_TIME = "2024-01-01T00:00"
VARIABLES = ("u10m", "v10m")
STEP_HOURS = 6  # the reference models step 6 hours
FLUSH_INTERVAL = 2
NOISE_STD = 0.1
KILL_FRACTION = 0.4
_EVENT = "@@restartable-demo "


class DemoError(RuntimeError):
    """A phase of the demo failed (a child process crashed, or was not killed as planned)."""


class DemoUsageError(ValueError):
    """The demo's options are invalid, or its working directory is not usable."""


@dataclass(frozen=True)
class DemoConfig:
    """The forecast the demo runs, three times."""

    members: int = 8
    steps: int = 12
    nlat: int = 32
    nlon: int = 64
    batch_size: int = 2
    seed: int = 0

    def validate(self) -> None:
        for name in ("members", "steps", "nlat", "nlon", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DemoUsageError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")

    @property
    def batches(self) -> int:
        return math.ceil(self.members / min(self.batch_size, self.members))

    @property
    def total_writes(self) -> int:
        """Step writes of the whole forecast: lead times 0..steps for each member batch."""
        return self.batches * (self.steps + 1)

    def argv(self) -> list[str]:
        return [
            "--members",
            str(self.members),
            "--steps",
            str(self.steps),
            "--nlat",
            str(self.nlat),
            "--nlon",
            str(self.nlon),
            "--batch-size",
            str(self.batch_size),
            "--seed",
            str(self.seed),
        ]


# ---------------------------------------------------------------------------
# The child: one run of the forecast


def _event(kind: str, **fields: Any) -> None:
    sys.stdout.write(_EVENT + json.dumps({"event": kind, **fields}) + "\n")
    sys.stdout.flush()


def _hours(value: Any) -> float | None:
    if value is None:
        return None
    value = np.asarray(value).reshape(-1)[-1]
    if value.dtype.kind == "m":
        return float(value / np.timedelta64(1, "h"))
    return float(value)


def _checkpoint(path: Path) -> Any:
    from .catalog import Checkpoint

    return Checkpoint(
        CHECKPOINT_NAME, path=path, mode="overwrite", flush_interval=FLUSH_INTERVAL, level=2, rank=0, world_size=1
    )


def _child(role: str, config: DemoConfig, workdir: Path, pause_after: int | None, verbose: bool) -> int:
    """Run the forecast once (``role``: ``killed``, ``resume`` or ``reference``), reporting each step written."""
    import xarray  # noqa: F401  (imported here so that the startup time counts it)

    from .components import GaussianPerturbation, Lorenz96, SyntheticData, ZarrIO
    from .workflows import ensemble

    class ReportingZarrIO(ZarrIO):
        """A Zarr store that tells the parent about every step it has written."""

        writes = 0

        def write(self, x: Any, coords: Any, array_name: Any) -> None:
            super().write(x, coords, array_name)
            self.writes += 1
            members = [int(m) for m in np.asarray(coords["ensemble"]).reshape(-1)]
            _event("write", n=self.writes, members=members, lead_hours=_hours(coords["lead_time"]))
            if pause_after is not None and self.writes >= pause_after:
                # Written to Zarr, not yet recorded in the checkpoint: the
                # parent kills this process here with SIGKILL.
                _event("paused", n=self.writes)
                sys.stdin.readline()
                os._exit(3)  # the parent went away without killing us

    def forecast(io: Any, session: Any) -> None:
        data = SyntheticData(nlat=config.nlat, nlon=config.nlon, seed=config.seed)
        model = Lorenz96(VARIABLES, lat=data.lat, lon=data.lon)
        perturbation = GaussianPerturbation(std=NOISE_STD, seed=config.seed)
        ensemble(
            [START_TIME],
            config.steps,
            config.members,
            model,
            data,
            io,
            perturbation,
            batch_size=config.batch_size,
            device="cpu",
            verbose=verbose,
            checkpoint=session,
        )

    if role == "reference":
        io = ReportingZarrIO(workdir / REFERENCE_STORE)
        _event("ready")
        forecast(io, None)
    else:
        io = ReportingZarrIO(workdir / RESUMED_STORE)
        _event("ready")
        # Components are built inside the session, so they restore their state at once.
        with _checkpoint(workdir / CHECKPOINT_DIR) as session:
            forecast(io, session)
    _event("done", writes=io.writes)
    return 0


# ---------------------------------------------------------------------------
# Comparing two stores


def _digest(values: np.ndarray) -> str:
    sha = hashlib.sha256(f"{values.dtype.str}|{values.shape}|".encode())
    if values.dtype.kind in "OUTS" or values.dtype.kind not in "biufcmMV":
        sha.update("\0".join(str(v) for v in values.ravel().tolist()).encode())
    else:
        sha.update(np.ascontiguousarray(values).tobytes())
    return sha.hexdigest()


def _differing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of the elements whose bytes differ (NaNs with the same bytes are equal)."""
    if a.dtype.kind in "biufcmM" and a.dtype == b.dtype:
        bytes_a = np.ascontiguousarray(a).view(np.uint8).reshape((*a.shape, -1))
        bytes_b = np.ascontiguousarray(b).view(np.uint8).reshape((*b.shape, -1))
        differs: np.ndarray = (bytes_a != bytes_b).any(axis=-1)
        return differs
    return np.asarray(a != b)


def compare_stores(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Compare every array of Zarr stores ``a`` and ``b``, value by value and byte by byte.

    Returns ``{"identical": bool, "arrays": [...], "differences": [...]}``:
    one record per array name of either store (shape, dtype, whether the
    values are equal under ``numpy.array_equal(..., equal_nan=True)``, the
    SHA-256 of the bytes on each side, the number of differing elements and
    the first one), and a line per difference. ``identical`` is true when
    both stores hold the same arrays with the same attributes, values and
    bytes.
    """
    import zarr

    stores = [zarr.open_group(str(p), mode="r") for p in (a, b)]
    names = sorted(set(stores[0].array_keys()) | set(stores[1].array_keys()))
    arrays, differences = [], []
    for name in names:
        record: dict[str, Any] = {"name": name}
        present = [name in store for store in stores]
        if not all(present):
            record.update(equal=False, missing_in="a" if not present[0] else "b")
            differences.append(f"{name}: only in {'b' if not present[0] else 'a'}")
            arrays.append(record)
            continue
        va, vb = (np.asarray(cast("zarr.Array[Any]", store[name])[...]) for store in stores)
        attrs_equal = dict(stores[0][name].attrs) == dict(stores[1][name].attrs)
        record.update(shape=list(va.shape), dtype=str(va.dtype), sha256_a=_digest(va), sha256_b=_digest(vb))
        if va.shape != vb.shape or va.dtype != vb.dtype:
            record.update(values_equal=False, equal=False)
            differences.append(f"{name}: shape/dtype {va.shape} {va.dtype} vs {vb.shape} {vb.dtype}")
            arrays.append(record)
            continue
        values_equal = bool(np.array_equal(va, vb, equal_nan=va.dtype.kind in "fc"))
        mask = _differing(va, vb)
        count = int(mask.sum())
        record.update(
            values_equal=values_equal,
            bytes_equal=record["sha256_a"] == record["sha256_b"],
            attrs_equal=attrs_equal,
            differing_elements=count,
            nan_a=int(np.isnan(va).sum()) if va.dtype.kind in "fc" else 0,
            nan_b=int(np.isnan(vb).sum()) if vb.dtype.kind in "fc" else 0,
        )
        record["equal"] = values_equal and record["bytes_equal"] and attrs_equal and count == 0
        if count:
            where = tuple(int(i) for i in np.argwhere(mask)[0])
            record["first_difference"] = {
                "index": list(where),
                "a": repr(va[where].item()),
                "b": repr(vb[where].item()),
            }
            differences.append(
                f"{name}: {count} element(s) differ, first at {list(where)}: {va[where]!r} vs {vb[where]!r}"
            )
        elif not record["equal"]:
            differences.append(f"{name}: attributes differ" if not attrs_equal else f"{name}: bytes differ")
        arrays.append(record)
    identical = bool(arrays) and all(r["equal"] for r in arrays)
    if not arrays:
        differences.append("no arrays to compare")
    return {"identical": identical, "arrays": arrays, "differences": differences}


# ---------------------------------------------------------------------------
# The parent: run, kill, resume, compare, report


@dataclass
class _Phase:
    name: str
    returncode: int | None = None
    seconds: float = 0.0
    startup_seconds: float | None = None
    writes: int = 0
    first_write: dict[str, Any] | None = None
    stderr_tail: str = ""


class _Reporter:
    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled

    def __call__(self, text: str = "") -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def _size(path: Path) -> tuple[int, int]:
    """Bytes and files under ``path``, each hard-linked file counted once."""
    seen, total, files = set(), 0, 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
            files += 1
    return total, files


def _human(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _prepare_workdir(workdir: str | Path | None) -> tuple[Path, bool]:
    """The working directory, and whether the demo created it (a temporary one)."""
    if workdir is None:
        path = Path(tempfile.mkdtemp(prefix="restartable-demo-"))
        (path / MARKER).touch()
        return path, True
    path = Path(workdir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise DemoUsageError(f"--workdir {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    ours = [path / name for name in (CHECKPOINT_DIR, RESUMED_STORE, REFERENCE_STORE)]
    leftovers = [p for p in ours if p.exists()]
    if leftovers and not (path / MARKER).exists():
        raise DemoUsageError(
            f"--workdir {path} already holds {', '.join(p.name for p in leftovers)}, not written by the demo; "
            "choose another directory"
        )
    for p in leftovers:  # a previous demo's outputs: start afresh
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    (path / MARKER).touch()
    return path, False


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The package's own import root first, so the child imports this very code.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "WORLD_SIZE", "SLURM_NTASKS"):
        env.pop(name, None)  # the demo is a single process, whatever launched it
    # Redraw the progress bars at every step, so that the bars of the killed
    # run show where it was killed (tqdm reads TQDM_* defaults from the environment).
    env.setdefault("TQDM_MININTERVAL", "0")
    return env


@contextlib.contextmanager
def _launch(
    role: str, config: DemoConfig, workdir: Path, pause_after: int | None, verbose: bool
) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """A child process running one forecast; killed (by id) if still alive on exit."""
    command = [sys.executable, "-m", "restartable.demo", "--child", role, "--workdir", str(workdir), *config.argv()]
    if pause_after is not None:
        command += ["--pause-after", str(pause_after)]
    if verbose:
        command.append("--child-progress")
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errors:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if verbose else errors,
            text=True,
            bufsize=1,
            env=_child_env(),
        )
        try:
            yield process, errors
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def _events(process: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(_EVENT):
            yield json.loads(line[len(_EVENT) :])


def _draws_bars() -> bool:
    """Whether the children draw progress bars (they inherit our stderr) rather than log lines."""
    from ._progress import draws_bars

    return draws_bars()


def _run_phase(role: str, config: DemoConfig, workdir: Path, verbose: bool, kill_after: int | None = None) -> _Phase:
    phase = _Phase(role)
    start = time.perf_counter()
    ready = None
    with _launch(role, config, workdir, kill_after, verbose) as (process, errors):
        for event in _events(process):
            if event["event"] == "ready":
                ready = time.perf_counter()
            elif event["event"] == "write":
                phase.writes = event["n"]
                if phase.first_write is None:
                    phase.first_write = {"members": event["members"], "lead_hours": event["lead_hours"]}
            elif event["event"] == "paused":
                process.send_signal(signal.SIGKILL)
                break
        phase.returncode = process.wait()
        phase.seconds = time.perf_counter() - start
        phase.startup_seconds = None if ready is None else ready - start
        errors.seek(0)
        phase.stderr_tail = errors.read()[-4000:]
    if verbose and kill_after is not None and _draws_bars():
        # The killed child left its cursor on the first of its two progress
        # bars (members batches, then members of the batch): move below them.
        # Without bars its lines (progress logged, one per event) are whole.
        sys.stderr.write("\n\n")
        sys.stderr.flush()
    expected = -signal.SIGKILL if kill_after is not None else 0
    if phase.returncode != expected:
        what = "was not killed as planned" if kill_after is not None else "failed"
        detail = f"\n{phase.stderr_tail}" if phase.stderr_tail else ""
        raise DemoError(f"the {role} run {what} (exit status {phase.returncode}){detail}")
    return phase


def _catalog_facts(workdir: Path) -> tuple[str, dict[str, Any]]:
    from .workflows._run import completed_members

    checkpoint = _checkpoint(workdir / CHECKPOINT_DIR)
    entries = checkpoint.catalog
    latest = entries[-1] if entries else None
    facts: dict[str, Any] = {"rows": len(entries)}
    if latest is not None:
        facts.update(
            commit_id=latest.commit_id,
            completed_ensembles=completed_members(latest.metadata.get("completed_ensembles")),
            lead_time_hours=_hours(latest.lead_time),
            write_count=latest.write_count,
            pinned_rows=sum(1 for e in entries if e.pinned),
        )
    size, files = _size(workdir / CHECKPOINT_DIR)
    facts.update(bytes=size, files=files)
    return str(checkpoint), facts


def _progress_map(workdir: Path, config: DemoConfig, resumed_from: dict[str, Any]) -> tuple[list[str], int]:
    """Per member, which lead times are committed (#), only written (+) or missing (.)."""
    import zarr

    array = cast("zarr.Array[Any]", zarr.open_group(str(workdir / RESUMED_STORE), mode="r")[VARIABLES[0]])
    values = np.asarray(array[...])
    written = ~np.isnan(values).all(axis=tuple(range(3, values.ndim)))[:, 0, :]  # (ensemble, lead_time)
    completed = set(resumed_from.get("completed_ensembles") or ())
    # The batch the committed lead time belongs to: the first one not complete.
    batch_start = next((member for member in range(config.members) if member not in completed), config.members)
    batch_end = min(batch_start + config.batch_size, config.members)
    committed_lead = resumed_from.get("lead_time_hours")
    lines = []
    for member in range(config.members):
        cells = []
        for step in range(config.steps + 1):
            committed = member in completed or (
                batch_start <= member < batch_end and committed_lead is not None and STEP_HOURS * step <= committed_lead
            )
            cells.append("#" if committed and written[member, step] else "+" if written[member, step] else ".")
        lines.append(f"member {member:<3d} " + "".join(cells))
    if len(lines) > 16:
        lines = [*lines[:14], "...", lines[-1]]
    return lines, int(written.sum())


def run_demo(
    members: int = 8,
    steps: int = 12,
    nlat: int = 32,
    nlon: int = 64,
    batch_size: int = 2,
    workdir: str | Path | None = None,
    kill_after: int | None = None,
    keep: bool = False,
    verbose: bool = True,
    json_output: bool = False,
    seed: int = 0,
    stream: IO[str] | None = None,
) -> dict[str, Any]:
    """Run the demo; return its summary (``summary["identical"]`` is the verdict).

    Parameters
    ----------
    members, steps, nlat, nlon, batch_size, seed:
        The ensemble forecast: members, 6-hour steps, grid, members per batch.
    workdir:
        Where to write the checkpoint and the two Zarr stores. Default: a
        temporary directory, removed at the end unless ``keep``.
    kill_after:
        Number of step writes after which run 1 is killed (default about 40%
        of the ``ceil(members / batch_size) * (steps + 1)`` writes).
    verbose:
        Progress bars and the full report; otherwise a one-line verdict.
    json_output:
        Print the summary as JSON instead (no progress bars).
    stream:
        Where the report goes (default ``sys.stdout``).

    Raises :class:`ModuleNotFoundError`, naming the extra to install, before
    any run starts when torch, xarray or zarr is missing.
    """
    stream = sys.stdout if stream is None else stream
    config = DemoConfig(members=members, steps=steps, nlat=nlat, nlon=nlon, batch_size=batch_size, seed=seed)
    config.validate()
    total = config.total_writes
    if kill_after is None:
        kill_after = max(1, min(total - 1, round(KILL_FRACTION * total)))
    if isinstance(kill_after, bool) or not isinstance(kill_after, int) or not 1 <= kill_after < total:
        raise DemoUsageError(
            f"kill-after must be between 1 and {total - 1} (the forecast makes {total} step writes), got {kill_after!r}"
        )
    # In the parent, before the working directory or any child: a child
    # without them would crash, and its crash would read as a failed kill.
    require("torch", "xarray", "zarr", extra="workflows", feature="the demo")
    progress = verbose and not json_output
    say = _Reporter(stream, progress)
    path, temporary = _prepare_workdir(workdir)
    clock = time.perf_counter()
    try:
        summary = _demo(config, path, kill_after, progress, say)
    finally:
        removed = temporary and not keep
        if removed:
            shutil.rmtree(path, ignore_errors=True)
    summary["seconds"] = time.perf_counter() - clock
    summary["workdir"] = str(path)
    summary["workdir_removed"] = removed
    _finish(summary, stream, verbose, json_output, say)
    return summary


def _demo(config: DemoConfig, workdir: Path, kill_after: int, progress: bool, say: _Reporter) -> dict[str, Any]:
    from .workflows._run import format_members

    total = config.total_writes
    batch = min(config.batch_size, config.members)
    say("restartable demo: an ensemble forecast killed with SIGKILL, resumed, and compared bit for bit")
    say(
        "  model       Lorenz-96 by leapfrog (it carries the previous step: level-2 state), "
        f"{len(VARIABLES)} variables on a {config.nlat} x {config.nlon} grid"
    )
    say(
        f"  ensemble    {config.members} members in batches of {batch}, {config.steps} steps of {STEP_HOURS} h, "
        f"GaussianPerturbation(std={NOISE_STD}, seed={config.seed})"
    )
    say(f"  writes      Zarr v3 store; Checkpoint(level=2, flush_interval={FLUSH_INTERVAL}, mode='overwrite')")
    say(f"  workdir     {workdir}")
    say()

    say(f"[1/3] run 1, to be killed with SIGKILL after {kill_after} of {total} step writes")
    killed = _run_phase("killed", config, workdir, progress, kill_after=kill_after)
    catalog_text, resumed_from = _catalog_facts(workdir)
    lines, written = _progress_map(workdir, config, resumed_from)
    say(
        f"  killed: exit status {killed.returncode} (SIGKILL) after {killed.writes} step writes, {killed.seconds:.2f} s"
    )
    say("  Zarr store after the kill (# written and committed, + written after the last commit, . not written):")
    say(_indent("\n".join(lines), "    "))
    say(
        f"  checkpoint after the kill: {resumed_from['rows']} row(s), {_human(resumed_from['bytes'])} "
        f"in {resumed_from['files']} files"
    )
    say(_indent(catalog_text, "    "))
    say()

    lead = resumed_from.get("lead_time_hours")
    where = (
        f"completed_ensembles={format_members(resumed_from.get('completed_ensembles'))}, "
        f"lead_time={'-' if lead is None else f'{lead:g}h'}"
    )
    say(f"[2/3] resume from row {resumed_from.get('commit_id')} ({where})")
    resumed = _run_phase("resume", config, workdir, progress)
    first = resumed.first_write or {}
    continued = lead is not None and first.get("lead_hours") is not None and first["lead_hours"] > lead
    if continued:
        how = (
            f"the model continued from its level-2 state at lead time {first['lead_hours']:g}h, "
            f"members {first['members']}"
        )
    elif lead is None:
        how = f"members {first.get('members')} started again from their batch's pinned row (same perturbation draw)"
    else:
        how = (
            f"members {first.get('members')} rerun from their batch's pinned row; "
            "lead times already committed not written again"
        )
    say(f"  resumed: {resumed.writes} step writes in {resumed.seconds:.2f} s; {how}")
    catalog_final, final_facts = _catalog_facts(workdir)
    say()

    say("[3/3] the same forecast, uninterrupted, into a second Zarr store (no checkpoint)")
    reference = _run_phase("reference", config, workdir, progress)
    say(f"  done: {reference.writes} step writes in {reference.seconds:.2f} s")
    say()

    start = time.perf_counter()
    comparison = compare_stores(workdir / RESUMED_STORE, workdir / REFERENCE_STORE)
    compare_seconds = time.perf_counter() - start
    sample = _sample(workdir, config)
    resumed_size = _size(workdir / RESUMED_STORE)[0]
    reference_size = _size(workdir / REFERENCE_STORE)[0]

    say("Killed + resumed vs uninterrupted, array by array")
    rows = [["array", "shape", "dtype", "killed + resumed (sha256)", "uninterrupted (sha256)", "bitwise equal"]]
    for record in comparison["arrays"]:
        rows.append(
            [
                record["name"],
                "x".join(str(n) for n in record.get("shape", [])) or "()",
                record.get("dtype", "-"),
                record.get("sha256_a", "-")[:16],
                record.get("sha256_b", "-")[:16],
                "yes" if record["equal"] else "NO",
            ]
        )
    say(_indent(_table(rows)))
    if sample:
        say(f"  {sample['label']}:")
        say(f"    killed + resumed  {'  '.join(sample['a'])}")
        say(f"    uninterrupted     {'  '.join(sample['b'])}")
    for line in comparison["differences"]:
        say(f"  DIFFERENCE {line}")
    say()
    say("Checkpoint catalog at the end (the pinned row is the start of the last member batch):")
    say(_indent(catalog_final, "  "))
    say()

    timings = {
        "killed": killed.seconds,
        "resume": resumed.seconds,
        "reference": reference.seconds,
        "compare": compare_seconds,
    }
    say("Timings (wall clock; each run is a fresh Python process: startup = interpreter + imports)")
    rows = [["phase", "total", "startup", "forecast"]]
    for label, phase in (("run 1 (killed)", killed), ("resume", resumed), ("uninterrupted", reference)):
        startup = phase.startup_seconds or 0.0
        rows.append([label, f"{phase.seconds:.2f} s", f"{startup:.2f} s", f"{phase.seconds - startup:.2f} s"])
    rows.append(["compare", f"{compare_seconds:.2f} s", "", ""])
    say(_indent(_table(rows)))
    say(
        f"Sizes on disk: checkpoint {_human(final_facts['bytes'])} "
        f"({final_facts['rows']} rows, {final_facts['files']} files) "
        f"at the end, {_human(resumed_from['bytes'])} after the kill; "
        f"Zarr stores {_human(resumed_size)} and {_human(reference_size)}"
    )

    def phase_doc(phase: _Phase) -> dict[str, Any]:
        doc = asdict(phase)
        doc.pop("stderr_tail")
        return doc

    return {
        "identical": comparison["identical"],
        "config": asdict(config) | {"flush_interval": FLUSH_INTERVAL, "level": 2, "mode": "overwrite"},
        "total_step_writes": total,
        "kill_after": kill_after,
        "killed": phase_doc(killed) | {"signal": "SIGKILL", "zarr_member_steps_written": written},
        "resumed_from": resumed_from,
        "resume": phase_doc(resumed) | {"continued_from_model_state": continued},
        "reference": phase_doc(reference),
        "checkpoint": {"after_kill": resumed_from, "final": final_facts},
        "zarr_bytes": {"resumed": resumed_size, "reference": reference_size},
        "comparison": comparison,
        "sample": sample,
        "timings": timings,
    }


def _sample(workdir: Path, config: DemoConfig) -> dict[str, Any] | None:
    """A few values of the last member at the last lead time, from both stores."""
    import zarr

    name = VARIABLES[0]
    try:
        a, b = (
            cast("zarr.Array[Any]", zarr.open_group(str(workdir / p), mode="r")[name])
            for p in (RESUMED_STORE, REFERENCE_STORE)
        )
        count = min(4, config.nlon)
        va = np.asarray(a[config.members - 1, 0, config.steps, 0, :count])
        vb = np.asarray(b[config.members - 1, 0, config.steps, 0, :count])
    except (KeyError, IndexError):
        return None
    return {
        "label": (
            f"{name}[member {config.members - 1}, lead {STEP_HOURS * config.steps}h, "
            f"first latitude, first {count} longitudes]"
        ),
        "a": [f"{v:.9g}" for v in va.tolist()],
        "b": [f"{v:.9g}" for v in vb.tolist()],
    }


def _finish(summary: dict[str, Any], stream: IO[str], verbose: bool, json_output: bool, say: _Reporter) -> None:
    from .workflows._run import format_members

    if json_output:
        json.dump(summary, stream, indent=2, default=str)
        stream.write("\n")
        stream.flush()
        return
    arrays = summary["comparison"]["arrays"]
    resumed_from = summary["resumed_from"]
    lead = resumed_from.get("lead_time_hours")
    where = (
        f"completed_ensembles={format_members(resumed_from.get('completed_ensembles'))}, "
        f"lead_time={'-' if lead is None else f'{lead:g}h'}"
    )
    if summary["identical"]:
        verdict = (
            f"IDENTICAL: killed with SIGKILL after {summary['kill_after']} of {summary['total_step_writes']} "
            "step writes "
            f"and resumed from the last committed row ({where}), the forecast equals the uninterrupted one "
            f"bit for bit ({len(arrays)} of {len(arrays)} arrays)."
        )
    else:
        differing = sum(1 for record in arrays if not record["equal"])
        verdict = (
            f"DIFFERENT: the killed and resumed forecast differs from the uninterrupted one "
            f"({differing} of {len(arrays)} arrays)."
        )
    where = "removed" if summary["workdir_removed"] else "kept"
    say(f"Total {summary['seconds']:.1f} s; workdir {summary['workdir']} {where}.")
    print(verdict, file=stream, flush=True)
    if not verbose and not summary["workdir_removed"]:
        print(f"Outputs kept in {summary['workdir']}", file=stream, flush=True)


# ---------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options (shared by ``restartable demo`` and ``python -m restartable.demo``)."""
    defaults = DemoConfig()
    parser.add_argument(
        "--members", type=int, default=defaults.members, help=f"ensemble members (default {defaults.members})"
    )
    parser.add_argument(
        "--steps", type=int, default=defaults.steps, help=f"6-hour forecast steps (default {defaults.steps})"
    )
    parser.add_argument("--nlat", type=int, default=defaults.nlat, help=f"grid latitudes (default {defaults.nlat})")
    parser.add_argument("--nlon", type=int, default=defaults.nlon, help=f"grid longitudes (default {defaults.nlon})")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help=f"members per batch (default {defaults.batch_size})"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help=f"seed of the data and the perturbation (default {defaults.seed})",
    )
    parser.add_argument(
        "--kill-after",
        type=int,
        default=None,
        metavar="N",
        help="kill run 1 after N step writes (default: about 40%% of them)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "where to write the checkpoint and the Zarr stores, kept at the end "
            "(default: a temporary directory, removed at the end)"
        ),
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary working directory and print its path")
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON summary (no progress bars)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no report, only the verdict")
    return parser


DESCRIPTION = (
    "Run an ensemble forecast (Lorenz-96 with leapfrog state, Gaussian perturbations, Zarr output, "
    "level-2 checkpoint) in a child process, kill it with SIGKILL partway, resume it, run the same "
    "forecast uninterrupted, and compare the two outputs bit for bit."
)
EPILOG = (
    "Exit status: 0 the outputs are identical, 1 they differ or a run failed, "
    "2 usage error or a missing optional dependency, 130 interrupted."
)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the demo from parsed options; the exit status."""
    try:
        summary = run_demo(
            members=args.members,
            steps=args.steps,
            nlat=args.nlat,
            nlon=args.nlon,
            batch_size=args.batch_size,
            workdir=args.workdir,
            kill_after=args.kill_after,
            keep=args.keep,
            verbose=not args.quiet,
            json_output=args.json,
            seed=args.seed,
        )
    except (DemoUsageError, MissingExtraError) as exc:
        print(f"restartable demo: error: {exc}", file=sys.stderr)
        return 2
    except DemoError as exc:
        print(f"restartable demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrestartable demo: interrupted", file=sys.stderr)
        return 130
    return 0 if summary["identical"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m restartable.demo``: the demo, or (``--child``) one of its runs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        child = argparse.ArgumentParser(prog="restartable-demo-child")
        child.add_argument("--child", choices=("killed", "resume", "reference"), required=True)
        child.add_argument("--pause-after", type=int, default=None)
        child.add_argument("--child-progress", action="store_true")
        add_arguments(child)
        args = child.parse_args(argv)
        config = DemoConfig(
            members=args.members,
            steps=args.steps,
            nlat=args.nlat,
            nlon=args.nlon,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        return _child(args.child, config, Path(args.workdir), args.pause_after, args.child_progress)
    parser = argparse.ArgumentParser(prog="python -m restartable.demo", description=DESCRIPTION, epilog=EPILOG)
    return run_from_args(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
