#!/usr/bin/env python
"""restartable side by side with earth2studio's checkpoint module, same machine, same run.

Three measurements, each with both libraries (``earth2studio==0.19.0``,
``earth2studio.utils.checkpoint``, installed with ``pip install --no-deps``;
without it the earth2studio columns are skipped with a message):

commit
    A bound dataclass of ``--tensors`` float32 CPU torch tensors holding
    ``--size-mb`` MB in all (default 265 MB = 5 x 53 MB, 1 MB = 10^6 bytes),
    ``--commits`` commits per side (default 10), every tensor changed
    (``add_(1)``) before each commit. Sides, taking turns commit by commit:

    - raw: ``numpy.save`` of the same tensors to 5 files (truncating the
      previous version) + ``os.fsync`` of each file + fsync of the directory;
    - earth2studio: ``session.write(lead_time=i)`` (``flush_interval=1``,
      overwrite). Its arrays are written with ``numpy.save`` and never
      fsynced (checked in its source at run time): the figure is mostly a
      copy into the page cache, not a durable commit;
    - earth2studio + fsync: the same commit followed by an fsync of every file
      and directory of the new row, for a like-for-like durable figure;
    - restartable sync: ``Checkpoint(..., async_commit=False)`` (durable,
      overwrite), ``session.write(lead_time=i)``;
    - restartable async: ``Checkpoint(..., async_commit=True)``. *Blocking* is
      the time inside ``write()`` (the snapshot); *to durable* runs until
      ``session.flush(wait=True)`` returns after it.

    ``os.sync()`` runs (untimed) before every timed commit, so that no side
    pays for another's write-back, and with no persist in flight.
    Then one *sequence* per side and ``--sequences`` round: ``--commits`` x
    (change the state, commit) back to back, then ``flush(wait=True)`` for
    async, timed as a whole: the async persists overlap the caller's work,
    and a ``write()`` waits for the persist still in flight.

catalog
    Metadata-only commits (``write(lead_time=i)``, nothing bound) in
    ``mode="append"``, ``history_size=None``, at 1 and ``--rows`` existing
    rows (default 10,000), ``--meta-commits`` timed commits each (round robin
    over the four catalogs). restartable's catalogs are built through its API
    with ``durable=False`` then ``os.sync()``. earth2studio rewrites its whole
    ``catalog.json`` at every commit, so building 10,000 rows through its API
    is quadratic (about 12 minutes on a 2-core VM); by default
    (``--e2s-build replicate``) its large catalog is built from one row
    committed through its API, copied ``--rows`` times with fresh commit ids,
    and the ``catalog.json`` written once by earth2studio's own
    ``Checkpoint._update_catalog``: the same files its API would have left.
    ``--e2s-build api`` builds it commit by commit instead.

workflow
    ``restartable.workflows.deterministic`` with the reference ``Lorenz96``
    model (2 variables on ``--nlat`` x ``--nlon``, default 2048 x 2048: the
    level-2 state x_prev + x_curr is 2 x 32 MiB = 64 MiB), ``SyntheticData``
    and ``MemoryIO``, ``--steps`` steps (default 40), a commit after every
    step (``flush_interval=1``, ``level=2``, overwrite). Sides: no checkpoint,
    earth2studio (its session passed to the workflow as is; the model binds
    its state with earth2studio's ``bind_checkpoint_state``), restartable sync
    and restartable async. Each run covers the model's construction, the
    rollout and leaving the session (for async: until the last row is
    durable). Sides take turns, ``os.sync()`` before each run, one short
    untimed warm-up run per side, ``--repeats`` rounds, medians.

Nothing is asserted: ratios are printed against the targets, the exit
status is 0 either way.

Usage::

    python benchmarks/bench_vs_earth2studio.py                  # defaults (about 10 minutes on 2 cores)
    python benchmarks/bench_vs_earth2studio.py --size-mb 32 --commits 3 --rows 300 --meta-commits 10 \\
        --nlat 128 --nlon 256 --steps 4 --repeats 1             # quick check
    python benchmarks/bench_vs_earth2studio.py --parts commit   # one part only
    python benchmarks/bench_vs_earth2studio.py --json           # JSON on stdout, table on stderr
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import cProfile
import dataclasses
import datetime as _dt
import gc
import importlib.metadata
import importlib.util
import inspect
import io as _io
import json
import os
import platform
import pstats
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import log, log_table_header, log_to_stderr, quantile, run_meta, timed_commits

import restartable
from restartable import Checkpoint
from restartable.components import Lorenz96, MemoryIO, SyntheticData
from restartable.components.prognostic import Lorenz96State
from restartable.workflows import deterministic

MB = 1_000_000
MiB = 1 << 20
E2S_VERSION = "0.19.0"
INSTALL = f"pip install --no-deps earth2studio=={E2S_VERSION}"
VARIABLES = ("u10m", "v10m")
START = ["2024-01-01T00:00"]

# Targets of issue 7 (printed, never asserted).
SYNC_VS_RAW_MIN = 0.9  # restartable sync bandwidth / raw numpy.save+fsync bandwidth, at least
ASYNC_VS_E2S_MAX = 0.5  # restartable async blocking / earth2studio commit, at most
ASYNC_VS_SYNC_MAX = 0.1  # restartable async blocking / restartable sync commit, at most
ASYNC_TOTAL_VS_SYNC_MAX = 1.0  # restartable async time to durable / sync, at most
CATALOG_RATIO_MAX = 1.2  # restartable commit cost at N rows / at 1 row (benchmarks/README.md)
WORKFLOW_ASYNC_MAX = 1.05  # restartable async workflow time / without checkpoint, at most


# --------------------------------------------------------------------------- earth2studio


def load_earth2studio() -> tuple[Any, str | None, str]:
    """earth2studio's checkpoint module, its version, and how it was loaded (or None and why)."""
    try:
        version = importlib.metadata.version("earth2studio")
    except importlib.metadata.PackageNotFoundError:
        return None, None, "not installed"
    try:
        from earth2studio.utils import checkpoint as module

        return module, version, "import earth2studio.utils.checkpoint"
    except Exception as exc:  # earth2studio.utils/__init__ may need heavy optional deps
        reason = f"{type(exc).__name__}: {exc}"
    # Fall back to the module file alone: it needs numpy and torch only.
    spec = importlib.util.find_spec("earth2studio")
    if spec is None or spec.origin is None:
        return None, version, f"import failed ({reason}) and the package was not found"
    path = Path(spec.origin).parent / "utils" / "checkpoint.py"
    name = "_earth2studio_checkpoint_standalone"
    file_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module  # dataclasses look their module up in sys.modules
    try:
        file_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        return None, version, f"import failed ({reason}); loading {path} failed too ({type(exc).__name__}: {exc})"
    return module, version, f"loaded {path} by path (package import failed: {reason})"


def e2s_fsyncs_arrays(e2s: Any) -> bool:
    """Whether earth2studio's array writer calls fsync (read from its source)."""
    try:
        return "fsync" in inspect.getsource(e2s._CheckpointCodec.dump_array)
    except (AttributeError, OSError, TypeError):
        return False


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root``, then ``root`` and its two parents (commits/, the store)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath), directory=True)
    fsync_path(root.parent, directory=True)
    fsync_path(root.parent.parent, directory=True)


# --------------------------------------------------------------------------- helpers


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def in_fresh_context(fn: Callable[[], Any]) -> Any:
    # Both libraries keep the current checkpoint, the active session and
    # pending states in context variables: each part (and each workflow run)
    # gets its own context so that nothing carries over.
    return contextvars.copy_context().run(fn)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def fmt_ratio(value: float | None) -> str:
    return "   -" if value is None else f"{value:.3f}"


class Profiler:
    """cProfile around chosen calls (``--profile``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.profiles: dict[str, list[Any]] = {}

    def run(self, label: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return fn()
        prof, calls = self.profiles.setdefault(label, [cProfile.Profile(), 0])
        self.profiles[label][1] = calls + 1
        return prof.runcall(fn)

    def report(self, top: int = 14) -> None:
        for label, (prof, calls) in self.profiles.items():
            out = _io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
            lines = [
                line
                for line in out.getvalue().strip().splitlines()
                if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced"))
            ]
            log(f"\n--- profile: {label} (totals over {calls} calls, sorted by own time; caller's thread only) ---")
            for line in lines:
                log(line)


# --------------------------------------------------------------------------- part 1: commit


def make_state_class(n: int) -> type:
    cls = dataclasses.make_dataclass("BenchState", [(f"t{k}", Any) for k in range(n)])
    cls.__module__ = __name__  # make_dataclass(module=...) needs Python 3.12
    return cls


def raw_save(tensors: list[torch.Tensor], raw_dir: Path) -> None:
    """numpy.save each tensor over its previous file, fsync each file, fsync the directory."""
    for k, tensor in enumerate(tensors):
        with open(raw_dir / f"t{k}.npy", "wb") as fh:
            np.save(fh, tensor.cpu().numpy())
            fh.flush()
            os.fsync(fh.fileno())
    fsync_path(raw_dir, directory=True)


def bench_commit(
    root: Path,
    e2s: Any,
    size_mb: float,
    ntensors: int,
    commits: int,
    sequences: int,
    profile: bool,
    device: str = "cpu",
) -> dict[str, Any]:
    profiler = Profiler(profile)
    count = max(1, int(size_mb * MB / ntensors / 4))
    rng = np.random.default_rng(0)
    tensors = [torch.from_numpy(rng.random(count, dtype=np.float32)).to(device) for _ in range(ntensors)]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    State = make_state_class(ntensors)
    state = State(*tensors)
    raw_dir = root / "commit-raw"
    raw_dir.mkdir()

    sides = ["raw", *(["earth2studio", "earth2studio+fsync"] if e2s else []), "restartable sync", "restartable async"]
    times: dict[str, list[float]] = {side: [] for side in sides}
    blocking: list[float] = []  # restartable async: time inside write()
    seq_times: dict[str, list[float]] = {side: [] for side in sides}
    seq_blocking: list[float] = []  # restartable async write() times inside the sequences
    tick = [0]
    row_bytes: dict[str, int] = {}

    def mutate() -> None:
        for t in tensors:
            t.add_(1.0)
        if device != "cpu":
            torch.cuda.synchronize()  # the change is done before any side's clock starts

    with contextlib.ExitStack() as stack:
        sessions: dict[str, Any] = {}
        if e2s:
            for side in ("earth2studio", "earth2studio+fsync"):
                ck = e2s.Checkpoint(
                    f"vs-{side}".replace("+", "-"), path=root / f"commit-{side}".replace("+", "-"), rank=0, world_size=1
                )
                sessions[side] = stack.enter_context(ck)
                sessions[side].bind(state)
        for side, asynchronous in (("restartable sync", False), ("restartable async", True)):
            ck = Checkpoint(
                side.replace(" ", "-"),
                path=root / f"commit-{side}".replace(" ", "-"),
                rank=0,
                world_size=1,
                async_commit=asynchronous,
            )
            sessions[side] = stack.enter_context(ck)
            sessions[side].bind(state)

        def commit(side: str, record: bool) -> None:
            """One commit of ``side``; with ``record``, its time(s) appended."""
            tick[0] += 1
            lead = tick[0]
            if side == "raw":
                start = time.perf_counter()
                raw_save(tensors, raw_dir)
                elapsed = time.perf_counter() - start
            elif side == "earth2studio":
                session = sessions[side]
                start = time.perf_counter()
                session.write(lead_time=lead)
                elapsed = time.perf_counter() - start
            elif side == "earth2studio+fsync":
                session = sessions[side]
                start = time.perf_counter()
                session.write(lead_time=lead)
                fsync_tree(session.catalog.rank_path / "commits" / session.commit_id)
                elapsed = time.perf_counter() - start
            elif side == "restartable sync":
                session = sessions[side]
                start = time.perf_counter()
                profiler.run("restartable sync: write()", lambda: session.write(lead_time=lead))
                elapsed = time.perf_counter() - start
            else:
                session = sessions[side]
                start = time.perf_counter()
                profiler.run("restartable async: write() (blocking)", lambda: session.write(lead_time=lead))
                blocked = time.perf_counter() - start
                session.flush(wait=True)
                elapsed = time.perf_counter() - start
                if record:
                    blocking.append(blocked)
            if record:
                times[side].append(elapsed)

        # Round 0 is a warm-up: first files, first rows, host buffers allocated.
        for rnd in range(commits + 1):
            shift = rnd % len(sides)
            for side in sides[shift:] + sides[:shift]:
                mutate()
                os.sync()
                commit(side, record=rnd > 0)

        # Sequences: commits back to back, the state changed in between, timed as a whole.
        for rnd in range(sequences):
            order = sides if rnd % 2 == 0 else sides[::-1]
            for side in order:
                os.sync()
                start = time.perf_counter()
                for _ in range(commits):
                    mutate()
                    if side == "restartable async":
                        tick[0] += 1
                        t0 = time.perf_counter()
                        sessions[side].write(lead_time=tick[0])
                        seq_blocking.append(time.perf_counter() - t0)
                    else:
                        commit(side, record=False)
                if side == "restartable async":
                    sessions[side].flush(wait=True)
                seq_times[side].append(time.perf_counter() - start)

        # One last commit per side of the same, final state: every side then holds it (checked below).
        for side in sides:
            commit(side, record=False)

        def tree_bytes(path: Path) -> int:
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

        row_bytes["raw"] = tree_bytes(raw_dir)
        for side, session in sessions.items():
            path = (
                (session.catalog.rank_path / "commits" / session.commit_id)
                if side.startswith("earth2studio")
                else session.entry.path
            )
            row_bytes[side] = tree_bytes(path)
        # Check once that every side holds the final state.
        expected = [t.cpu().numpy().copy() for t in tensors]

    restored_equal: dict[str, bool] = {}
    last = tick[0]
    for side in sides:
        if side == "raw":
            arrays = [np.load(raw_dir / f"t{k}.npy") for k in range(ntensors)]
            restored_equal[side] = all(np.array_equal(a, e) for a, e in zip(arrays, expected, strict=True))
            continue
        fresh = State(*([None] * ntensors))

        def reload(side: str = side, fresh: Any = fresh) -> Any:
            if side.startswith("earth2studio"):
                ck = e2s.Checkpoint(
                    f"vs-{side}".replace("+", "-"), path=root / f"commit-{side}".replace("+", "-"), rank=0, world_size=1
                )
                with ck as session:
                    session.bind(fresh)
                    return session.lead_time
            ck = Checkpoint(
                side.replace(" ", "-"), path=root / f"commit-{side}".replace(" ", "-"), rank=0, world_size=1
            )
            with ck as session:
                session.bind(fresh)
                return session.lead_time

        lead = in_fresh_context(reload)
        restored_equal[side] = lead is not None and all(
            np.array_equal(np.asarray(getattr(fresh, f"t{k}").cpu()), e) for k, e in enumerate(expected)
        )
        del fresh
    del state, expected
    tensors.clear()  # free the state before the next part
    gc.collect()
    profiler.report()

    med = {side: median(v) for side, v in times.items()}
    seq_med = {side: median(v) for side, v in seq_times.items()}
    mbps = {side: nbytes / MB / med[side] for side in sides}
    result: dict[str, Any] = {
        "device": device,
        "bytes": nbytes,
        "mb": nbytes / MB,
        "tensors": ntensors,
        "commits": commits,
        "sequences": sequences,
        "sides": sides,
        "times_s": times,
        "median_s": med,
        "mb_per_s": mbps,
        "async_blocking_s": blocking,
        "async_blocking_median_s": median(blocking),
        "sequence_times_s": seq_times,
        "sequence_median_s": seq_med,
        "sequence_async_blocking_median_s": median(seq_blocking),
        "sequence_async_blocking_p90_s": quantile(seq_blocking, 0.9) if seq_blocking else None,
        "row_bytes": row_bytes,
        "final_state_restored_equal": restored_equal,
        "last_lead_time": last,
    }
    result["ratio_sync_over_raw_bandwidth"] = mbps["restartable sync"] / mbps["raw"]
    result["ratio_async_blocking_over_sync"] = result["async_blocking_median_s"] / med["restartable sync"]
    result["ratio_async_blocking_over_e2s"] = ratio(result["async_blocking_median_s"], med.get("earth2studio"))
    result["ratio_async_blocking_over_e2s_fsync"] = ratio(
        result["async_blocking_median_s"], med.get("earth2studio+fsync")
    )
    result["ratio_async_durable_over_sync"] = med["restartable async"] / med["restartable sync"]
    result["ratio_async_sequence_over_sync"] = seq_med["restartable async"] / seq_med["restartable sync"]
    result["ratio_sync_over_e2s_fsync"] = ratio(med["restartable sync"], med.get("earth2studio+fsync"))
    result["ratio_sync_over_e2s"] = ratio(med["restartable sync"], med.get("earth2studio"))
    return result


def report_commit(r: dict[str, Any], e2s_note: str) -> None:
    log()
    log(
        f"COMMIT: {r['mb']:.0f} MB state "
        f"({r['tensors']} float32 torch tensors on {r['device']} in one bound dataclass), "
        f"{r['commits']} commits per side after 1 warm-up, state changed before every commit; "
        f"os.sync() before each"
    )
    header = f"{'side':<22} {'median':>10} {'min':>10} {'max':>10} {'MB/s':>8}  note"
    log_table_header(header)
    notes = {
        "raw": "numpy.save + fsync of each file + fsync dir (durable)",
        "earth2studio": e2s_note,
        "earth2studio+fsync": "the same + fsync of every file and dir of the row (durable)",
        "restartable sync": "durable: write, xxh3, fsync files + dirs, rename",
        "restartable async": "until durable: write() + flush(wait=True)",
    }
    for side in r["sides"]:
        v = r["times_s"][side]
        log(
            f"{side:<22} {r['median_s'][side] * 1e3:>7.1f} ms {min(v) * 1e3:>7.1f} ms {max(v) * 1e3:>7.1f} ms "
            f"{r['mb_per_s'][side]:>8.0f}  {notes[side]}"
        )
    b = r["async_blocking_s"]
    log(
        f"{'restartable async':<22} {r['async_blocking_median_s'] * 1e3:>7.1f} ms {min(b) * 1e3:>7.1f} ms "
        f"{max(b) * 1e3:>7.1f} ms "
        f"{r['mb'] / r['async_blocking_median_s']:>8.0f}  blocking: time inside write() (the snapshot)"
    )
    log()
    log(
        f"sequence of {r['commits']} commits back to back "
        f"(state changed before each; async: + final flush(wait=True)), "
        f"median of {r['sequences']}:"
    )
    log("  " + "; ".join(f"{side} {r['sequence_median_s'][side]:.2f} s" for side in r["sides"]))
    log(
        f"  restartable async write() inside the sequence (waits for the persist in flight): median "
        f"{r['sequence_async_blocking_median_s'] * 1e3:.1f} ms, "
        f"p90 {r['sequence_async_blocking_p90_s'] * 1e3:.1f} ms"
    )
    log("row size on disk: " + ", ".join(f"{side} {size / MB:.1f} MB" for side, size in r["row_bytes"].items()))
    log(
        "final state read back equal: "
        + ", ".join(f"{side}={ok}" for side, ok in r["final_state_restored_equal"].items())
    )


# --------------------------------------------------------------------------- part 2: catalog


def rs_catalog(path: Path, durable: bool = True) -> Checkpoint:
    return Checkpoint("vs-catalog", path=path, mode="append", history_size=None, rank=0, world_size=1, durable=durable)


def e2s_catalog(e2s: Any, path: Path) -> Any:
    return e2s.Checkpoint("vs-catalog", path=path, mode="append", history_size=None, rank=0, world_size=1)


def e2s_build_api(e2s: Any, path: Path, rows: int) -> None:
    with e2s_catalog(e2s, path) as session:
        for i in range(rows):
            session.write(lead_time=i)


def e2s_build_replicate(e2s: Any, path: Path, rows: int) -> None:
    """``rows`` rows in earth2studio's format.

    One committed through its API, copied, catalog written by its own code.
    """
    ck = e2s_catalog(e2s, path)
    with ck as session:
        session.write(lead_time=0)
    commits = path / "commits"
    (template,) = commits.iterdir()
    manifest = json.loads((template / "manifest.json").read_text())
    entries = [e2s._entry_from_manifest(manifest, template)]
    base = _dt.datetime.now(_dt.timezone.utc)
    for i in range(1, rows):
        write_count = i + 1
        commit_id = f"commit_{write_count:08d}_{uuid.uuid4().hex[:12]}"
        m = dict(manifest)
        m.update(
            commit_id=commit_id,
            write_count=write_count,
            saved_at=(base + _dt.timedelta(microseconds=i)).isoformat(),
            metadata={"lead_time": e2s._CheckpointCodec.dump_value(i, commits, ())},
        )
        row = commits / commit_id
        row.mkdir()
        (row / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
        entries.append(e2s._entry_from_manifest(m, row))
    ck._catalog = entries[:-1]
    ck._update_catalog(entries[-1])  # earth2studio's own catalog.json writer


def bench_catalog(root: Path, e2s: Any, rows: int, commits: int, warmup: int, e2s_build: str) -> dict[str, Any]:
    sizes = [1, rows]
    libs = ["restartable", *(["earth2studio"] if e2s else [])]
    paths = {(lib, size): root / f"catalog-{lib}-{size}" for lib in libs for size in sizes}
    build_s: dict[str, float] = {}
    for (lib, size), path in paths.items():
        start = time.perf_counter()
        how = ""
        if lib == "restartable":
            with rs_catalog(path, durable=False) as session:
                for i in range(size):
                    session.write(lead_time=i)
            how = "API, durable=False"
        elif size == 1 or e2s_build == "api":
            e2s_build_api(e2s, path, size)
            how = "API"
        else:
            e2s_build_replicate(e2s, path, size)
            how = "one row through the API, replicated; catalog.json by its _update_catalog"
        build_s[f"{lib} {size}"] = time.perf_counter() - start
        log(f"  built {lib} catalog of {size:,} rows in {build_s[f'{lib} {size}']:.1f} s ({how})")
    os.sync()

    times: dict[tuple[str, int], list[float]] = {key: [] for key in paths}
    enter_s: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        sessions = {}
        for (lib, size), path in paths.items():
            start = time.perf_counter()
            ck = rs_catalog(path) if lib == "restartable" else e2s_catalog(e2s, path)
            sessions[(lib, size)] = stack.enter_context(ck)
            enter_s[f"{lib} {size}"] = time.perf_counter() - start
        lead = {key: key[1] for key in paths}
        keys = list(paths)
        order = random.Random(0)
        for rnd in range(warmup + commits):
            # A fresh random order every round: no catalog always follows the same one (an fsync pays
            # for the journal of what ran before it); os.sync() before each commit for the same reason.
            order.shuffle(keys)
            for key in keys:
                lead[key] += 1
                session = sessions[key]
                os.sync()
                start = time.perf_counter()
                session.write(lead_time=lead[key])
                elapsed = time.perf_counter() - start
                if rnd >= warmup:
                    times[key].append(elapsed)
    rows_after = {
        f"{lib} {size}": len((rs_catalog(p) if lib == "restartable" else e2s_catalog(e2s, p)).catalog)
        for (lib, size), p in paths.items()
    }
    result: dict[str, Any] = {
        "rows": rows,
        "sizes": sizes,
        "libraries": libs,
        "commits": commits,
        "warmup": warmup,
        "e2s_build": e2s_build if e2s else None,
        "build_s": build_s,
        "enter_session_s": enter_s,
        "rows_after": rows_after,
        "commit_s": {f"{lib} {size}": times[(lib, size)] for lib, size in paths},
        "commit_median_s": {f"{lib} {size}": median(times[(lib, size)]) for lib, size in paths},
        "commit_p90_s": {f"{lib} {size}": quantile(times[(lib, size)], 0.9) for lib, size in paths},
    }
    med = result["commit_median_s"]
    result["ratio_restartable_large_over_small"] = med[f"restartable {rows}"] / med["restartable 1"]
    if e2s:
        result["ratio_e2s_large_over_small"] = med[f"earth2studio {rows}"] / med["earth2studio 1"]
        result["ratio_e2s_over_restartable_at_large"] = med[f"earth2studio {rows}"] / med[f"restartable {rows}"]
        result["ratio_e2s_over_restartable_at_1"] = med["earth2studio 1"] / med["restartable 1"]
        # Building ``rows`` rows commit by commit through earth2studio's API,
        # if the cost grows linearly between the two sizes:
        result["e2s_api_build_estimate_s"] = rows * (med["earth2studio 1"] + med[f"earth2studio {rows}"]) / 2
    return result


def report_catalog(r: dict[str, Any]) -> None:
    log()
    log(
        f"CATALOG: metadata-only commits, mode='append', history_size=None, "
        f"{r['commits']} timed commits per catalog after "
        f"{r['warmup']} untimed (all four in a random order each round, os.sync() before each); "
        f"restartable durable=True"
    )
    header = (
        f"{'library':<14} {'existing rows':>13} {'commit median':>14} {'p90':>10} {'commits/s':>10} "
        f"{'enter session':>14}"
    )
    log_table_header(header)
    for lib in r["libraries"]:
        for size in r["sizes"]:
            key = f"{lib} {size}"
            m = r["commit_median_s"][key]
            log(
                f"{lib:<14} {size:>13,} {m * 1e3:>11.2f} ms {r['commit_p90_s'][key] * 1e3:>7.2f} ms {1 / m:>10.0f} "
                f"{r['enter_session_s'][key] * 1e3:>11.1f} ms"
            )
    n = r["rows"]
    log(f"restartable: cost at {n:,} rows / at 1 row = {r['ratio_restartable_large_over_small']:.2f}")
    if "ratio_e2s_large_over_small" in r:
        log(
            f"earth2studio: cost at {n:,} rows / at 1 row = {r['ratio_e2s_large_over_small']:.2f} "
            f"(it rewrites its whole catalog.json "
            f"and lists commits/ at every commit)"
        )
        log(f"earth2studio / restartable per commit: {r['ratio_e2s_over_restartable_at_1']:.2f} at 1 row, "
            f"{r['ratio_e2s_over_restartable_at_large']:.2f} at {n:,} rows")  # fmt: skip
        if r["e2s_build"] == "replicate":
            log(
                f"building {n:,} rows commit by commit through earth2studio's API would take about "
                f"{r['e2s_api_build_estimate_s']:.0f} s (from the two measured costs, linear growth); "
                f"built by replication instead"
            )
    log("catalogs grow by the measured commits: " + ", ".join(f"{k} -> {v:,}" for k, v in r["rows_after"].items()))


# --------------------------------------------------------------------------- part 3: workflow


def e2s_lorenz96_class(e2s: Any) -> type:
    class E2SLorenz96(Lorenz96):
        """The reference Lorenz96, its state bound with earth2studio's ``bind_checkpoint_state``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)  # binds nothing: no restartable checkpoint in this context
            self.checkpoint = e2s.bind_checkpoint_state(Lorenz96State())

    return E2SLorenz96


STAGING = (
    "staging only"  # restartable with flush_interval=None: the model stages its state every step, one commit at the end
)


def workflow_run(
    side: str, e2s: Any, data: SyntheticData, steps: int, path: Path
) -> tuple[float, float, MemoryIO, int]:
    """One forecast: wall time, time inside write/flush, output, size of the last row."""

    def run() -> tuple[float, float, MemoryIO, int]:
        io = MemoryIO()
        started = time.perf_counter()
        if side == "without":
            model = Lorenz96(VARIABLES, lat=data.lat, lon=data.lon)
            deterministic(START, steps, model, data, io, device="cpu", verbose=False)
            return time.perf_counter() - started, 0.0, io, 0
        if side == "earth2studio":
            checkpoint = e2s.Checkpoint("vs-workflow", path=path, flush_interval=1, level=2, rank=0, world_size=1)
            model_class = e2s_lorenz96_class(e2s)
        else:
            checkpoint = Checkpoint(
                "vs-workflow",
                path=path,
                flush_interval=None if side == STAGING else 1,
                level=2,
                rank=0,
                world_size=1,
                async_commit=side == "restartable async",
            )
            model_class = Lorenz96
        with checkpoint as session:
            commits = timed_commits(session)
            model = model_class(VARIABLES, lat=data.lat, lon=data.lon)  # constructed inside the session
            deterministic(START, steps, model, data, io, device="cpu", verbose=False, checkpoint=session)
        elapsed = time.perf_counter() - started
        # Untimed check: one row holding the model state at the last lead time.
        entries = (e2s.Checkpoint("vs-workflow", path=path, rank=0, world_size=1) if side == "earth2studio"
                   else Checkpoint("vs-workflow", path=path, rank=0, world_size=1)).catalog  # fmt: skip
        if (
            len(entries) != 1
            or np.timedelta64(entries[-1].lead_time) != np.timedelta64(6 * steps, "h")
            or not any("Lorenz96State" in s for s in entries[-1].state_ids)
        ):
            raise RuntimeError(f"{side}: unexpected checkpoint: {entries}")
        row_bytes = sum(f.stat().st_size for f in (path / "commits").rglob("*") if f.is_file())
        return elapsed, sum(commits), io, row_bytes

    return in_fresh_context(run)


def same_output(a: MemoryIO, b: MemoryIO) -> bool:
    return sorted(a.arrays) == sorted(b.arrays) and all(a[k].tobytes() == b[k].tobytes() for k in a.arrays)


def bench_workflow(
    root: Path, e2s: Any, nlat: int, nlon: int, steps: int, repeats: int, staging: bool
) -> dict[str, Any]:
    sides = [
        "without",
        *([STAGING] if staging else []),
        *(["earth2studio"] if e2s else []),
        "restartable sync",
        "restartable async",
    ]
    data = SyntheticData(nlat=nlat, nlon=nlon)
    times: dict[str, list[float]] = {side: [] for side in sides}
    cpu_times: dict[str, list[float]] = {side: [] for side in sides}  # process CPU (user + system, all threads)
    commit_times: dict[str, list[float]] = {side: [] for side in sides if side != "without"}
    row_bytes: dict[str, int] = {}
    equal: dict[str, bool] = {}
    reference: MemoryIO | None = None
    # Warm-up: one short run per side (imports, first allocations), untimed.
    for side in sides:
        path = root / f"workflow-warmup-{side.replace(' ', '-')}"
        gc.collect()
        elapsed, _, _, _ = workflow_run(side, e2s, data, min(2, steps), path)
        shutil.rmtree(path, ignore_errors=True)
        log(f"  warm-up  {side:<18} {elapsed:8.2f} s ({min(2, steps)} steps)")
    for rnd in range(repeats):
        shift = rnd % len(sides)
        # Round 1 starts with the run without checkpoint: its output is the reference of the bitwise comparison.
        for side in sides[shift:] + sides[:shift]:
            path = root / f"workflow-{rnd}-{side.replace(' ', '-')}"
            gc.collect()
            os.sync()
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            elapsed, committing, io, size = workflow_run(side, e2s, data, steps, path)
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            shutil.rmtree(path, ignore_errors=True)
            times[side].append(elapsed)
            cpu_times[side].append(cpu_after.ru_utime - cpu.ru_utime + cpu_after.ru_stime - cpu.ru_stime)
            note = ""
            if side != "without":
                commit_times[side].append(committing)
                row_bytes[side] = size
                note = f"  ({committing:.2f} s inside write/flush, {steps + 1 if side != STAGING else 1} commits)"
            if rnd == 0:
                if side == "without":
                    reference = io
                elif reference is not None:
                    equal[side] = same_output(io, reference)
            del io
            log(f"  round {rnd + 1:<2} {side:<18} {elapsed:8.2f} s  CPU {cpu_times[side][-1]:6.2f} s{note}")
        reference = None
    gc.collect()
    med = {side: median(v) for side, v in times.items()}
    result: dict[str, Any] = {
        "nlat": nlat,
        "nlon": nlon,
        "variables": list(VARIABLES),
        "steps": steps,
        "repeats": repeats,
        "state_bytes": 2 * len(VARIABLES) * nlat * nlon * 4,
        "sides": sides,
        "times_s": times,
        "median_s": med,
        "cpu_times_s": cpu_times,
        "cpu_median_s": {side: median(v) for side, v in cpu_times.items()},
        "commit_times_s": commit_times,
        "commit_per_step_s": {side: median(v) / (steps + 1) for side, v in commit_times.items()},
        "row_bytes": row_bytes,
        "outputs_equal_to_without": equal,
        "torch_threads": torch.get_num_threads(),
    }
    result["ratio_over_without"] = {side: med[side] / med["without"] for side in sides if side != "without"}
    result["ratio_min_over_min"] = {
        side: min(times[side]) / min(times["without"]) for side in sides if side != "without"
    }
    result["ratio_paired_median"] = {
        side: median([w / o for w, o in zip(times[side], times["without"], strict=True)])
        for side in sides
        if side != "without"
    }
    result["overhead_per_step_s"] = {side: (med[side] - med["without"]) / steps for side in sides if side != "without"}
    cpu_med = result["cpu_median_s"]
    result["cpu_ratio_over_without"] = {side: cpu_med[side] / cpu_med["without"] for side in sides if side != "without"}
    return result


def report_workflow(r: dict[str, Any]) -> None:
    log()
    log(
        f"WORKFLOW: deterministic, Lorenz96 {len(r['variables'])} variables x {r['nlat']} x {r['nlon']}, "
        f"{r['steps']} steps, MemoryIO; "
        f"level-2 state {r['state_bytes'] / MiB:g} MiB; flush_interval=1, overwrite; "
        f"torch {r['torch_threads']} threads; "
        f"median of {r['repeats']}"
    )
    header = (
        f"{'side':<18} {'median':>9} {'min':>9} {'max':>9} {'ratio':>7} {'min/min':>8} {'paired':>7} {'ms/step':>8} "
        f"{'in write':>9} {'CPU':>8} {'CPU ratio':>9} {'row MB':>7}"
    )
    log_table_header(header)
    for side in r["sides"]:
        v = r["times_s"][side]
        cpu = r["cpu_median_s"][side]
        if side == "without":
            log(
                f"{side:<18} {r['median_s'][side]:>8.2f}s {min(v):>8.2f}s {max(v):>8.2f}s "
                f"{'1':>7} {'1':>8} {'1':>7} {'-':>8} {'-':>9} "
                f"{cpu:>7.2f}s {'1':>9} {'-':>7}"
            )
            continue
        per_commit = (
            r["commit_per_step_s"][side] * (r["steps"] + 1) if side == STAGING else r["commit_per_step_s"][side]
        )
        log(
            f"{side:<18} {r['median_s'][side]:>8.2f}s {min(v):>8.2f}s {max(v):>8.2f}s "
            f"{r['ratio_over_without'][side]:>7.3f} "
            f"{r['ratio_min_over_min'][side]:>8.3f} {r['ratio_paired_median'][side]:>7.3f} "
            f"{r['overhead_per_step_s'][side] * 1e3:>8.1f} "
            f"{per_commit * 1e3:>6.1f} ms {cpu:>7.2f}s {r['cpu_ratio_over_without'][side]:>9.3f} "
            f"{r['row_bytes'][side] / MB:>7.1f}"
        )
    log("ratio = median with / median without; min/min = fastest runs; paired = median of per-round ratios; "
        "ms/step = (median with - without) / steps; in write = time inside session.write/flush per commit; "
        "CPU = process user+system time, all threads (steadier than wall time on a shared machine)")  # fmt: skip
    if STAGING in r["sides"]:
        log(
            f"'{STAGING}': restartable with flush_interval=None: the model stages its level-2 state every step, "
            f"one commit at the end"
        )
    log(
        "outputs bitwise equal to the run without checkpoint: "
        + ", ".join(f"{k}={v}" for k, v in r["outputs_equal_to_without"].items())
    )
    if any(value < 1 for value in r["ratio_over_without"].values()):
        log(
            "WARNING: a side with a checkpoint has a lower median than the side without: "
            "other work on the machine dominated "
            "these wall times; the fastest runs (min/min) and the CPU ratio are the figures to trust"
        )


# --------------------------------------------------------------------------- summary


def targets(results: dict[str, Any], e2s: bool) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []

    def add(measure: str, value: float | None, target: str, ok: bool | None) -> None:
        lines.append({"measure": measure, "value": value, "target": target, "meets": ok})

    c = results.get("commit")
    if c:
        v = c["ratio_sync_over_raw_bandwidth"]
        add(
            "commit: restartable sync bandwidth / raw numpy.save+fsync",
            v,
            f">= {SYNC_VS_RAW_MIN}",
            v >= SYNC_VS_RAW_MIN,
        )
        v = c["ratio_async_blocking_over_e2s"]
        add(
            "commit: restartable async blocking / earth2studio commit",
            v,
            f"<= {ASYNC_VS_E2S_MAX}",
            None if v is None else v <= ASYNC_VS_E2S_MAX,
        )
        v = c["ratio_async_blocking_over_sync"]
        add(
            "commit: restartable async blocking / restartable sync",
            v,
            f"<= {ASYNC_VS_SYNC_MAX}",
            v <= ASYNC_VS_SYNC_MAX,
        )
        v = c["ratio_async_sequence_over_sync"]
        add(
            f"commit: async / sync, {c['commits']} commits to durable (sequence)",
            v,
            f"<= {ASYNC_TOTAL_VS_SYNC_MAX}",
            v <= ASYNC_TOTAL_VS_SYNC_MAX,
        )
        v = c["ratio_async_durable_over_sync"]
        add(
            "commit: async / sync, one commit to durable (nothing to overlap)",
            v,
            f"<= {ASYNC_TOTAL_VS_SYNC_MAX}",
            v <= ASYNC_TOTAL_VS_SYNC_MAX,
        )
        add(
            "commit: restartable async blocking / earth2studio + fsync",
            c["ratio_async_blocking_over_e2s_fsync"],
            "(info)",
            None,
        )
        add("commit: restartable sync / earth2studio (not durable)", c["ratio_sync_over_e2s"], "(info)", None)
        add("commit: restartable sync / earth2studio + fsync", c["ratio_sync_over_e2s_fsync"], "(info)", None)
    k = results.get("catalog")
    if k:
        n = k["rows"]
        v = k["ratio_restartable_large_over_small"]
        add(f"catalog: restartable commit at {n:,} / 1 rows", v, f"<= {CATALOG_RATIO_MAX}", v <= CATALOG_RATIO_MAX)
        add(f"catalog: earth2studio commit at {n:,} / 1 rows", k.get("ratio_e2s_large_over_small"), "(info)", None)
        add(
            f"catalog: earth2studio / restartable commit at {n:,} rows",
            k.get("ratio_e2s_over_restartable_at_large"),
            "(info)",
            None,
        )
    w = results.get("workflow")
    if w:
        v = w["ratio_over_without"]["restartable async"]
        add("workflow: restartable async / no checkpoint", v, f"<= {WORKFLOW_ASYNC_MAX}", v <= WORKFLOW_ASYNC_MAX)
        add(
            "workflow: restartable async / no checkpoint (paired)",
            w["ratio_paired_median"]["restartable async"],
            "(info)",
            None,
        )
        add("workflow: restartable sync / no checkpoint", w["ratio_over_without"]["restartable sync"], "(info)", None)
        add(
            "workflow: restartable async / no checkpoint (CPU time)",
            w["cpu_ratio_over_without"]["restartable async"],
            "(info)",
            None,
        )
        add("workflow: earth2studio / no checkpoint", w["ratio_over_without"].get("earth2studio"), "(info)", None)
        if STAGING in w["ratio_over_without"]:
            add("workflow: staging only (no commits) / no checkpoint", w["ratio_over_without"][STAGING], "(info)", None)
    return lines


def machine() -> dict[str, Any]:
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as fh:
        mem = int(fh.readline().split()[1]) * 1024
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", default="commit,catalog,workflow", help="comma-separated: commit,catalog,workflow (default all)"
    )
    parser.add_argument("--size-mb", type=float, default=265, help="commit: state size in MB (10^6 bytes), default 265")
    parser.add_argument("--tensors", type=int, default=5, help="commit: number of tensors, default 5")
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="commit: where the state's tensors live, default cpu"
    )
    parser.add_argument(
        "--commits", type=int, default=10, help="commit: timed commits per side and commits per sequence, default 10"
    )
    parser.add_argument("--sequences", type=int, default=2, help="commit: timed sequences per side, default 2")
    parser.add_argument(
        "--rows", type=int, default=10_000, help="catalog: existing rows of the large catalogs, default 10000"
    )
    parser.add_argument("--meta-commits", type=int, default=100, help="catalog: timed commits per catalog, default 100")
    parser.add_argument(
        "--meta-warmup", type=int, default=3, help="catalog: untimed commits per catalog first, default 3"
    )
    parser.add_argument(
        "--e2s-build",
        choices=("replicate", "api"),
        default="replicate",
        help="catalog: how earth2studio's large catalog is built",
    )
    parser.add_argument("--nlat", type=int, default=2048, help="workflow: latitudes, default 2048")
    parser.add_argument("--nlon", type=int, default=2048, help="workflow: longitudes, default 2048")
    parser.add_argument("--steps", type=int, default=40, help="workflow: steps, default 40")
    parser.add_argument("--repeats", type=int, default=3, help="workflow: timed rounds, default 3")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--staging-side",
        action="store_true",
        help="workflow: add a side that stages the model state every step but commits once (flush_interval=None)",
    )
    parser.add_argument("--no-earth2studio", action="store_true", help="leave earth2studio out even if installed")
    parser.add_argument(
        "--profile", action="store_true", help="commit: cProfile restartable's write() calls (caller's thread)"
    )
    parser.add_argument("--dir", default=None, help="parent of the scratch directory (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, the tables on stderr")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        if p not in ("commit", "catalog", "workflow"):
            parser.error(f"unknown part {p!r}")
    if (
        min(
            args.tensors,
            args.commits,
            args.sequences,
            args.rows,
            args.meta_commits,
            args.nlat,
            args.nlon,
            args.steps,
            args.repeats,
        )
        < 1
    ):
        parser.error("sizes and counts must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.json:
        log_to_stderr()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if args.no_earth2studio:
        e2s, e2s_version, how = None, None, "left out (--no-earth2studio)"
    else:
        e2s, e2s_version, how = load_earth2studio()
    root = Path(tempfile.mkdtemp(prefix="restartable-bench-vs-e2s-", dir=args.dir))
    meta = {**run_meta(root, torch=torch.__version__, earth2studio=e2s_version if e2s else None), **machine(),
            "torch_threads": torch.get_num_threads(), "earth2studio_loaded": how}  # fmt: skip
    if e2s is None:
        log(f"earth2studio: {how}. Its columns are skipped; install it with: {INSTALL}")
    else:
        meta["earth2studio_arrays_fsynced"] = e2s_fsyncs_arrays(e2s)
        if e2s_version != E2S_VERSION:
            log(
                f"note: earth2studio {e2s_version} is installed; "
                f"this benchmark was written for {E2S_VERSION} ({INSTALL})"
            )
    log(f"restartable {restartable.__version__}  earth2studio {e2s_version if e2s else '-'} ({how})")
    log(
        f"numpy {np.__version__}  torch {torch.__version__} ({torch.get_num_threads()} threads)  "
        f"python {platform.python_version()}"
    )
    mem = meta["memory_bytes"]
    log(f"{meta['cpus']} CPUs, {mem / 2**30:.1f} GiB memory; scratch {root} ({meta['filesystem']}); {meta['date']}")
    e2s_note = "not durable: arrays np.save'd, no fsync"
    if e2s is not None:
        fs = meta["earth2studio_arrays_fsynced"]
        e2s_note = "arrays fsynced" if fs else "NOT durable: arrays np.save'd, never fsynced (page cache)"
        log(
            f"earth2studio array files fsynced (its _CheckpointCodec.dump_array source): {fs}; "
            f"its JSON files are fsynced"
        )

    results: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        if "commit" in parts:
            log(
                f"\n  running commit: {args.size_mb:g} MB in {args.tensors} tensors, "
                f"{args.commits} commits per side ..."
            )
            t = time.perf_counter()
            results["commit"] = in_fresh_context(
                lambda: bench_commit(
                    root, e2s, args.size_mb, args.tensors, args.commits, args.sequences, args.profile, args.device
                )
            )
            results["commit"]["elapsed_s"] = time.perf_counter() - t
            report_commit(results["commit"], e2s_note)
        if "catalog" in parts:
            log(f"\n  running catalog: 1 and {args.rows:,} rows, {args.meta_commits} commits each ...")
            t = time.perf_counter()
            results["catalog"] = in_fresh_context(
                lambda: bench_catalog(root, e2s, args.rows, args.meta_commits, args.meta_warmup, args.e2s_build)
            )
            results["catalog"]["elapsed_s"] = time.perf_counter() - t
            report_catalog(results["catalog"])
        if "workflow" in parts:
            log(f"\n  running workflow: {args.nlat} x {args.nlon}, {args.steps} steps, {args.repeats} rounds ...")
            t = time.perf_counter()
            results["workflow"] = bench_workflow(
                root, e2s, args.nlat, args.nlon, args.steps, args.repeats, args.staging_side
            )
            results["workflow"]["elapsed_s"] = time.perf_counter() - t
            report_workflow(results["workflow"])
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    meta["elapsed_s"] = time.perf_counter() - started

    summary = targets(results, e2s is not None)
    log()
    log("=" * 96)
    log("RATIOS AGAINST THE TARGETS (nothing asserted)")
    log("=" * 96)
    width = max((len(line["measure"]) for line in summary), default=10)
    for line in summary:
        mark = "" if line["meets"] is None else ("meets target" if line["meets"] else "MISSES target")
        if line["value"] is None and line["target"] != "(info)":
            mark = "skipped (earth2studio not installed)"
        log(f"{line['measure']:<{width}}  {fmt_ratio(line['value']):>7}  {line['target']:<7} {mark}")
    missed = sum(1 for line in summary if line["meets"] is False)
    log(f"{missed} target(s) missed; elapsed {meta['elapsed_s']:.0f} s")
    if e2s is None:
        log(f"earth2studio columns skipped: {how}. Install with: {INSTALL}")
    if args.json:
        print(
            json.dumps(
                {"benchmark": "vs_earth2studio", "meta": meta, **results, "summary": summary}, indent=2, default=str
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
