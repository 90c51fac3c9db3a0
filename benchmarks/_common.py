"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``,
which puts this directory on ``sys.path``)."""

from __future__ import annotations

import itertools
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import restartable

_human = sys.stdout  # becomes stderr with --json (log_to_stderr)


def log(*args: Any) -> None:
    """Print the human-readable report (stdout, or stderr once ``log_to_stderr()`` ran)."""
    print(*args, file=_human, flush=True)


def log_to_stderr() -> None:
    """Send ``log`` to stderr, leaving stdout to the JSON document (``--json``)."""
    global _human
    _human = sys.stderr


def filesystem_of(path: Path) -> str:
    best, fstype = "", "?"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, fstype = parts[1], f"{parts[2]} on {parts[0]}"
    except OSError:
        pass
    return fstype


def run_meta(root: Path, **versions: Any) -> dict[str, Any]:
    """The head of a benchmark's ``meta``.

    Versions (``versions`` after numpy's), scratch directory, its filesystem, CPUs.
    """
    return {
        "restartable": restartable.__version__,
        "numpy": np.__version__,
        **versions,
        "python": platform.python_version(),
        "directory": str(root),
        "filesystem": filesystem_of(root),
        "cpus": os.cpu_count(),
    }


def log_run_head(meta: dict[str, Any], directory_note: str = "") -> None:
    """The report's opening lines: the versions, scratch directory, filesystem and CPUs from ``run_meta``."""
    versions = itertools.takewhile(lambda key: key != "directory", meta)
    log()
    log("  ".join(f"{key} {meta[key]}" for key in versions))
    log(f"directory {meta['directory']} ({meta['filesystem']}), {meta['cpus']} CPUs{directory_note}")


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def log_table_header(header: str) -> None:
    log(header)
    log("-" * len(header))


def timed_commits(session: Any) -> list[float]:
    """Record the time of every ``write``/``flush`` call of ``session`` (the commits) in the returned list.

    ``write`` calls ``flush`` when a commit is due: only the outermost call is timed.
    """
    spent: list[float] = []
    depth = [0]
    for name in ("write", "flush"):
        method = getattr(session, name)

        def timed(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            started = time.perf_counter()
            depth[0] += 1
            try:
                return _method(*args, **kwargs)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent.append(time.perf_counter() - started)

        setattr(session, name, timed)  # an instance attribute shadows the method for this session only
    return spent
