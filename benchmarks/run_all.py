#!/usr/bin/env python
"""Run bench_commit.py, bench_catalog.py, bench_workflow.py, bench_vs_earth2studio.py, bench_remote.py and
bench_many_arrays.py, then one summary.

Each benchmark runs in its own process with ``--json``: its full table is
shown as it runs (on stderr), its JSON is collected, and the summary lists
every ratio next to its target. Nothing is asserted; the exit status is 0
unless a benchmark itself fails. bench_vs_earth2studio.py skips its
earth2studio columns (and says how to install it) when earth2studio is not
installed.

Usage::

    python benchmarks/run_all.py                  # full defaults (about 20 minutes on 2 cores)
    python benchmarks/run_all.py --quick          # small sizes: checks that everything runs (about two minutes)
    python benchmarks/run_all.py --skip workflow,vs_earth2studio   # only bench_commit and bench_catalog
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
    parser.add_argument(
        "--size-mb", type=float, default=None, help="state size for bench_commit (default 256, 16 with --quick)"
    )
    parser.add_argument("--dir", default=None, help="parent directory of the scratch directories")
    parser.add_argument("--warm-only", action="store_true", help="bench_commit: do not drop the page cache")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated benchmarks to leave out: commit,catalog,workflow,vs_earth2studio,remote,many_arrays",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    args = parser.parse_args(argv)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    unknown = skip - {"commit", "catalog", "workflow", "vs_earth2studio", "remote", "many_arrays"}
    if unknown:
        parser.error(f"unknown benchmark(s) in --skip: {', '.join(sorted(unknown))}")

    commit_args: list[str] = []
    catalog_args: list[str] = []
    workflow_args: list[str] = []
    vs_args: list[str] = []
    remote_args: list[str] = []
    many_args: list[str] = []
    if args.quick:
        many_args.append("--quick")
        remote_args += ["--mib", "32", "--repeats", "1"]
        commit_args += ["--size-mb", "16", "--repeats", "3"]
        catalog_args += ["--sizes", "1,100,1000", "--commits", "30"]
        workflow_args += ["--nlat", "256", "--nlon", "512", "--steps", "4", "--repeats", "3"]
        vs_args += ["--size-mb", "32", "--commits", "3", "--sequences", "1", "--rows", "300", "--meta-commits", "10",
                    "--nlat", "128", "--nlon", "256", "--steps", "4", "--repeats", "1"]  # fmt: skip
    if args.size_mb is not None:
        commit_args += ["--size-mb", str(args.size_mb)]
    if args.warm_only:
        commit_args.append("--warm-only")
    if args.dir:
        for extra in (commit_args, catalog_args, workflow_args, vs_args, many_args):
            extra += ["--dir", args.dir]

    started = time.perf_counter()
    results: dict[str, Any] = {}
    for key, script, extra in (
        ("commit", "bench_commit.py", commit_args),
        ("catalog", "bench_catalog.py", catalog_args),
        ("workflow", "bench_workflow.py", workflow_args),
        ("vs_earth2studio", "bench_vs_earth2studio.py", vs_args),
        ("remote", "bench_remote.py", remote_args),
        ("many_arrays", "bench_many_arrays.py", many_args),
    ):
        if key in skip:
            continue
        if results:
            print(file=sys.stderr)
        results[key] = run(script, extra)
    elapsed = time.perf_counter() - started

    lines: list[tuple[str, float | None, str, bool | None]] = []
    heads: list[str] = []
    commit = results.get("commit")
    if commit is not None:
        restore_cache = commit["results"][0]["restore_cache"] if commit["results"] else "-"
        heads.append(f"{commit['meta']['size_mb']:g} MiB state; restore {restore_cache}")
        for r in commit["results"]:
            v = r["variant"]
            c = r["commit"]
            lines.append(
                (
                    f"{v}: commit bandwidth restartable/raw",
                    c["ratio_bandwidth"],
                    f">= {c['target_ratio_min']}",
                    c["ratio_bandwidth"] >= c["target_ratio_min"],
                )
            )
            u = r["commit_unchanged"]
            lines.append((f"{v}: unchanged-state commit restartable/raw", u["ratio_bandwidth"], "(info)", None))
            s = r["restore"]
            lines.append(
                (
                    f"{v}: restore time restartable/raw ({r['restore_cache']})",
                    s["ratio_time"],
                    f"<= {s['target_ratio_max']}",
                    s["ratio_time"] <= s["target_ratio_max"],
                )
            )
            if r["restore_cache"] == "cold":
                w = r["restore_warm"]
                lines.append((f"{v}: restore time restartable/raw (warm)", w["ratio_time"], "(info)", None))
    catalog = results.get("catalog")
    if catalog is not None:
        sizes = catalog["meta"]["sizes"]
        heads.append(f"catalog sizes {', '.join(f'{s:,}' for s in sizes)}")
        ratio = catalog["ratio_commit_largest_over_smallest"]
        lines.append(
            (
                f"catalog: commit cost at {sizes[-1]:,} / {sizes[0]:,} rows",
                ratio,
                f"<= {catalog['target_ratio_max']}",
                ratio <= catalog["target_ratio_max"],
            )
        )
    workflow = results.get("workflow")
    if workflow is not None:
        m = workflow["meta"]
        heads.append(f"workflow {m['nlat']}x{m['nlon']}, {m['steps']} steps")
        lines.append(
            ("workflow: with/without checkpoint (medians)", workflow["ratio_with_over_without"], "(info)", None)
        )
        lines.append(("workflow: with/without checkpoint (paired)", workflow["ratio_paired_median"], "(info)", None))
        lines.append(("workflow: with/without checkpoint (fastest runs)", workflow["ratio_min"], "(info)", None))
    remote = results.get("remote")
    if remote is not None:
        heads.append(f"remote {remote['meta']['bytes'] / 2**20:.0f} MiB directory, {remote['meta']['endpoint']}")
        lines.append(("remote: upload throughput restartable/fs.put", remote["ratios"]["upload"], "(info)", None))
        lines.append(("remote: download throughput restartable/fs.get", remote["ratios"]["download"], "(info)", None))
    vs = results.get("vs_earth2studio")
    if vs is not None:
        heads.append(f"vs earth2studio {vs['meta'].get('earth2studio') or '(not installed)'}")
        for item in vs["summary"]:
            lines.append((f"vs e2s {item['measure']}", item["value"], item["target"], item["meets"]))

    many = results.get("many_arrays")
    if many is not None:
        heads.append(f"many arrays, states {','.join(r['state'] for r in many['results'])}")
        for r in many["results"]:
            for item in r["ratios"]:
                target = "(info)" if item["target"] is None else f"<= {item['target']}"
                label = f"many arrays {r['state']}: {item['measure']} restartable/{item['peer']}"
                lines.append((label, item["value"], target, item["meets"]))

    out = sys.stderr if args.json else sys.stdout
    print("\n" + "=" * 78, file=out)
    print(f"SUMMARY ({'; '.join(heads)})", file=out)
    print("=" * 78, file=out)
    width = max((len(label) for label, *_ in lines), default=10)
    for label, value, target, ok in lines:
        mark = "" if ok is None else ("ok" if ok else "MISS")
        shown = f"{value:>7.2f}" if value is not None else f"{'-':>7}"
        print(f"{label:<{width}}  {shown}  {target:<8} {mark}", file=out)
    if commit is not None:
        for r in commit["results"]:
            c = r["commit"]
            print(
                f"{r['variant']}: commit {c['raw_mib_per_s']:.0f} MiB/s raw, "
                f"{c['restartable_mib_per_s']:.0f} MiB/s restartable",
                file=out,
            )
    if catalog is not None:
        for r in catalog["results"]:
            print(
                f"catalog {r['rows']:>6,} rows: commit {r['commit_median_s'] * 1e3:.2f} ms, "
                f"open {r['open_catalog_median_s'] * 1e3:.1f} ms",
                file=out,
            )
    if workflow is not None:
        print(
            f"workflow: {workflow['without_median_s']:.2f} s without, "
            f"{workflow['with_median_s']:.2f} s with checkpoint; "
            f"overhead {workflow['overhead_per_step_s'] * 1e3:.1f} ms/step; "
            f"{workflow['commit_per_step_s'] * 1e3:.1f} ms per commit "
            f"({workflow['commit_mib_per_s']:.0f} MiB/s)",
            file=out,
        )
    if vs is not None and vs["meta"].get("earth2studio") is None:
        print(f"vs earth2studio: earth2studio columns skipped ({vs['meta'].get('earth2studio_loaded')}); "
              "install with: pip install --no-deps earth2studio==0.19.0", file=out)  # fmt: skip
    missed = sum(1 for *_, ok in lines if ok is False)
    print(f"{missed} target(s) missed; total {elapsed:.0f} s", file=out)
    if args.json:
        print(
            json.dumps(
                {
                    **results,
                    "summary": [
                        {"measure": label, "value": value, "target": target, "meets": ok}
                        for label, value, target, ok in lines
                    ],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
