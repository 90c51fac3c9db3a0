"""A diagnostic forecast killed with SIGKILL mid-rollout, resumed, and checked bit for bit.

The ``diagnostic`` workflow rolls the reference Lorenz-96 model
(``restartable.components.Lorenz96``: a leapfrog scheme whose previous time
level is hidden state) out from a synthetic initial condition of the two
10 m wind components, applies the :class:`~restartable.components.WindSpeed`
diagnostic (``ws10m = sqrt(u10m**2 + v10m**2)``) to every step and writes
only the diagnostic's output to a Zarr v3 store. The wind components
themselves are never written, so nothing in IO could restart the model: the
checkpoint alone carries the rollout.

1. reference: the forecast runs uninterrupted, with no checkpoint, into
   ``reference.zarr``;
2. crash: a child process runs the same forecast into ``restarted.zarr``
   with a :class:`~restartable.Checkpoint` and kills itself with SIGKILL right
   after the IO write of one lead time, before that step's checkpoint commit
   (the worst moment: IO is ahead of the checkpoint) -- no clean-up, as when
   a node dies;
3. resume: a second child process runs the very same command again. With
   ``--level 2`` (the default) the model restores its two time levels and
   continues from the next lead time; with ``--level 0``/``1`` it recomputes
   the rollout from the initial condition and the workflow skips the lead
   times already written;
4. the two stores are compared array by array, bit for bit.

Exit status 0 when every array is bitwise identical, 1 otherwise.

Run::

    python examples/diagnostic_restart.py
    python examples/diagnostic_restart.py --level 1 --flush-interval 3 --kill-after 9
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
from pathlib import Path

import numpy as np

from restartable import Checkpoint
from restartable.components import Lorenz96, SyntheticData, WindSpeed, ZarrIO
from restartable.workflows import diagnostic

START = ["2024-01-01T00:00"]


def hours(lead_time: object) -> str:
    return "-" if lead_time is None else f"{np.timedelta64(lead_time) / np.timedelta64(1, 'h'):g}h"


class KillingZarrIO(ZarrIO):
    """A :class:`ZarrIO` whose process dies by SIGKILL after its ``kill_after``-th write."""

    def __init__(self, path: str | Path, kill_after: int | None = None) -> None:
        super().__init__(path)
        self.kill_after = kill_after
        self.writes = 0

    def write(self, x, coords, array_name) -> None:  # noqa: ANN001 - ZarrIO's signature
        super().write(x, coords, array_name)
        self.writes += 1
        if self.kill_after is not None and self.writes == self.kill_after:
            lead = hours(np.asarray(coords["lead_time"]).reshape(-1)[-1])
            print(f"  [child {os.getpid()}] wrote lead time {lead}, killing this process with SIGKILL", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def forecast(args: argparse.Namespace, store: Path, checkpoint_dir: Path | None = None, kill_after: int | None = None) -> None:
    """Run (or resume, when ``checkpoint_dir`` holds a row) the forecast into ``store``."""
    data = SyntheticData(nlat=args.nlat, nlon=args.nlon, seed=args.seed)
    io = KillingZarrIO(store, kill_after)
    if checkpoint_dir is None:
        model = Lorenz96(("u10m", "v10m"), lat=data.lat, lon=data.lon)
        diagnostic(START, args.nsteps, model, WindSpeed(), data, io, device="cpu", verbose=args.progress)
        return
    checkpoint = Checkpoint(
        "diagnostic-example", path=checkpoint_dir, mode=args.mode, flush_interval=args.flush_interval, level=args.level
    )
    with checkpoint as session:
        # Restart-aware components are constructed inside the session, so that
        # their bound state is restored before they use it. WindSpeed is
        # stateless and binds nothing.
        model = Lorenz96(("u10m", "v10m"), lat=data.lat, lon=data.lon)
        if session.exists:
            state = model.checkpoint
            restored = (
                f"model state restored at lead time {hours(state.lead_time)}: continues the rollout"
                if state.x_curr is not None
                else "no model state saved at this level: recomputes the rollout, skips what was written"
            )
            print(f"  [child {os.getpid()}] resuming after lead time {hours(session.lead_time)}; {restored}", flush=True)
        diagnostic(START, args.nsteps, model, WindSpeed(), data, io, device="cpu", verbose=args.progress, checkpoint=session)
        print(f"  [child {os.getpid()}] wrote {io.writes} lead time(s), committed up to lead time {hours(session.lead_time)}", flush=True)


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
        print(f"  {name:<10} {str(x.shape):<22} {'identical' if equal else 'DIFFERENT'}{note}")
        same = same and equal and not unwritten
    return same


def child(args: argparse.Namespace, step: str) -> int:
    """Run this script's ``--child`` mode in a fresh process; returns its exit status."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", step, *args.forward]
    return subprocess.run(cmd, check=False).returncode


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nsteps", type=int, default=24, help="6-hour steps of the forecast (default 24)")
    parser.add_argument("--nlat", type=int, default=32, help="latitudes of the grid (default 32)")
    parser.add_argument("--nlon", type=int, default=64, help="longitudes of the grid (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic initial condition")
    parser.add_argument("--level", type=int, choices=(0, 1, 2), default=2, help="checkpoint level (default 2)")
    parser.add_argument("--flush-interval", type=int, default=1, help="IO writes per durable commit (default 1)")
    parser.add_argument("--mode", choices=("overwrite", "append"), default="overwrite")
    parser.add_argument("--kill-after", type=int, default=None, help="IO writes before the SIGKILL (default: about 60%% of the run)")
    parser.add_argument("--dir", default=None, help="where to write (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and the checkpoint")
    parser.add_argument("--progress", action="store_true", help="show the workflow's progress bars")
    parser.add_argument("--child", choices=("crash", "resume"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kill_after is None:
        args.kill_after = max(1, (args.nsteps + 1) * 3 // 5)
    if not 1 <= args.kill_after <= args.nsteps + 1:
        parser.error(f"--kill-after must be in [1, {args.nsteps + 1}] (the forecast writes {args.nsteps + 1} lead times)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        root = Path(args.dir)
        forecast(args, root / "restarted.zarr", root / "checkpoint", args.kill_after if args.child == "crash" else None)
        return 0

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="restartable-diagnostic-"))
    root.mkdir(parents=True, exist_ok=True)
    for item in ("reference.zarr", "restarted.zarr", "checkpoint"):
        shutil.rmtree(root / item, ignore_errors=True)
    args.forward = [
        f"--nsteps={args.nsteps}", f"--nlat={args.nlat}", f"--nlon={args.nlon}", f"--seed={args.seed}",
        f"--level={args.level}", f"--flush-interval={args.flush_interval}", f"--mode={args.mode}",
        f"--kill-after={args.kill_after}", f"--dir={root}", *(["--progress"] if args.progress else []),
    ]  # fmt: skip
    print(f"diagnostic forecast: wind speed of Lorenz-96 winds on {args.nlat}x{args.nlon}, {args.nsteps} steps; "
          f"checkpoint level {args.level}, flush_interval {args.flush_interval}, mode {args.mode}")  # fmt: skip
    print(f"writing under {root}")

    started = time.perf_counter()
    forecast(args, root / "reference.zarr")
    print(f"1. reference run, uninterrupted: {time.perf_counter() - started:.2f} s")

    print(f"2. checkpointed run, killed after {args.kill_after} of {args.nsteps + 1} IO writes:")
    started = time.perf_counter()
    status = child(args, "crash")
    killed = status == -signal.SIGKILL
    print(f"   child ended {'by SIGKILL' if killed else f'with status {status}'} after {time.perf_counter() - started:.2f} s")
    print("   catalog after the crash:")
    catalog = str(Checkpoint("diagnostic-example", path=root / "checkpoint", mode=args.mode, level=args.level))
    print("\n".join(f"     {line}".rstrip() for line in catalog.splitlines()))

    print("3. the same command again, resuming:")
    started = time.perf_counter()
    status = child(args, "resume")
    print(f"   child ended with status {status} after {time.perf_counter() - started:.2f} s")

    print("4. reference.zarr vs restarted.zarr:")
    same = killed and status == 0 and compare(root / "reference.zarr", root / "restarted.zarr")
    print(f"resumed forecast equals the uninterrupted one bit for bit: {same}")
    if args.keep or args.dir:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
