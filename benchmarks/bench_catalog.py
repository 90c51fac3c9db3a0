#!/usr/bin/env python
"""Metadata-only commit cost against the number of rows already in the catalog.

Three catalogs are built in ``mode="append"`` with ``history_size=None``
holding 1, 1,000 and 10,000 rows (``--sizes``). They are built with
``durable=False`` to save time, then ``os.sync()`` flushes them to disk.
Each catalog is then opened for writing with the default ``durable=True``
and ``--commits`` further commits (``session.write(lead_time=i)``, nothing
bound, ``flush_interval=1``) are timed one by one. The catalogs take turns
commit by commit (round robin, starting order rotated each round), so that
drifts in a shared, noisy disk hit every size alike. The figure per size is
the median time of one commit; the ratio cost(largest)/cost(smallest) has a
target of <= 1.2 (printed, not asserted). Note that each catalog grows by
``--commits`` rows while it is measured (1 -> 201, 10,000 -> 10,200).

Also reported, for information: the time to open the catalog
(``Checkpoint(...).catalog``, which reads and checks every row's manifest;
median of ``--open-repeats``, warm cache) and the time to enter a writing
session (``with Checkpoint(...) as session``, once) at each size.

Usage::

    python benchmarks/bench_catalog.py                       # 1, 1000, 10000 rows, 200 commits each
    python benchmarks/bench_catalog.py --sizes 1,100 --commits 20
    python benchmarks/bench_catalog.py --json                # JSON on stdout, table on stderr
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import log, log_run_head, log_table_header, log_to_stderr, quantile, run_meta

from restartable import Checkpoint

TARGET = 1.2  # commit cost at the largest size / at the smallest, at most
NAME = "bench-catalog"


def open_checkpoint(path: Path, durable: bool = True) -> Checkpoint:
    return Checkpoint(NAME, path=path, mode="append", history_size=None, rank=0, world_size=1, durable=durable)


def build(path: Path, rows: int) -> float:
    start = time.perf_counter()
    with open_checkpoint(path, durable=False) as session:
        for i in range(rows):
            session.write(lead_time=i)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,1000,10000", help="existing rows, comma-separated; default 1,1000,10000")
    parser.add_argument("--commits", type=int, default=200, help="timed commits per size; default 200")
    parser.add_argument("--warmup", type=int, default=5, help="untimed commits per size first; default 5")
    parser.add_argument("--open-repeats", type=int, default=3, help="timed catalog opens per size; default 3")
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
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 1:
        parser.error("sizes must be positive integers")

    root = Path(tempfile.mkdtemp(prefix="restartable-bench-catalog-", dir=args.dir))
    meta = {**run_meta(root), "sizes": sizes, "commits": args.commits}
    log(f"bench_catalog: metadata-only commits at {', '.join(f'{s:,}' for s in sizes)} existing rows, in {root}")
    started = time.perf_counter()
    results: dict[int, dict[str, Any]] = {}
    try:
        paths = {size: root / f"rows-{size}" for size in sizes}
        for size, path in paths.items():
            seconds = build(path, size)
            results[size] = {"rows": size, "build_s": seconds}
            log(f"  built {size:,} rows (durable=False) in {seconds:.1f} s")
        os.sync()

        for size, path in paths.items():
            opens = []
            for _ in range(args.open_repeats):
                start = time.perf_counter()
                catalog = open_checkpoint(path).catalog
                opens.append(time.perf_counter() - start)
                assert len(catalog) == size, (len(catalog), size)
            results[size]["open_catalog_s"] = opens
            results[size]["open_catalog_median_s"] = statistics.median(opens)

        with contextlib.ExitStack() as stack:
            sessions = {}
            for size, path in paths.items():
                start = time.perf_counter()
                sessions[size] = stack.enter_context(open_checkpoint(path))
                results[size]["enter_session_s"] = time.perf_counter() - start
            lead = {size: size for size in sizes}
            for _ in range(args.warmup):
                for size in sizes:
                    lead[size] += 1
                    sessions[size].write(lead_time=lead[size])
            times: dict[int, list[float]] = {size: [] for size in sizes}
            for rnd in range(args.commits):
                shift = rnd % len(sizes)
                for size in sizes[shift:] + sizes[:shift]:
                    lead[size] += 1
                    session = sessions[size]
                    start = time.perf_counter()
                    session.write(lead_time=lead[size])
                    times[size].append(time.perf_counter() - start)
        for size in sizes:
            t = times[size]
            results[size].update(
                commit_s=t,
                commit_median_s=statistics.median(t),
                commit_p10_s=quantile(t, 0.10),
                commit_p90_s=quantile(t, 0.90),
                rows_after=len(open_checkpoint(paths[size]).catalog),
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    meta["elapsed_s"] = time.perf_counter() - started

    smallest, largest = sizes[0], sizes[-1]
    ratio = results[largest]["commit_median_s"] / results[smallest]["commit_median_s"]
    log_run_head(meta)
    log(
        f"mode='append', history_size=None, durable=True, flush_interval=1; "
        f"{args.commits} timed commits per size (median)"
    )
    log()
    header = (
        f"{'existing rows':>13} {'commit median':>14} {'p10':>9} {'p90':>9} {'commits/s':>10} "
        f"{'open catalog':>13} {'enter session':>14}"
    )
    log_table_header(header)
    for size in sizes:
        r = results[size]
        log(
            f"{size:>13,} {r['commit_median_s'] * 1e3:>11.2f} ms {r['commit_p10_s'] * 1e3:>6.2f} ms "
            f"{r['commit_p90_s'] * 1e3:>6.2f} ms "
            f"{1 / r['commit_median_s']:>10.0f} {r['open_catalog_median_s'] * 1e3:>10.1f} ms "
            f"{r['enter_session_s'] * 1e3:>11.1f} ms"
        )
    log()
    log(
        f"ratio commit cost({largest:,}) / cost({smallest:,}) = {ratio:.2f}  (target <= {TARGET}: "
        + ("meets target)" if ratio <= TARGET else "MISSES target)")
    )
    log("open catalog and enter session are informational (both read every manifest)")
    log(f"elapsed {meta['elapsed_s']:.1f} s")
    if args.json:
        out = {
            "benchmark": "catalog",
            "meta": meta,
            "results": [results[size] for size in sizes],
            "ratio_commit_largest_over_smallest": ratio,
            "target_ratio_max": TARGET,
        }
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
