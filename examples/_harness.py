"""The kill-and-resume harness shared by the ``*_restart.py`` examples.

Each example defines its workflow in a ``forecast(args, store, checkpoint_dir,
kill_after)`` function and hands it to :func:`main`, which

1. runs it uninterrupted, with no checkpoint, into ``reference.zarr``;
2. runs it again in a child process (the example's own script with
   ``--child crash``) into ``restarted.zarr`` with a checkpoint, the child
   killing itself with SIGKILL right after its ``--kill-after``-th IO write
   (see :class:`KillingZarrIO`), and prints the checkpoint catalog;
3. runs the very same command once more (``--child resume``), resuming;
4. compares the two stores array by array, bit for bit (:func:`compare`).

The examples are run as scripts, so this directory is on ``sys.path`` and
they import this module as ``_harness``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from restartable import Checkpoint
from restartable.components import ZarrIO

START = ["2024-01-01T00:00"]

# forecast(args, store, checkpoint_dir=None, kill_after=None): run (or resume,
# when ``checkpoint_dir`` holds a row) the example's forecast into ``store``.
Forecast = Callable[..., None]


def hours(lead_time: object) -> str:
    return "-" if lead_time is None else f"{np.timedelta64(lead_time) / np.timedelta64(1, 'h'):g}h"


def span(members: object) -> str:
    members = np.asarray(members)
    first, last = int(members.min()), int(members.max())
    return f"member {first}" if first == last else f"members {first}-{last}"


def say(message: str) -> None:
    """Print a line from a child process, tagged with its pid."""
    print(f"  [child {os.getpid()}] {message}", flush=True)


class KillingZarrIO(ZarrIO):
    """A :class:`ZarrIO` whose process dies by SIGKILL after its ``kill_after``-th write."""

    def __init__(self, path: str | Path, kill_after: int | None = None) -> None:
        super().__init__(path)
        self.kill_after = kill_after
        self.writes = 0

    def write(self, x, coords, array_name) -> None:  # ZarrIO's signature
        super().write(x, coords, array_name)
        self.writes += 1
        if self.kill_after is not None and self.writes == self.kill_after:
            members = f"{span(coords['ensemble'])} at " if "ensemble" in coords else ""
            lead = hours(np.asarray(coords["lead_time"]).reshape(-1)[-1])
            say(f"wrote {members}lead time {lead}, killing this process with SIGKILL")
            os.kill(os.getpid(), signal.SIGKILL)


def compare(reference: Path, restarted: Path) -> bool:
    """Every array of ``reference`` (data and coordinates) bitwise equal in ``restarted``."""
    import zarr

    a, b = zarr.open_group(str(reference), mode="r"), zarr.open_group(str(restarted), mode="r")
    same = sorted(a.array_keys()) == sorted(b.array_keys())
    for name in sorted(a.array_keys()):
        x = a[name][...]
        y = b[name][...] if name in b else None
        equal = y is not None and x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        unwritten = int(np.isnan(x).sum()) if x.dtype.kind == "f" else 0
        note = f", {unwritten} unwritten (NaN) values" if unwritten else ""
        print(f"  {name:<10} {x.shape!s:<22} {'identical' if equal else 'DIFFERENT'}{note}")
        same = same and equal and not unwritten
    return same


def add_forecast_options(
    parser: argparse.ArgumentParser, nsteps: int, seed_help: str = "seed of the synthetic initial condition"
) -> None:
    """``--nsteps``, the grid and the seed."""
    parser.add_argument("--nsteps", type=int, default=nsteps, help=f"6-hour steps of the forecast (default {nsteps})")
    parser.add_argument("--nlat", type=int, default=32, help="latitudes of the grid (default 32)")
    parser.add_argument("--nlon", type=int, default=64, help="longitudes of the grid (default 64)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def add_restart_options(parser: argparse.ArgumentParser) -> None:
    """The checkpoint's settings, the kill point, where to write, and the hidden ``--child``."""
    parser.add_argument("--level", type=int, choices=(0, 1, 2), default=2, help="checkpoint level (default 2)")
    parser.add_argument("--flush-interval", type=int, default=1, help="IO writes per durable commit (default 1)")
    parser.add_argument("--mode", choices=("overwrite", "append"), default="overwrite")
    parser.add_argument(
        "--kill-after", type=int, default=None, help="IO writes before the SIGKILL (default: about 60%% of the run)"
    )
    parser.add_argument("--dir", default=None, help="where to write (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and the checkpoint")
    parser.add_argument("--progress", action="store_true", help="show the workflow's progress bars")
    parser.add_argument("--child", choices=("crash", "resume"), help=argparse.SUPPRESS)


def check_kill_after(
    parser: argparse.ArgumentParser, args: argparse.Namespace, writes: int, what: str
) -> argparse.Namespace:
    """Set ``args.writes`` (IO writes of the whole run) and default or check ``--kill-after`` against it."""
    args.writes = writes
    if args.kill_after is None:
        args.kill_after = max(1, writes * 3 // 5)
    if not 1 <= args.kill_after <= writes:
        parser.error(f"--kill-after must be in [1, {writes}] ({what})")
    return args


def parse(doc: str, argv: list[str] | None = None, nsteps: int = 24) -> argparse.Namespace:
    """The options of an example whose forecast makes one IO write per lead time."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_forecast_options(parser, nsteps)
    add_restart_options(parser)
    args = parser.parse_args(argv)
    return check_kill_after(parser, args, args.nsteps + 1, f"the forecast writes {args.nsteps + 1} lead times")


def main(
    script: str,
    argv: list[str] | None,
    args: argparse.Namespace,
    forecast: Forecast,
    *,
    name: str,
    headline: str,
    note: str | None = None,
) -> int:
    """Run the four steps (or, with ``--child``, one checkpointed run); returns the exit status.

    ``script`` is the example's ``__file__``, run again for the child
    processes with the same options (``argv``); ``name`` is the name of its
    checkpoint, ``"<kind>-example"``; ``headline`` describes its forecast.
    """
    if args.child:
        root = Path(args.dir)
        forecast(args, root / "restarted.zarr", root / "checkpoint", args.kill_after if args.child == "crash" else None)
        return 0

    prefix = f"restartable-{name.removesuffix('-example')}-"
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix=prefix))
    root.mkdir(parents=True, exist_ok=True)
    for item in ("reference.zarr", "restarted.zarr", "checkpoint"):
        shutil.rmtree(root / item, ignore_errors=True)
    # The children run the very same command, with the kill point and the directory made explicit.
    options = [*(sys.argv[1:] if argv is None else argv), f"--kill-after={args.kill_after}", f"--dir={root}"]

    def child(step: str) -> int:
        cmd = [sys.executable, os.path.abspath(script), "--child", step, *options]
        return subprocess.run(cmd, check=False).returncode

    print(f"{headline}; checkpoint level {args.level}, flush_interval {args.flush_interval}, mode {args.mode}")
    print(f"writing under {root}")
    if note:
        print(note)

    started = time.perf_counter()
    forecast(args, root / "reference.zarr", None, None)
    print(f"1. reference run, uninterrupted: {time.perf_counter() - started:.2f} s")

    print(f"2. checkpointed run, killed after {args.kill_after} of {args.writes} IO writes:")
    started = time.perf_counter()
    status = child("crash")
    killed = status == -signal.SIGKILL
    print(
        f"   child ended {'by SIGKILL' if killed else f'with status {status}'} "
        f"after {time.perf_counter() - started:.2f} s"
    )
    print("   catalog after the crash:")
    catalog = str(Checkpoint(name, path=root / "checkpoint", mode=args.mode, level=args.level))
    print("\n".join(f"     {line}".rstrip() for line in catalog.splitlines()))

    print("3. the same command again, resuming:")
    started = time.perf_counter()
    status = child("resume")
    print(f"   child ended with status {status} after {time.perf_counter() - started:.2f} s")

    print("4. reference.zarr vs restarted.zarr:")
    same = killed and status == 0 and compare(root / "reference.zarr", root / "restarted.zarr")
    print(f"resumed forecast equals the uninterrupted one bit for bit: {same}")
    if args.keep or args.dir:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if same else 1
