#!/usr/bin/env python
"""Run bench_commit.py and bench_catalog.py, then print one summary against the targets.

Each benchmark runs in its own process with ``--json``: its full table is
shown as it runs (on stderr), its JSON is collected, and the summary lists
every ratio next to its target. Nothing is asserted; the exit status is 0
unless a benchmark itself fails.

Usage::

    python benchmarks/run_all.py                  # full defaults (a few minutes)
    python benchmarks/run_all.py --quick          # 16 MiB state, 1/100/1000 rows, 30 commits
    python benchmarks/run_all.py --json           # the summary as JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run(script: str, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / script), "--json", *extra]
    print(f"$ {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (the table) streams through
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that everything runs")
    parser.add_argument("--size-mb", type=float, default=None, help="state size for bench_commit (default 256, 16 with --quick)")
    parser.add_argument("--dir", default=None, help="parent directory of the scratch directories")
    parser.add_argument("--warm-only", action="store_true", help="bench_commit: do not drop the page cache")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    args = parser.parse_args(argv)

    commit_args: list[str] = []
    catalog_args: list[str] = []
    if args.quick:
        commit_args += ["--size-mb", "16", "--repeats", "3"]
        catalog_args += ["--sizes", "1,100,1000", "--commits", "30"]
    if args.size_mb is not None:
        commit_args += ["--size-mb", str(args.size_mb)]
    if args.warm_only:
        commit_args.append("--warm-only")
    if args.dir:
        commit_args += ["--dir", args.dir]
        catalog_args += ["--dir", args.dir]

    started = time.perf_counter()
    commit = run("bench_commit.py", commit_args)
    print(file=sys.stderr)
    catalog = run("bench_catalog.py", catalog_args)
    elapsed = time.perf_counter() - started

    lines: list[tuple[str, float, str, bool | None]] = []
    for r in commit["results"]:
        v = r["variant"]
        c = r["commit"]
        lines.append((f"{v}: commit bandwidth restartable/raw", c["ratio_bandwidth"], f">= {c['target_ratio_min']}", c["ratio_bandwidth"] >= c["target_ratio_min"]))
        u = r["commit_unchanged"]
        lines.append((f"{v}: unchanged-state commit restartable/raw", u["ratio_bandwidth"], "(info)", None))
        s = r["restore"]
        lines.append((f"{v}: restore time restartable/raw ({r['restore_cache']})", s["ratio_time"], f"<= {s['target_ratio_max']}", s["ratio_time"] <= s["target_ratio_max"]))
        if r["restore_cache"] == "cold":
            w = r["restore_warm"]
            lines.append((f"{v}: restore time restartable/raw (warm)", w["ratio_time"], "(info)", None))
    sizes = catalog["meta"]["sizes"]
    ratio = catalog["ratio_commit_largest_over_smallest"]
    lines.append((f"catalog: commit cost at {sizes[-1]:,} / {sizes[0]:,} rows", ratio, f"<= {catalog['target_ratio_max']}", ratio <= catalog["target_ratio_max"]))

    out = sys.stderr if args.json else sys.stdout
    print("\n" + "=" * 78, file=out)
    print(f"SUMMARY ({commit['meta']['size_mb']:g} MiB state; restore {commit['results'][0]['restore_cache'] if commit['results'] else '-'}; "
          f"catalog sizes {', '.join(f'{s:,}' for s in sizes)})", file=out)
    print("=" * 78, file=out)
    width = max(len(label) for label, *_ in lines)
    for label, value, target, ok in lines:
        mark = "" if ok is None else ("ok" if ok else "MISS")
        print(f"{label:<{width}}  {value:>7.2f}  {target:<8} {mark}", file=out)
    for r in commit["results"]:
        c = r["commit"]
        print(f"{r['variant']}: commit {c['raw_mib_per_s']:.0f} MiB/s raw, {c['restartable_mib_per_s']:.0f} MiB/s restartable", file=out)
    for r in catalog["results"]:
        print(f"catalog {r['rows']:>6,} rows: commit {r['commit_median_s'] * 1e3:.2f} ms, open {r['open_catalog_median_s'] * 1e3:.1f} ms", file=out)
    missed = sum(1 for *_, ok in lines if ok is False)
    print(f"{missed} target(s) missed; total {elapsed:.0f} s", file=out)
    if args.json:
        print(json.dumps({"commit": commit, "catalog": catalog, "summary": [
            {"measure": label, "value": value, "target": target, "meets": ok} for label, value, target, ok in lines
        ]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
