#!/usr/bin/env python
"""Cost of checkpointing a deterministic forecast: the workflow with and without a Checkpoint.

The forecast is ``restartable.workflows.deterministic`` with the reference
``Lorenz96`` model on a ``--nlat`` x ``--nlon`` grid of two variables
(``u10m``, ``v10m``), a ``SyntheticData`` initial condition and ``MemoryIO``
output (so that no IO cost enters either side), for ``--steps`` 6-hour steps.

without
    ``deterministic(..., checkpoint=None)``: the workflow uses a
    ``NullCheckpoint``, the model binds its state but records nothing.
with
    a fresh ``Checkpoint(name, path=..., flush_interval=1, level=2)`` (default
    ``mode="overwrite"``, ``durable=True``) entered around the construction of
    the model and the workflow call. At level 2 the model stages its leapfrog
    state (``x_prev`` and ``x_curr``: 2 x nvariables x nlat x nlon float32,
    32 MiB at the default 1024 x 2048) on the checkpoint device after every
    step, and every ``session.write`` commits a durable row (encode, write,
    xxh3, fsync, rename, retire the previous row).

Each timed run covers everything the user waits for: building the model,
fetching the initial condition, laying out the IO arrays, the rollout and
the final flush (and, for *with*, opening and closing the session). The two
sides alternate which goes first, ``os.sync()`` runs (untimed) before each
run so that neither pays for the other's write-back, one untimed warm-up
round comes first, and every figure is a median of ``--repeats`` runs.

Printed: the median wall time of each side, the checkpoint overhead per
step ((with - without) / steps), the time spent inside ``session.write``
(the commits themselves, measured in the runs with a checkpoint), the size
of one committed row and the commit bandwidth, and the overhead ratio
(with / without, of the medians). On a machine shared with other work the
ratio of the fastest runs and the median of the per-round ratios are
printed too: contention only adds time, so they are the steadier figures.
Nothing is asserted; the outputs of the two sides are compared bit for bit
once, for information.

Usage::

    python benchmarks/bench_workflow.py                      # 1024 x 2048, 8 steps, 5 repeats
    python benchmarks/bench_workflow.py --nlat 256 --nlon 512 --steps 4 --repeats 3   # quick check
    python benchmarks/bench_workflow.py --json               # JSON on stdout, table on stderr
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import log, log_to_stderr, run_meta, timed_commits

from restartable import Checkpoint
from restartable.components import Lorenz96, MemoryIO, SyntheticData
from restartable.workflows import deterministic

VARIABLES = ("u10m", "v10m")
START = ["2024-01-01T00:00"]
MiB = 1 << 20


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def one_run(data: SyntheticData, steps: int, checkpoint_dir: Path | None) -> tuple[float, float, MemoryIO, int]:
    """One forecast: its wall time, the time spent in commits, its output and the size of the last row."""

    def run() -> tuple[float, float, MemoryIO, int]:
        io = MemoryIO()
        started = time.perf_counter()
        if checkpoint_dir is None:
            model = Lorenz96(VARIABLES, lat=data.lat, lon=data.lon)
            deterministic(START, steps, model, data, io, device="cpu", verbose=False)
            elapsed = time.perf_counter() - started
            return elapsed, 0.0, io, 0
        checkpoint = Checkpoint("bench-workflow", path=checkpoint_dir, flush_interval=1, level=2, rank=0, world_size=1)
        with checkpoint as session:
            commits = timed_commits(session)
            model = Lorenz96(VARIABLES, lat=data.lat, lon=data.lon)  # constructed inside the session
            deterministic(START, steps, model, data, io, device="cpu", verbose=False, checkpoint=session)
        elapsed = time.perf_counter() - started
        rows = sorted((checkpoint_dir / "commits").iterdir())
        if session.lead_time != np.timedelta64(6 * steps, "h") or len(rows) != 1:
            raise RuntimeError(f"unexpected checkpoint: lead time {session.lead_time}, {len(rows)} row(s)")
        return elapsed, sum(commits), io, directory_bytes(rows[-1])

    # A fresh context per run: a session leaves its bound states registered for
    # the next session of its Checkpoint, which must not carry over between runs.
    return contextvars.copy_context().run(run)


def same_output(a: MemoryIO, b: MemoryIO) -> bool:
    return sorted(a.arrays) == sorted(b.arrays) and all(a[k].tobytes() == b[k].tobytes() for k in a.arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nlat", type=int, default=1024, help="latitudes (default 1024)")
    parser.add_argument("--nlon", type=int, default=2048, help="longitudes (default 2048)")
    parser.add_argument("--steps", type=int, default=8, help="forecast steps per run (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--dir", default=None, help="parent of the scratch directory (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr")
    args = parser.parse_args(argv)
    if args.nlat < 1 or args.nlon < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--nlat, --nlon, --steps and --repeats must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.json:
        log_to_stderr()

    root = Path(tempfile.mkdtemp(prefix="restartable-bench-workflow-", dir=args.dir))
    field_bytes = args.nlat * args.nlon * 4
    state_bytes = 2 * len(VARIABLES) * field_bytes  # x_prev and x_curr, float32
    meta = run_meta(root, torch=torch.__version__, torch_threads=torch.get_num_threads())
    meta.update(nlat=args.nlat, nlon=args.nlon, variables=list(VARIABLES), steps=args.steps, repeats=args.repeats,
                level=2, flush_interval=1, state_bytes=state_bytes)  # fmt: skip
    log(f"deterministic workflow, Lorenz96 {len(VARIABLES)} variables x {args.nlat} x {args.nlon}, {args.steps} steps, "
        f"MemoryIO; checkpoint flush_interval=1 level=2 (overwrite, durable)")  # fmt: skip
    log(
        f"level-2 state: x_prev + x_curr = 2 x {len(VARIABLES) * field_bytes / MiB:g} MiB = "
        f"{state_bytes / MiB:g} MiB float32"
    )
    log(f"scratch: {root} ({meta['filesystem']}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.repeats} timed rounds after 1 warm-up")  # fmt: skip

    data = SyntheticData(nlat=args.nlat, nlon=args.nlon)
    times: dict[str, list[float]] = {"without": [], "with": []}
    commit_times: list[float] = []
    row_bytes = 0
    outputs: dict[str, MemoryIO] = {}
    try:
        for round_ in range(args.repeats + 1):
            order = ("without", "with") if round_ % 2 == 0 else ("with", "without")
            for side in order:
                checkpoint_dir = root / f"checkpoint-{round_}" if side == "with" else None
                gc.collect()
                os.sync()
                elapsed, committing, io, size = one_run(data, args.steps, checkpoint_dir)
                note = ""
                if checkpoint_dir is not None:
                    row_bytes = size
                    shutil.rmtree(checkpoint_dir)
                    note = f"  ({committing:.3f} s in {args.steps + 1} commits)"
                    if round_:
                        commit_times.append(committing)
                outputs[side] = io
                if round_ == 0:
                    log(f"  warm-up  {side:<7}  {elapsed:8.3f} s{note}")
                else:
                    times[side].append(elapsed)
                    log(f"  round {round_:<2} {side:<7}  {elapsed:8.3f} s{note}")
        equal = same_output(outputs["with"], outputs["without"])
        outputs.clear()
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    without = statistics.median(times["without"])
    with_ = statistics.median(times["with"])
    per_step = (with_ - without) / args.steps
    ratio = with_ / without
    paired = statistics.median(w / o for w, o in zip(times["with"], times["without"], strict=True))
    ratio_min = min(times["with"]) / min(times["without"])
    commit_per_step = statistics.median(commit_times) / (args.steps + 1)
    bandwidth = row_bytes / commit_per_step / MiB
    log("")
    log(f"{'':<34}{'median':>10}{'min':>10}{'max':>10}")
    for side, label in (("without", "without checkpoint"), ("with", "with checkpoint (level 2, fi=1)")):
        values = times[side]
        log(f"{label:<34}{statistics.median(values):>9.3f}s{min(values):>9.3f}s{max(values):>9.3f}s")
    log(f"per step: {without / args.steps * 1e3:.1f} ms without, {with_ / args.steps * 1e3:.1f} ms with; "
        f"checkpoint overhead {per_step * 1e3:.1f} ms/step")  # fmt: skip
    log(f"time inside session.write (the commits): {commit_per_step * 1e3:.1f} ms per commit, "
        f"{args.steps + 1} commits per run (lead time 0 and every step)")  # fmt: skip
    log(f"committed row: {row_bytes / MiB:.1f} MiB; commit bandwidth {bandwidth:.0f} MiB/s")
    log(f"outputs with and without checkpoint bitwise equal: {equal}")
    log(f"ratio of the fastest runs with/without: {ratio_min:.3f}; median of the per-round ratios: {paired:.3f}")
    log(f"overhead ratio with/without (medians): {ratio:.3f}")
    if args.json:
        print(json.dumps({
            "meta": meta,
            "times_s": times,
            "without_median_s": without,
            "with_median_s": with_,
            "commit_times_s": commit_times,
            "overhead_per_step_s": per_step,
            "commit_per_step_s": commit_per_step,
            "ratio_with_over_without": ratio,
            "ratio_paired_median": paired,
            "ratio_min": ratio_min,
            "row_bytes": row_bytes,
            "commit_mib_per_s": bandwidth,
            "outputs_equal": equal,
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
