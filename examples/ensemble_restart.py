"""An ensemble forecast killed with SIGKILL inside a member batch, resumed, and checked bit for bit.

The ``ensemble`` workflow perturbs a synthetic initial condition with
:class:`~restartable.components.GaussianPerturbation` (noise from a seeded
``torch.Generator`` whose state is checkpointed) and rolls the reference
Lorenz-96 model (``restartable.components.Lorenz96``: a leapfrog scheme with
hidden state) out for ``--nensemble`` members in batches of
``--batch-size``, writing every member and lead time to a Zarr v3 store.

1. reference: the forecast runs uninterrupted, with no checkpoint, into
   ``reference.zarr``;
2. crash: a child process runs the same forecast into ``restarted.zarr``
   with a :class:`~restartable.Checkpoint` and kills itself with SIGKILL right
   after one IO write, before that step's checkpoint commit -- by default in
   the middle of the second member batch;
3. resume: a second child process runs the very same command again. The
   workflow resumes at the first incomplete member batch. With ``--level 2``
   (the default) the model restores its rollout state and continues; with
   ``--level 1`` the workflow rewinds every component to the pinned row at
   the start of the batch (so the perturbation draws the same noise again),
   reruns the batch and skips the lead times already written;
4. the two stores are compared array by array, bit for bit: member k after
   the restart equals member k of the uninterrupted run.

``--level 0`` saves no component state: the perturbation's random state is
lost, a batch rerun after a restart draws other noise, and the comparison is
expected to fail unless the kill falls in the first batch. It is allowed
here to show exactly that.

Exit status 0 when every array is bitwise identical, 1 otherwise.

Run::

    python examples/ensemble_restart.py
    python examples/ensemble_restart.py --level 1 --flush-interval 4 --kill-after 30
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
from restartable.components import GaussianPerturbation, Lorenz96, SyntheticData, ZarrIO
from restartable.workflows import ensemble

START = ["2024-01-01T00:00"]


def hours(lead_time: object) -> str:
    return "-" if lead_time is None else f"{np.timedelta64(lead_time) / np.timedelta64(1, 'h'):g}h"


def span(members: object) -> str:
    members = np.asarray(members)
    first, last = int(members.min()), int(members.max())
    return f"member {first}" if first == last else f"members {first}-{last}"


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
            print(f"  [child {os.getpid()}] wrote {span(coords['ensemble'])} at lead time {lead}, "
                  "killing this process with SIGKILL", flush=True)  # fmt: skip
            os.kill(os.getpid(), signal.SIGKILL)


def forecast(args: argparse.Namespace, store: Path, checkpoint_dir: Path | None = None, kill_after: int | None = None) -> None:
    """Run (or resume, when ``checkpoint_dir`` holds a row) the forecast into ``store``."""
    data = SyntheticData(nlat=args.nlat, nlon=args.nlon, seed=args.seed)
    io = KillingZarrIO(store, kill_after)
    if checkpoint_dir is None:
        model = Lorenz96(lat=data.lat, lon=data.lon)
        noise = GaussianPerturbation(std=args.std, seed=args.seed)
        ensemble(START, args.nsteps, args.nensemble, model, data, io, noise, batch_size=args.batch_size, device="cpu", verbose=args.progress)
        return
    checkpoint = Checkpoint(
        "ensemble-example", path=checkpoint_dir, mode=args.mode, flush_interval=args.flush_interval, level=args.level
    )
    with checkpoint as session:
        # Restart-aware components are constructed inside the session, so that
        # their bound state is restored before they use it.
        model = Lorenz96(lat=data.lat, lon=data.lon)
        noise = GaussianPerturbation(std=args.std, seed=args.seed)
        if session.exists:
            done = session.metadata.get("completed_ensembles", 0)
            state = model.checkpoint
            if session.lead_time is None:
                where = "the next batch starts from its pinned row"
            elif state.x_curr is not None and "ensemble" in state.batch_coords:
                where = f"model state of {span(state.batch_coords['ensemble'])} restored at lead time {hours(state.lead_time)}: continues"
            elif args.level == 0:
                where = "level 0, no component state: the batch is rerun, the perturbation starts again from its seed"
            else:
                where = "no model state at this level: the batch is rerun from its pinned start row"
            if session.lead_time is not None:
                where = f"next batch committed up to lead time {hours(session.lead_time)}; {where}"
            print(f"  [child {os.getpid()}] resuming: {done} member(s) complete, {where}", flush=True)
        ensemble(START, args.nsteps, args.nensemble, model, data, io, noise, batch_size=args.batch_size,
                 device="cpu", verbose=args.progress, checkpoint=session)  # fmt: skip
        print(f"  [child {os.getpid()}] made {io.writes} IO write(s) (one per member batch and lead time)", flush=True)


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
    parser.add_argument("--nensemble", type=int, default=6, help="ensemble members (default 6)")
    parser.add_argument("--batch-size", type=int, default=2, help="members per batch (default 2)")
    parser.add_argument("--nsteps", type=int, default=12, help="6-hour steps of the forecast (default 12)")
    parser.add_argument("--nlat", type=int, default=32, help="latitudes of the grid (default 32)")
    parser.add_argument("--nlon", type=int, default=64, help="longitudes of the grid (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial condition and of the perturbation")
    parser.add_argument("--std", type=float, default=0.5, help="standard deviation of the perturbation (default 0.5)")
    parser.add_argument("--level", type=int, choices=(0, 1, 2), default=2, help="checkpoint level (default 2)")
    parser.add_argument("--flush-interval", type=int, default=1, help="IO writes per durable commit (default 1)")
    parser.add_argument("--mode", choices=("overwrite", "append"), default="overwrite")
    parser.add_argument("--kill-after", type=int, default=None, help="IO writes before the SIGKILL (default: about 60%% of the run)")
    parser.add_argument("--dir", default=None, help="where to write (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and the checkpoint")
    parser.add_argument("--progress", action="store_true", help="show the workflow's progress bars")
    parser.add_argument("--child", choices=("crash", "resume"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.nensemble < 1 or not 1 <= args.batch_size <= args.nensemble:
        parser.error("need --nensemble >= 1 and 1 <= --batch-size <= --nensemble")
    args.writes = -(-args.nensemble // args.batch_size) * (args.nsteps + 1)  # batches x lead times
    if args.kill_after is None:
        args.kill_after = max(1, args.writes * 3 // 5)
    if not 1 <= args.kill_after <= args.writes:
        parser.error(f"--kill-after must be in [1, {args.writes}] (the forecast makes {args.writes} IO writes)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        root = Path(args.dir)
        forecast(args, root / "restarted.zarr", root / "checkpoint", args.kill_after if args.child == "crash" else None)
        return 0

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="restartable-ensemble-"))
    root.mkdir(parents=True, exist_ok=True)
    for item in ("reference.zarr", "restarted.zarr", "checkpoint"):
        shutil.rmtree(root / item, ignore_errors=True)
    args.forward = [
        f"--nensemble={args.nensemble}", f"--batch-size={args.batch_size}", f"--std={args.std}",
        f"--nsteps={args.nsteps}", f"--nlat={args.nlat}", f"--nlon={args.nlon}", f"--seed={args.seed}",
        f"--level={args.level}", f"--flush-interval={args.flush_interval}", f"--mode={args.mode}",
        f"--kill-after={args.kill_after}", f"--dir={root}", *(["--progress"] if args.progress else []),
    ]  # fmt: skip
    print(f"ensemble forecast: {args.nensemble} members in batches of {args.batch_size}, Lorenz-96 on "
          f"{args.nlat}x{args.nlon}, {args.nsteps} steps; "
          f"checkpoint level {args.level}, flush_interval {args.flush_interval}, mode {args.mode}")  # fmt: skip
    print(f"writing under {root}")
    if args.level == 0:
        print("note: level 0 saves no component state; a member batch rerun after the restart draws other noise")

    started = time.perf_counter()
    forecast(args, root / "reference.zarr")
    print(f"1. reference run, uninterrupted: {time.perf_counter() - started:.2f} s")

    print(f"2. checkpointed run, killed after {args.kill_after} of {args.writes} IO writes:")
    started = time.perf_counter()
    status = child(args, "crash")
    killed = status == -signal.SIGKILL
    print(f"   child ended {'by SIGKILL' if killed else f'with status {status}'} after {time.perf_counter() - started:.2f} s")
    print("   catalog after the crash:")
    catalog = str(Checkpoint("ensemble-example", path=root / "checkpoint", mode=args.mode, level=args.level))
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
