#!/usr/bin/env python
"""``verify`` of a row listing many small files, against hashing the same files by hand.

A hostile (or just unusual) manifest may list a great many files; checking
such a row must cost about what reading and hashing those files costs, not
a multiple of it. The script writes one row of ``--files`` small payload
files (``--bytes`` each) and its signed manifest, then times, interleaved
``--repeats`` times (warm cache):

* ``verify``: :func:`restartable.store.verify_row` (manifest schema, each
  file's type and size, each checksum);
* ``baseline``: a plain loop that opens, reads and hashes (xxh3_64) every
  file, which is the least any verification must do.

It prints the median of each and the ratio verify / baseline (target:
at most 2: verify also checks the manifest schema and each file type; printed, not asserted).

Usage::

    python benchmarks/bench_verify.py                    # 100,000 files of 64 bytes
    python benchmarks/bench_verify.py --files 1000000    # the issue's million files
    python benchmarks/bench_verify.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import xxhash
from _common import log, log_run_head, log_to_stderr, run_meta

from restartable.store import verify_row
from restartable.store.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, dump_manifest

TARGET = 2.0


def build(root: Path, files: int, size: int) -> Path:
    """One committed row of ``files`` files of ``size`` bytes each, with its manifest."""
    name = f"{1:012d}-{uuid.uuid4().hex}"
    row = root / "commits" / name
    row.mkdir(parents=True)
    entries = []
    for index in range(files):
        data = os.urandom(size)
        file = f"p{index:06d}.npy" if index < 1_000_000 else f"q{index:09d}.npy"
        (row / file).write_bytes(data)
        entries.append({"name": file, "size": size, "checksum": xxhash.xxh3_64(data).hexdigest()})
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, "sequence": 1, "commit_id": name, "files": entries}
    (row / MANIFEST_NAME).write_bytes(dump_manifest(body))
    return row


def baseline(row: Path, names: list[str]) -> None:
    for name in names:
        with open(row / name, "rb", buffering=0) as fh:
            xxhash.xxh3_64(fh.read()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--bytes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the row (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr")
    args = parser.parse_args()
    if args.json:
        log_to_stderr()
    root = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.dir))
    try:
        meta = run_meta(root)
        log_run_head(meta)
        start = time.perf_counter()
        row = build(root, args.files, args.bytes)
        log(f"built a row of {args.files:,} files of {args.bytes} bytes in {time.perf_counter() - start:.1f} s")
        names = sorted(p.name for p in row.iterdir() if p.name != MANIFEST_NAME)
        times: dict[str, list[float]] = {"verify": [], "baseline": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            problems = verify_row(row)
            times["verify"].append(time.perf_counter() - start)
            assert not problems, problems[:3]
            start = time.perf_counter()
            baseline(row, names)
            times["baseline"].append(time.perf_counter() - start)
        verify, base = statistics.median(times["verify"]), statistics.median(times["baseline"])
        ratio = verify / base
        log(f"verify    {verify:8.2f} s  ({verify / args.files * 1e6:.1f} us per file)")
        log(f"baseline  {base:8.2f} s  ({base / args.files * 1e6:.1f} us per file)")
        log(f"verify / baseline: {ratio:.2f} (target <= {TARGET}) {'ok' if ratio <= TARGET else 'MISS'}")
        if args.json:
            print(json.dumps({**meta, "files": args.files, "verify_s": verify, "baseline_s": base, "ratio": ratio}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
