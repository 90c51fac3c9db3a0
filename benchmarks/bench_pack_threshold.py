#!/usr/bin/env python
"""Where packing stops paying: packed arrays against a file per array, by array size.

For each array size (64 KiB to 16 MiB), a state of that many float32 arrays
that adds up to ``--total`` MiB (64 by default) is committed durably with
``RowWriter(pack_below=0)`` (every array its own ``.npy`` file, as in
format 1) and with every array packed (``pack_below`` above the size),
interleaved, ``--repeats`` times each, every array changed before each
commit; then each newest row is read back (``load_all_payloads``: every byte
read and checked) warm. Printed: medians and the ratio packed / own files.
A ratio below 1 means packing is faster at that size;
``restartable.store.packs.PACK_BELOW_BYTES`` is set where it stops being so.

Usage::

    python benchmarks/bench_pack_threshold.py [--total 64] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from restartable.store import RowWriter, Snapshot, scan_rows

SIZES_KIB = [64, 256, 1024, 2048, 4096, 16384]


def measure(size_kib: int, total_mib: int, repeats: int, root: Path) -> dict[str, float]:
    count = max(1, total_mib * 1024 // size_kib)
    arrays = [np.random.default_rng(i).random(size_kib * 256, dtype=np.float32) for i in range(count)]
    writers = {
        "own": RowWriter(root / f"own-{size_kib}", keep=1, pack_below=0),
        "packed": RowWriter(root / f"packed-{size_kib}", keep=1, pack_below=size_kib * 1024 + 1),
    }
    commits: dict[str, list[float]] = {kind: [] for kind in writers}
    try:
        for round_ in range(repeats + 1):
            for kind in sorted(writers, reverse=bool(round_ % 2)):
                for array in arrays:
                    array += 1
                started = time.perf_counter()
                writers[kind].persist(Snapshot(body={}, payloads=arrays))
                if round_:  # the first round warms up
                    commits[kind].append(time.perf_counter() - started)
    finally:
        for writer in writers.values():
            writer.close()
    restores: dict[str, list[float]] = {kind: [] for kind in writers}
    for _ in range(repeats):
        for kind in writers:
            row = scan_rows(root / f"{kind}-{size_kib}").rows[-1]
            started = time.perf_counter()
            row.load_all_payloads()
            restores[kind].append(time.perf_counter() - started)
    result = {"size_kib": size_kib, "arrays": count}
    for kind in writers:
        result[f"{kind}_commit_s"] = statistics.median(commits[kind])
        result[f"{kind}_restore_s"] = statistics.median(restores[kind])
    result["commit_ratio"] = result["packed_commit_s"] / result["own_commit_s"]
    result["restore_ratio"] = result["packed_restore_s"] / result["own_restore_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=64, help="MiB per state (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed commits per writer (default 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        for size in SIZES_KIB:
            results.append(measure(size, args.total, args.repeats, Path(tmp)))
            if not args.json:
                r = results[-1]
                print(
                    f"{size:>6} KiB x {r['arrays']:>5}: commit packed {r['packed_commit_s']:.3f} s, "
                    f"own files {r['own_commit_s']:.3f} s, ratio {r['commit_ratio']:.2f}; "
                    f"restore ratio {r['restore_ratio']:.2f}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
