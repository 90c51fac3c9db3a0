#!/usr/bin/env python
"""Commit and restore bandwidth of restartable against raw ``numpy.save`` / ``numpy.load``.

For each variant (numpy arrays, torch CPU tensors) the state is a dataclass
of 4 float32 arrays holding ``--size-mb`` MiB in all (default 256: 4 x 64 MiB).

commit (changed state)
    ``session.write(lead_time=i)`` with ``flush_interval=1`` in the default
    ``mode="overwrite"`` (each commit also retires the previous row), every
    array changed before each commit (``+= 1``) so that hard-linking
    unchanged arrays cannot help. Baseline, measured in the same run and
    interleaved with it: ``numpy.save`` of the same arrays over the same 4
    files (truncating the previous version, as overwrite mode deletes the
    previous row) + ``os.fsync`` of each file + ``fsync`` of the directory.
commit (unchanged state)
    the same commit with nothing changed since the previous one: the arrays
    are hashed in memory and hard-linked (dedup). Reported as logical MiB/s
    against the same raw baseline, which always rewrites everything.
restore
    ``Checkpoint(...).select(-1)`` (reads and verifies every file: size and
    xxh3 checksum) + entering the session + binding a fresh instance (which
    restores it), against ``numpy.load`` of the same 4 arrays written by the
    baseline. Measured cold (page cache dropped with
    ``echo 3 > /proc/sys/vm/drop_caches`` before each timed read of either
    side, when permitted) and warm (files read once before timing, for both).

``os.sync()`` runs (untimed) before every timed operation, so neither side
pays for the other's write-back. Every figure is the median of ``--repeats``
runs; raw and restartable alternate which one goes first.

Nothing here asserts a threshold: the ratios are printed against the
targets (commit bandwidth restartable/raw >= 0.9, restore time
restartable/raw <= 1.2).

Usage::

    python benchmarks/bench_commit.py                 # 256 MiB, numpy and torch
    python benchmarks/bench_commit.py --size-mb 16    # quick check
    python benchmarks/bench_commit.py --json          # JSON on stdout, table on stderr
"""

from __future__ import annotations

import argparse
import contextvars
import cProfile
import dataclasses
import gc
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    import torch
except ImportError:  # the torch variant is skipped
    torch = None

from _common import log, log_run_head, log_table_header, log_to_stderr, run_meta

from restartable import Checkpoint, bind_checkpoint_state

N_ARRAYS = 4
COMMIT_TARGET = 0.9  # restartable bandwidth / raw bandwidth, at least
RESTORE_TARGET = 1.2  # restartable time / raw time, at most
MiB = 1 << 20


@dataclasses.dataclass
class NumpyState:
    a0: Any
    a1: Any
    a2: Any
    a3: Any


@dataclasses.dataclass
class TorchState:
    t0: Any
    t1: Any
    t2: Any
    t3: Any


STATE_TYPES = {"numpy": NumpyState, "torch": TorchState}


# --------------------------------------------------------------------------- helpers


# A copy of restartable.store.files.fsync_dir on purpose: the baseline must not run the code under test.
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_caches() -> bool:
    """Drop the page cache (needs root); False when not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def make_state(variant: str, size_mb: float, seed: int = 0) -> Any:
    count = max(1, int(size_mb * MiB / N_ARRAYS / 4))
    rng = np.random.default_rng(seed)
    arrays = [rng.random(count, dtype=np.float32) for _ in range(N_ARRAYS)]
    if variant == "torch":
        return TorchState(*(torch.from_numpy(a) for a in arrays))
    return NumpyState(*arrays)


def empty_state(variant: str) -> Any:
    return STATE_TYPES[variant](*([None] * N_ARRAYS))


def numpy_views(state: Any) -> list[np.ndarray]:
    """The state's arrays as numpy arrays (zero-copy for tensors)."""
    values = [getattr(state, f.name) for f in dataclasses.fields(state)]
    return [v.numpy() if torch is not None and isinstance(v, torch.Tensor) else v for v in values]


def mutate(state: Any, amount: float) -> None:
    for array in numpy_views(state):
        array += np.float32(amount)  # in place: tensors share the memory


def raw_files(raw_dir: Path) -> list[Path]:
    return [raw_dir / f"a{k}.npy" for k in range(N_ARRAYS)]


def raw_save(arrays: list[np.ndarray], raw_dir: Path) -> None:
    """The baseline commit: np.save each array, fsync each file, fsync the directory."""
    for array, path in zip(arrays, raw_files(raw_dir), strict=True):
        with open(path, "wb") as fh:
            np.save(fh, array)
            fh.flush()
            os.fsync(fh.fileno())
    fsync_dir(raw_dir)


def raw_load(raw_dir: Path, variant: str) -> list[Any]:
    arrays = [np.load(path) for path in raw_files(raw_dir)]
    if variant == "torch":
        return [torch.from_numpy(a) for a in arrays]
    return arrays


def restartable_restore(ckpt_path: Path, name: str, variant: str) -> Any:
    """select(-1) (read + verify every file), enter the session, bind a fresh instance."""

    def run() -> Any:
        session = Checkpoint(name, path=ckpt_path, rank=0, world_size=1).select(-1)
        with session:
            proxy = bind_checkpoint_state(empty_state(variant))
        return proxy.checkpoint_dataclass

    # A fresh context: the session leaves the bound state registered for the
    # next session of its Checkpoint; that must not pile up across repeats.
    return contextvars.copy_context().run(run)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values)


# --------------------------------------------------------------------------- one variant


class Profiler:
    """cProfile around the timed restartable calls only (``--profile``)."""

    def __init__(self, enabled: bool) -> None:
        self.profiles: dict[str, tuple[cProfile.Profile, list[int]]] = {}
        self.enabled = enabled

    def run(self, label: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return fn()
        prof, calls = self.profiles.setdefault(label, (cProfile.Profile(), [0]))
        calls[0] += 1
        return prof.runcall(fn)

    def report(self, variant: str, top: int = 12) -> None:
        for label, (prof, calls) in self.profiles.items():
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
            body = out.getvalue().strip().splitlines()
            keep = [
                line for line in body if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced"))
            ]
            log(f"\n--- profile: {variant}, {label} (totals over {calls[0]} calls, sorted by own time) ---")
            for line in keep:
                log(line)


def bench_variant(
    variant: str, root: Path, size_mb: float, repeats: int, cold: bool, profile: bool = False
) -> dict[str, Any]:
    profiler = Profiler(profile)
    state = make_state(variant, size_mb)
    nbytes = sum(a.nbytes for a in numpy_views(state))
    mb = nbytes / MiB
    raw_dir = root / f"raw-{variant}"
    raw_dir.mkdir()
    ckpt_path = root / f"ckpt-{variant}"
    name = f"bench-commit-{variant}"
    # mode="overwrite", durable=True; link_unchanged=True for the dedup figure
    checkpoint = Checkpoint(name, path=ckpt_path, rank=0, world_size=1, link_unchanged=True)
    # The unchanged-state commits are compared with the same raw baseline (raw_commit).
    raw_commit, rs_commit, rs_unchanged = [], [], []
    tick = 0
    with checkpoint as session:
        bind_checkpoint_state(state)
        # Round 0 is a warm-up (first file creation, first row, imports).
        for rnd in range(repeats + 1):
            order = ("raw", "restartable") if rnd % 2 == 0 else ("restartable", "raw")
            for who in order:
                tick += 1
                mutate(state, 1.0)  # different bytes for every commit
                os.sync()
                if who == "raw":
                    t, _ = timed(lambda s=state: raw_save(numpy_views(s), raw_dir))
                    if rnd:
                        raw_commit.append(t)
                else:
                    if rnd:
                        t, _ = timed(
                            lambda tick=tick: profiler.run(
                                "commit, changed state", lambda: session.write(lead_time=tick)
                            )
                        )
                        rs_commit.append(t)
                    else:
                        session.write(lead_time=tick)
        # Unchanged state: every array equals the previous row's, so it is hashed and linked.
        for _ in range(repeats):
            os.sync()
            tick += 1
            t, _ = timed(lambda tick=tick: session.write(lead_time=tick))
            rs_unchanged.append(t)
    # Both sides now hold the same bytes on disk.
    raw_save(numpy_views(state), raw_dir)
    expected = [a.copy() for a in numpy_views(state)]
    del state
    gc.collect()

    def restore_rounds(drop: bool) -> tuple[list[float], list[float], bool]:
        raw_t, rs_t = [], []
        ok = True
        if not drop:  # warm both
            raw_load(raw_dir, variant)
            restartable_restore(ckpt_path, name, variant)
        for rnd in range(repeats):
            order = ("raw", "restartable") if rnd % 2 == 0 else ("restartable", "raw")
            for who in order:
                if drop:
                    drop_caches()
                else:
                    os.sync()
                gc.collect()
                if who == "raw":
                    t, loaded = timed(lambda: raw_load(raw_dir, variant))
                    raw_t.append(t)
                else:
                    t, restored = timed(
                        lambda: profiler.run(
                            f"restore, {'cold' if drop else 'warm'}",
                            lambda: restartable_restore(ckpt_path, name, variant),
                        )
                    )
                    rs_t.append(t)
                    loaded = [getattr(restored, f.name) for f in dataclasses.fields(restored)]
                    del restored
                if rnd == 0:  # check the data once per side (untimed)
                    if variant == "torch":
                        ok = ok and all(isinstance(a, torch.Tensor) for a in loaded)
                        loaded = [a.numpy() for a in loaded]
                    ok = ok and all(np.array_equal(a, e) for a, e in zip(loaded, expected, strict=True))
                del loaded
        return raw_t, rs_t, ok

    result: dict[str, Any] = {"variant": variant, "bytes": nbytes, "mib": mb}

    def bandwidth_block(raw_t: list[float], rs_t: list[float]) -> dict[str, Any]:
        raw_bw, rs_bw = mb / median(raw_t), mb / median(rs_t)
        return {
            "raw_s": raw_t,
            "restartable_s": rs_t,
            "raw_median_s": median(raw_t),
            "restartable_median_s": median(rs_t),
            "raw_mib_per_s": raw_bw,
            "restartable_mib_per_s": rs_bw,
            "ratio_bandwidth": rs_bw / raw_bw,
        }

    result["commit"] = bandwidth_block(raw_commit, rs_commit)
    result["commit"]["target_ratio_min"] = COMMIT_TARGET
    result["commit_unchanged"] = bandwidth_block(raw_commit, rs_unchanged)

    def restore_block(raw_t: list[float], rs_t: list[float], ok: bool) -> dict[str, Any]:
        return {
            "raw_s": raw_t,
            "restartable_s": rs_t,
            "raw_median_s": median(raw_t),
            "restartable_median_s": median(rs_t),
            "raw_mib_per_s": mb / median(raw_t),
            "restartable_mib_per_s": mb / median(rs_t),
            "ratio_time": median(rs_t) / median(raw_t),
            "target_ratio_max": RESTORE_TARGET,
            "restored_equal": ok,
        }

    if cold:
        result["restore_cold"] = restore_block(*restore_rounds(True))
    result["restore_warm"] = restore_block(*restore_rounds(False))
    result["restore"] = result["restore_cold"] if cold else result["restore_warm"]
    result["restore_cache"] = "cold" if cold else "warm"
    profiler.report(variant)
    return result


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def print_report(results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    log_run_head(meta, f", median of {meta['repeats']} runs")
    log(f"page cache for restore: {meta['cache_note']}")
    log()
    header = f"{'variant':<8} {'operation':<26} {'raw':>15} {'restartable':>17} {'ratio':>8}  target"
    log_table_header(header)
    for r in results:
        v = r["variant"]
        c = r["commit"]
        log(
            f"{v:<8} {'commit, changed state':<26} {c['raw_mib_per_s']:>9.0f} MiB/s   "
            f"{c['restartable_mib_per_s']:>9.0f} MiB/s "
            f"{c['ratio_bandwidth']:>7.2f}  >= {COMMIT_TARGET} ({verdict(c['ratio_bandwidth'] >= COMMIT_TARGET)})"
        )
        u = r["commit_unchanged"]
        log(
            f"{v:<8} {'commit, unchanged (dedup)':<26} {u['raw_mib_per_s']:>9.0f} MiB/s   "
            f"{u['restartable_mib_per_s']:>9.0f} MiB/s "
            f"{u['ratio_bandwidth']:>7.2f}  (informational)"
        )
        for key, label in (("restore_cold", "restore, cold cache"), ("restore_warm", "restore, warm cache")):
            if key not in r:
                continue
            s = r[key]
            primary = key == f"restore_{r['restore_cache']}"
            target = (
                f"<= {RESTORE_TARGET} ({verdict(s['ratio_time'] <= RESTORE_TARGET)})" if primary else "(informational)"
            )
            log(
                f"{v:<8} {label:<26} {s['raw_median_s'] * 1e3:>11.1f} ms     "
                f"{s['restartable_median_s'] * 1e3:>11.1f} ms    "
                f"{s['ratio_time']:>7.2f}  {target}"
            )
    log()
    log(
        "commit ratio = restartable MiB/s / raw MiB/s (higher is better); "
        "restore ratio = restartable time / raw time (lower is better)"
    )
    for r in results:
        c, u = r["commit"], r["commit_unchanged"]
        log(
            f"{r['variant']}: commit median {c['raw_median_s'] * 1e3:.1f} ms raw vs "
            f"{c['restartable_median_s'] * 1e3:.1f} ms restartable; "
            f"unchanged commit {u['restartable_median_s'] * 1e3:.1f} ms; restored data equal: "
            + ", ".join(f"{k[8:]}={r[k]['restored_equal']}" for k in ("restore_cold", "restore_warm") if k in r)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-mb", type=float, default=256, help="total state size in MiB (4 float32 arrays); default 256"
    )
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of each measurement; default 9")
    parser.add_argument("--variants", default="numpy,torch", help="comma-separated: numpy,torch")
    parser.add_argument(
        "--dir", default=None, help="parent directory of the scratch directory (default: the system temp dir)"
    )
    parser.add_argument("--warm-only", action="store_true", help="do not drop the page cache; restore is compared warm")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the timed restartable calls and print the top functions (adds a little overhead)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable results on stdout (the table goes to stderr)"
    )
    args = parser.parse_args(argv)
    if args.json:
        log_to_stderr()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in STATE_TYPES:
            parser.error(f"unknown variant {v!r}")
    if "torch" in variants and torch is None:
        log("torch is not installed: skipping the torch variant")
        variants.remove("torch")

    root = Path(tempfile.mkdtemp(prefix="restartable-bench-commit-", dir=args.dir))
    cold = False if args.warm_only else drop_caches()
    cache_note = (
        "cold: page cache dropped before every timed read, for raw and restartable alike"
        if cold
        else "warm for both (files read once before timing)"
        + (" (--warm-only)" if args.warm_only else "; dropping the cache is not permitted here")
    )
    meta = {
        **run_meta(root, torch=getattr(torch, "__version__", None)),
        "repeats": args.repeats,
        "size_mb": args.size_mb,
        "cache_note": cache_note,
    }
    log(
        f"bench_commit: {args.size_mb:g} MiB state ({N_ARRAYS} float32 arrays), "
        f"variants {', '.join(variants)}, in {root}"
    )
    results = []
    started = time.perf_counter()
    try:
        for variant in variants:
            log(f"  running {variant} ...")
            results.append(bench_variant(variant, root, args.size_mb, args.repeats, cold, args.profile))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    meta["elapsed_s"] = time.perf_counter() - started
    print_report(results, meta)
    log(f"elapsed {meta['elapsed_s']:.1f} s")
    if args.json:
        print(json.dumps({"benchmark": "commit", "meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
