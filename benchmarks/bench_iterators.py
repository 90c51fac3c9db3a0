#!/usr/bin/env python
"""Cost of a pipeline checkpoint every 1,000 steps, relative to iterating the reference iterator.

A ``ShuffledArrayIterator`` over a float32 array (``--elements`` x
``--features``, default 200,000 x 64, i.e. 49 MiB), ``--batch-size`` 256, is
iterated for ``--steps`` steps (default 20,000), three ways:

none
    only ``next(it)``: the iteration time of the reference iterator.
sync
    ``next(it)`` and ``PipelineCheckpoint.save_to_step(it, step, interval=1000,
    keep=5)`` at every step: a durable save (encode, write, fsync, rename,
    retire) every 1,000 steps, the caller waiting for each.
async
    the same with ``async_checkpointing=True``: the caller waits for the
    snapshot only, the row is made durable on a background thread; the run
    ends with ``wait_until_finished()`` (counted).

Every ``next(it)`` and every ``save_to_step`` call is timed. Printed per
mode: the median wall time of a run, the iteration time per step (in that
mode's runs: a background save competes for the CPU), the time of one due
save as the caller sees it, and the cost of checkpointing per save: all the
time spent in ``save_to_step`` (due or not) and the final wait, divided by
the number of saves. The ratios:

* ``save/step``: one save costs as much as this many iteration steps;
* ``cost per 1000 steps``: that cost relative to the 1,000 steps of
  iteration (in the run without checkpoints) a save protects: 0.01 = the
  pipeline spends 1 % more time;
* ``end to end``: run with saves / run without - 1. It includes the effect
  of the background thread on the iteration, but on a shared machine it is
  as noisy as the iteration time itself (10-20 % here).

The iterator's state is a few ints and the bit generator's state
(``--bit-generator PCG64``: no array; ``MT19937``: a 2.5 KiB array payload),
so a save is dominated by the commit protocol's fsyncs, not by the bytes.

Methodology: the modes alternate (rotating which goes first), ``os.sync()``
runs (untimed) before each run, one untimed warm-up round, then
``--repeats`` (default 5) rounds; medians. Nothing is asserted.

Usage::

    python benchmarks/bench_iterators.py
    python benchmarks/bench_iterators.py --steps 5000 --repeats 3   # quick
    python benchmarks/bench_iterators.py --json                     # JSON on stdout, table on stderr
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import log, log_to_stderr, run_meta

from restartable.iterators import IteratorCheckpoint, PipelineCheckpoint, ShuffledArrayIterator

MODES = ("none", "sync", "async")
INTERVAL = 1000
KEEP = 5


def make_iterator(data: np.ndarray, batch_size: int, bit_generator: str) -> ShuffledArrayIterator:
    rng = np.random.Generator(getattr(np.random, bit_generator)(1234))
    return ShuffledArrayIterator(data, batch_size=batch_size, seed=rng)


def one_run(mode: str, data: np.ndarray, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """One run: wall time, time inside ``next(it)``, time inside ``save_to_step`` (all calls), each due save."""
    it = make_iterator(data, args.batch_size, args.bit_generator)
    ckpt = None if mode == "none" else PipelineCheckpoint(directory, async_checkpointing=(mode == "async"))
    checksum = 0.0
    iterating = checkpointing = 0.0
    saves: list[float] = []
    clock = time.perf_counter
    started = clock()
    for step in range(1, args.steps + 1):
        t0 = clock()
        batch = next(it)
        t1 = clock()
        iterating += t1 - t0
        checksum += float(batch[0, 0])
        if ckpt is not None:
            t2 = clock()
            ckpt.save_to_step(it, step, interval=INTERVAL, keep=KEEP)  # called at every step, as in a pipeline
            t3 = clock()
            checkpointing += t3 - t2
            if step % INTERVAL == 0:
                saves.append(t3 - t2)
    if ckpt is not None:
        t2 = clock()
        ckpt.wait_until_finished()  # the last async save is part of the cost
        checkpointing += clock() - t2
    elapsed = clock() - started
    if ckpt is not None:
        ckpt.close()
        steps = IteratorCheckpoint(directory).list_checkpoints()
        expected = list(range(INTERVAL, args.steps + 1, INTERVAL))[-KEEP:]
        if list(steps) != expected:
            raise RuntimeError(f"{mode}: unexpected steps {list(steps)} (expected {expected})")
    return {
        "elapsed": elapsed,
        "iterating": iterating,
        "checkpointing": checkpointing,
        "saves": saves,
        "checksum": checksum,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=200_000, help="elements in the dataset (default 200,000)")
    parser.add_argument("--features", type=int, default=64, help="float32 values per element (default 64)")
    parser.add_argument("--batch-size", type=int, default=256, help="elements per batch (default 256)")
    parser.add_argument("--steps", type=int, default=20_000, help="steps per run (default 20,000: 20 saves)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--bit-generator", default="PCG64", choices=["PCG64", "MT19937", "Philox", "SFC64"])
    parser.add_argument("--dir", default=None, help="parent of the scratch directory (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr")
    args = parser.parse_args(argv)
    if min(args.elements, args.features, args.batch_size, args.steps, args.repeats) < 1:
        parser.error("sizes, --steps and --repeats must be positive")
    if args.steps < INTERVAL:
        parser.error(f"--steps must be at least {INTERVAL} (one save)")
    if args.json:
        log_to_stderr()

    root = Path(tempfile.mkdtemp(prefix="restartable-bench-iterators-", dir=args.dir))
    meta = run_meta(root)
    meta.update(
        elements=args.elements, features=args.features, batch_size=args.batch_size, steps=args.steps,
        repeats=args.repeats, interval=INTERVAL, keep=KEEP, bit_generator=args.bit_generator,
    )  # fmt: skip
    data = np.random.default_rng(0).standard_normal((args.elements, args.features), dtype=np.float32)
    saves_per_run = args.steps // INTERVAL
    log(
        f"ShuffledArrayIterator over {args.elements} x {args.features} float32 ({data.nbytes / 2**20:.0f} MiB), "
        f"batch {args.batch_size}, {args.bit_generator}; {args.steps} steps per run, "
        f"PipelineCheckpoint.save_to_step(interval={INTERVAL}, keep={KEEP}): {saves_per_run} durable saves per run"
    )
    log(f"scratch: {root} ({meta['filesystem']}); {args.repeats} timed rounds after 1 warm-up")

    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    checksums: dict[str, float] = {}
    try:
        for round_ in range(args.repeats + 1):
            order = MODES[round_ % 3 :] + MODES[: round_ % 3]
            for mode in order:
                directory = root / f"{mode}-{round_}"
                gc.collect()
                os.sync()
                result = one_run(mode, data, args, directory)
                shutil.rmtree(directory, ignore_errors=True)
                checksums[mode] = result.pop("checksum")
                label = "warm-up " if round_ == 0 else f"round {round_:<2}"
                note = ""
                if result["saves"]:
                    note = (f"  iterating {result['iterating']:.3f} s, in save_to_step {result['checkpointing']:.3f} s "
                            f"(due saves: median {statistics.median(result['saves']) * 1e3:.2f} ms)")  # fmt: skip
                log(f"  {label} {mode:<5} {result['elapsed']:8.3f} s{note}")
                if round_:
                    runs[mode].append(result)
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[mode])

    base = median("none", "elapsed")
    step_time = median("none", "iterating") / args.steps  # the reference: iterating without checkpoints
    per_interval = INTERVAL * step_time
    report: dict[str, Any] = {"meta": meta, "raw": runs, "modes": {"none": {"run_s": base, "step_us": step_time * 1e6}}}
    log()
    header = (f"{'mode':<6} {'run (s)':>8} {'step (us)':>10} {'save (ms)':>10} {'cost/save (ms)':>15} "
              f"{'save/step':>10} {'cost per 1000 steps':>20} {'end to end':>11}")  # fmt: skip
    log(header)
    log("-" * len(header))
    log(f"{'none':<6} {base:8.3f} {step_time * 1e6:10.1f} {'-':>10} {'-':>15} {'-':>10} {'-':>20} {'-':>11}")
    for mode in ("sync", "async"):
        save = statistics.median(t for run in runs[mode] for t in run["saves"])
        cost = median(mode, "checkpointing") / saves_per_run  # every save_to_step call, due or not, + the final wait
        end_to_end = median(mode, "elapsed") / base - 1
        entry = {
            "run_s": median(mode, "elapsed"),
            "step_us_in_this_mode": median(mode, "iterating") / args.steps * 1e6,
            "save_ms": save * 1e3,
            "cost_per_save_ms": cost * 1e3,
            "save_over_step": save / step_time,
            "cost_per_1000_steps": cost / per_interval,
            "end_to_end_slowdown": end_to_end,
        }
        report["modes"][mode] = entry
        log(
            f"{mode:<6} {entry['run_s']:8.3f} {entry['step_us_in_this_mode']:10.1f} {save * 1e3:10.2f} "
            f"{cost * 1e3:15.2f} "
            f"{entry['save_over_step']:10.1f} {entry['cost_per_1000_steps']:19.2%} {end_to_end:10.1%}"
        )
    log()
    for mode in ("sync", "async"):
        entry = report["modes"][mode]
        log(
            f"{mode}: one save costs the caller {entry['save_ms']:.2f} ms = "
            f"{entry['save_over_step']:.0f} iteration steps; "
            f"saving every {INTERVAL} steps costs {entry['cost_per_1000_steps']:.2%} of the iteration time "
            f"(end to end, noisier: {entry['end_to_end_slowdown']:+.1%})"
        )
    same = len(set(checksums.values())) == 1
    log(f"same batches in every mode: {same}")
    report["same_batches"] = same
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
