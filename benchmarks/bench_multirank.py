#!/usr/bin/env python
"""Cost of keeping the ranks of a multi-rank run consistent: per commit, and when the checkpoint is opened.

For each world size W in ``--ranks`` (default 1, 4, 16), W processes are
started (one per rank, ``multiprocessing``), all on this machine and one
shared scratch directory. Each rank opens two stores of the same shape,
``Checkpoint("bench-multirank", path=..., rank=r, world_size=W,
mode="overwrite", flush_interval=1)``, one per variant:

consistent (``consistent=True``, the default)
    after each commit the rank publishes its newest sequence in its ``HEAD``
    file (temp file + rename), and retention reads the W ``HEAD`` files to
    compute the floor below which rows may be retired. Opening the
    checkpoint runs the agreement: it scans every rank's folder for whole
    rows, verifies every rank's row at the newest common sequence (reads
    and checksums W rows) and aligns this rank's next sequence.
independent (``consistent=False``)
    no ``HEAD`` file, no floor, no agreement: each rank commits and resumes
    on its own (as the distributed ensemble does).

Commit: each rank binds a small state to each session (a dataclass holding a
``--state-kib`` KiB uint8 numpy array, default 64, changed before every
commit), makes ``--warmup`` untimed commits, then, after an ``os.sync()`` (no
timed commit pays for the write-back of earlier ones) and a barrier (every
rank commits at the same time), times ``--commits`` commits
(``session.write(lead_time=i)``) to each store. The two stores take turns
commit by commit, the first one alternating, so that drifts of a shared,
noisy disk hit both alike. The figure is the median over every rank's timed
commits of all ``--rounds`` rounds (fresh stores each round).

Open: once every rank has closed its sessions (one row per rank present,
``mode="overwrite"``), all ranks enter a fresh ``Checkpoint(...)`` of one
store together, as at a restart (``os.sync()`` and a barrier first; the rows
are in the page cache), and each times ``with Checkpoint(...) as session``
(the agreement, when consistent); ``--opens`` attempts per store, the
variants alternating. Reported: the median over all ranks and attempts, and
the median of the slowest rank's time (a restart waits for it).

With W = 1 there is nothing to agree on: both variants take the same code
path, and their ratio shows the noise of the measurement. W = 1 is also the
single-rank baseline: the ``cons/1 rank`` column is the consistent commit at
W ranks over the single-rank commit of the same state. On a machine with
fewer cores than ranks every commit slows down as W grows (the ranks share
CPUs and the disk); the ratio consistent / independent at the same W is
the cost of consistency. Nothing is asserted about time: the ratios are
printed.

Usage::

    python benchmarks/bench_multirank.py                        # 1, 4, 16 ranks, 50 commits each
    python benchmarks/bench_multirank.py --ranks 1,4 --commits 20
    python benchmarks/bench_multirank.py --json                 # JSON on stdout, table on stderr
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _common import log, log_run_head, log_table_header, log_to_stderr, quantile, run_meta

from restartable import Checkpoint, CheckpointWarning

NAME = "bench-multirank"
BARRIER_TIMEOUT = 600  # a hang guard (a rank that died), not a timing assertion
VARIANTS = ("consistent", "independent")


@dataclasses.dataclass
class RankState:
    """What every rank commits: one array of ``--state-kib`` KiB."""

    values: Any


def _checkpoint(path: Path, rank: int, world_size: int, consistent: bool) -> Checkpoint:
    return Checkpoint(
        NAME, path=path, rank=rank, world_size=world_size, mode="overwrite", flush_interval=1, consistent=consistent
    )


def rank_work(
    rank: int, world_size: int, root: str, args: dict[str, Any], barrier: Any
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """One rank: warm-up commits, timed commits, then timed opens, the two variants taking turns."""
    paths = {variant: Path(root) / variant for variant in VARIANTS}
    commits: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    opens: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with contextlib.ExitStack() as stack:
        sessions, states = {}, {}
        for variant in VARIANTS:
            sessions[variant] = stack.enter_context(
                _checkpoint(paths[variant], rank, world_size, variant == "consistent")
            )
            states[variant] = sessions[variant].bind(RankState(np.zeros(args["state_bytes"], dtype=np.uint8)))
        lead = 0

        def commit(variant: str) -> float:
            states[variant].values[:8] = np.frombuffer(np.int64(lead).tobytes(), dtype=np.uint8)
            start = time.perf_counter()
            sessions[variant].write(lead_time=lead)
            return time.perf_counter() - start

        for _ in range(args["warmup"]):
            lead += 1
            for variant in VARIANTS:
                commit(variant)
        barrier.wait(BARRIER_TIMEOUT)
        if rank == 0:
            os.sync()  # the timed commits do not pay for the write-back of earlier ones (or of earlier runs)
        barrier.wait(BARRIER_TIMEOUT)  # every rank commits at the same time
        for index in range(args["commits"]):
            lead += 1
            for variant in VARIANTS[index % 2 :] + VARIANTS[: index % 2]:  # commit by commit, first one alternating
                commits[variant].append(commit(variant))
    for index in range(args["opens"]):
        for variant in VARIANTS[index % 2 :] + VARIANTS[: index % 2]:
            barrier.wait(BARRIER_TIMEOUT)  # every rank has closed (or finished the previous open)
            if rank == 0:
                os.sync()
            barrier.wait(BARRIER_TIMEOUT)  # all ranks open together, as at a restart
            checkpoint = _checkpoint(paths[variant], rank, world_size, variant == "consistent")
            start = time.perf_counter()
            with checkpoint as session:
                opens[variant].append(time.perf_counter() - start)
                if session.lead_time != lead:
                    raise RuntimeError(f"rank {rank} reopened {variant} at lead {session.lead_time}, expected {lead}")
    return commits, opens


def rank_main(rank: int, world_size: int, root: str, args: dict[str, Any], barrier: Any, results: Any) -> None:
    """A rank process: its timings and restartable's warnings go back to the parent through ``results``."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CheckpointWarning)
            commits, opens = rank_work(rank, world_size, root, args, barrier)
        warned = [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, CheckpointWarning)]
        results.put({"rank": rank, "commit_s": commits, "open_s": opens, "warnings": warned, "error": None})
    except BaseException as exc:  # reported by the parent
        barrier.abort()
        results.put(
            {"rank": rank, "commit_s": {}, "open_s": {}, "warnings": [], "error": f"{type(exc).__name__}: {exc}"}
        )


def run_world(ctx: Any, root: Path, world_size: int, args: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    """Start ``world_size`` rank processes on fresh stores; their results, by rank."""
    path = root / tag
    barrier, results = ctx.Barrier(world_size), ctx.Queue()
    procs = [
        ctx.Process(target=rank_main, args=(rank, world_size, str(path), args, barrier, results))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    gathered = [results.get(timeout=BARRIER_TIMEOUT * 2) for _ in procs]
    for proc in procs:
        proc.join(BARRIER_TIMEOUT)
    errors = [r for r in gathered if r["error"]]
    if errors:
        raise RuntimeError(f"{tag}: " + "; ".join(f"rank {r['rank']}: {r['error']}" for r in errors))
    shutil.rmtree(path, ignore_errors=True)
    return sorted(gathered, key=lambda r: r["rank"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="1,4,16", help="world sizes, comma-separated; default 1,4,16")
    parser.add_argument("--commits", type=int, default=50, help="timed commits per rank and round; default 50")
    parser.add_argument("--warmup", type=int, default=3, help="untimed commits per rank first; default 3")
    parser.add_argument("--opens", type=int, default=3, help="timed opens per rank and round; default 3")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds (the variants alternate which goes first); default 3"
    )
    parser.add_argument("--state-kib", type=int, default=64, help="state committed by each rank, KiB; default 64")
    parser.add_argument(
        "--dir", default=None, help="parent directory of the scratch directory (default: the system temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable results on stdout (the table goes to stderr)"
    )
    args = parser.parse_args(argv)
    if args.json:
        log_to_stderr()
    sizes = sorted({int(s) for s in args.ranks.split(",") if s.strip()})
    if not sizes or sizes[0] < 1 or args.commits < 1 or args.opens < 1 or args.rounds < 1:
        parser.error("ranks, commits, opens and rounds must be positive integers")

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    root = Path(tempfile.mkdtemp(prefix="restartable-bench-multirank-", dir=args.dir))
    worker_args = {
        "state_bytes": args.state_kib * 1024,
        "warmup": args.warmup,
        "commits": args.commits,
        "opens": args.opens,
    }
    meta = {
        **run_meta(root),
        "ranks": sizes,
        "commits": args.commits,
        "opens": args.opens,
        "rounds": args.rounds,
        "state_kib": args.state_kib,
    }
    log(
        f"bench_multirank: {args.state_kib} KiB commits at {', '.join(map(str, sizes))} ranks, "
        f"consistent vs independent, in {root}"
    )
    started = time.perf_counter()
    warned: dict[int, list[str]] = {w: [] for w in sizes}  # restartable's warnings, by world size
    raw: dict[int, dict[str, dict[str, list[float]]]] = {
        w: {v: {"commit_s": [], "open_s": [], "open_slowest_s": []} for v in VARIANTS} for w in sizes
    }
    try:
        for rnd in range(args.rounds):
            for world_size in sizes:
                begun = time.perf_counter()
                ranks = run_world(ctx, root, world_size, worker_args, f"w{world_size}-r{rnd}")
                for variant in VARIANTS:
                    into = raw[world_size][variant]
                    for r in ranks:
                        into["commit_s"].extend(r["commit_s"][variant])
                        into["open_s"].extend(r["open_s"][variant])
                    for attempt in range(args.opens):
                        into["open_slowest_s"].append(max(r["open_s"][variant][attempt] for r in ranks))
                for r in ranks:
                    warned[world_size].extend(r["warnings"])
                log(f"  round {rnd + 1}: {world_size:>2} ranks {time.perf_counter() - begun:5.1f} s")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    meta["elapsed_s"] = time.perf_counter() - started

    results = []
    for world_size in sizes:
        row: dict[str, Any] = {"ranks": world_size, "warnings": warned[world_size]}
        for variant in VARIANTS:
            r = raw[world_size][variant]
            row[variant] = {
                **r,
                "commit_median_s": statistics.median(r["commit_s"]),
                "commit_p90_s": quantile(r["commit_s"], 0.90),
                "open_median_s": statistics.median(r["open_s"]),
                "open_slowest_median_s": statistics.median(r["open_slowest_s"]),
            }
        row["commit_ratio_consistent_over_independent"] = (
            row["consistent"]["commit_median_s"] / row["independent"]["commit_median_s"]
        )
        row["open_ratio_consistent_over_independent"] = (
            row["consistent"]["open_median_s"] / row["independent"]["open_median_s"]
        )
        results.append(row)
    single = min(sizes)
    base = next(r for r in results if r["ranks"] == single)["consistent"]["commit_median_s"]
    for row in results:
        row[f"commit_ratio_consistent_over_{single}_rank"] = row["consistent"]["commit_median_s"] / base

    log_run_head(meta)
    log(
        f"mode='overwrite', flush_interval=1, durable=True; state {args.state_kib} KiB per rank; "
        f"{args.commits} timed commits per rank x {args.rounds} rounds (median over all ranks); "
        f"opens: {args.opens} per rank x {args.rounds} rounds"
    )
    log()
    header = (
        f"{'ranks':>5} {'commit cons.':>13} {'p90':>9} {'commit indep.':>14} {'p90':>9} {'cons/indep':>10}"
        f" {f'cons/{single} rank':>12}"
        f" {'open cons.':>11} {'slowest':>9} {'open indep.':>12} {'slowest':>9} {'cons/indep':>10}"
    )
    log_table_header(header)
    for row in results:
        c, i = row["consistent"], row["independent"]
        log(
            f"{row['ranks']:>5} {c['commit_median_s'] * 1e3:>10.2f} ms {c['commit_p90_s'] * 1e3:>6.2f} ms"
            f" {i['commit_median_s'] * 1e3:>11.2f} ms {i['commit_p90_s'] * 1e3:>6.2f} ms"
            f" {row['commit_ratio_consistent_over_independent']:>10.2f}"
            f" {row[f'commit_ratio_consistent_over_{single}_rank']:>12.2f}"
            f" {c['open_median_s'] * 1e3:>8.1f} ms {c['open_slowest_median_s'] * 1e3:>6.1f} ms"
            f" {i['open_median_s'] * 1e3:>9.1f} ms {i['open_slowest_median_s'] * 1e3:>6.1f} ms"
            f" {row['open_ratio_consistent_over_independent']:>10.2f}"
        )
    log()
    log("cons/indep: consistent over independent at the same number of ranks (the cost of consistency);")
    log(f"cons/{single} rank: consistent commit over the single-rank commit of the same state;")
    log(
        "open: entering the checkpoint with every rank's row present (the agreement, when consistent); "
        "slowest: the slowest rank"
    )
    for row in results:
        if row["warnings"]:
            kinds = sorted({text.split(":")[0] for text in row["warnings"]})
            log(
                f"{row['ranks']} ranks: {len(row['warnings'])} warning(s) from restartable ({', '.join(kinds)}), "
                f"e.g. {row['warnings'][0]}"
            )
    log(f"elapsed {meta['elapsed_s']:.1f} s")
    if args.json:
        print(json.dumps({"benchmark": "multirank", "meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
