#!/usr/bin/env python
"""States of many arrays: restartable side by side with safetensors, torch.save, PyTorch DCP and numpy.save.

Four states (issue 19), every array a separate CPU tensor or array:

1. 1,000 float32 tensors of 64 KiB (64 MiB);
2. 10,000 float32 tensors of 1 KiB (10 MiB);
3. 200 Python scalars and short strings (100 floats, 50 ints, 50 strings)
   and 50 small numpy arrays (16 to 4,096 elements of float32, float64,
   int64 and uint32);
4. 5 float32 tensors of 53 MB (265 MB; 1 MB = 10^6 bytes).

``--quick`` shrinks 1, 2 and 4 (100 x 64 KiB, 1,000 x 1 KiB, 5 x 4 MB).
Every tensor, array and scalar changes between two commits of a contender
(tensors and arrays ``+= 1`` in place, numbers + 1, strings rewritten).

Contenders, all durable (every file and the directory fsynced before the
commit counts as done), all overwriting their previous version in place:

- ``restartable``: a dataclass holding the dict, bound in
  ``Checkpoint(name, path=..., mode="overwrite")`` (``flush_interval=1``,
  ``durable=True``), committed by ``session.write(lead_time=i)``;
- ``restartable async``: the same with ``async_commit=True``; *blocking* is
  the time inside ``write()``, *durable* runs to the end of the
  ``flush(wait=True)`` after it;
- ``safetensors``: ``safetensors.torch.save_file`` of one file + fsync of the
  file and the directory. safetensors holds tensors only: in state 3 numbers
  become 0-d tensors (float64, int64), numpy arrays ``torch.from_numpy``
  views, strings go into the header's metadata; the conversions both ways
  are timed with it;
- ``torch.save``: one file (numpy arrays as ``torch.from_numpy`` views, so
  that ``torch.load(weights_only=True)`` accepts them) + fsync of the file and
  the directory;
- ``DCP``: ``torch.distributed.checkpoint.save`` (one process, no process
  group: ``no_dist=True``; its ``FileSystemWriter`` fsyncs its files) + an
  fsync of the directory, which DCP does not do. DCP pickles non-tensor
  values;
- ``DCP async``: ``dcp.async_save`` (default thread executor and stager);
  *blocking* is the call, *durable* runs to the end of ``future.result()``
  and the directory fsync;
- ``numpy``: ``numpy.save`` of each value into its own ``.npy`` file +
  fsync of each file + fsync of the directory (the naive baseline).

Measured, interleaved in one run: the state changes once per round, and
every round (one untimed warm-up round, then ``--repeats``) commits it with
every contender once, the contender that goes first rotating from round to
round, ``os.sync()`` (untimed) before each commit. restartable deletes a
retired row of 64 MiB or more on a helper thread after its commit returns;
that deletion is waited for, untimed, after the commit, so that it does not
land in the next contender's commit (``deferred_delete_median_s``). Every
contender then holds the same final state and restores it ``--repeats``
times *cold* (the pages of every file of its
checkpoint dropped with ``posix_fadvise(POSIX_FADV_DONTNEED)`` just before:
no root needed; directory entries and inodes stay cached) and ``--repeats``
times *warm*, rotating again. Restores: restartable ``select(-1)`` (reads
and verifies every file's size and xxh3 checksum) + entering the session +
binding a fresh instance; ``safe_open`` + ``get_tensor`` of every key (what
``load_file`` does; no checksums); ``torch.load(weights_only=True)``;
``dcp.load`` into freshly allocated tensors (the allocation is timed too);
``numpy.load`` of every file of the directory. Every restore's result is
compared bit for bit with the state (untimed), the async contenders' once.
Also reported: bytes on disk (``st_blocks * 512`` of the checkpoint's
files; for restartable its latest row, not the catalog's lock file) and the
files one commit writes.

Targets (issue 19), printed with ``ok`` / ``MISS`` and never asserted:
restartable / best peer (of safetensors, torch.save, DCP, numpy) <= 1.2 for
the durable commit and for the restore (cold and warm), <= 1.1 for bytes on
disk. Async blocking and time to durable are compared with DCP async for
information.

``--sweep`` measures the cost per array of restartable, of one file per
array (the numpy contender) and of an idealised pack (one file, tensors back
to back, xxh3 per tensor, index in memory) for arrays of 1 KiB to 16 MiB:
the data for choosing which arrays to pack. ``--profile`` prints cProfile
categories and top functions of one extra restartable commit and one warm
restore per state.

Usage::

    python benchmarks/bench_many_arrays.py                  # all four states (about 6 minutes on 2 cores)
    python benchmarks/bench_many_arrays.py --quick          # small sizes, 1 repeat: checks that it runs
    python benchmarks/bench_many_arrays.py --sweep          # cost per array by array size (about 2 minutes)
    python benchmarks/bench_many_arrays.py --states 2 --profile   # + cProfile of one restartable commit / restore
    python benchmarks/bench_many_arrays.py --json           # JSON on stdout, tables on stderr
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import cProfile
import ctypes
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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import xxhash
from _common import log, log_run_head, log_table_header, log_to_stderr, run_meta

from restartable import Checkpoint

try:
    import safetensors
    from safetensors import safe_open
    from safetensors.torch import save_file
except ImportError:  # the safetensors contender is skipped
    safetensors = None

COMMIT_TARGET = 1.2  # restartable commit time / best peer's, at most
RESTORE_TARGET = 1.2  # restartable restore time / best peer's, at most (cold and warm)
DISK_TARGET = 1.1  # restartable bytes on disk / best peer's, at most
KiB = 1 << 10
PAGE = 4096  # bytes; fault_in reads one byte per page
MB = 10**6


@dataclasses.dataclass
class Holder:
    """restartable's bound state: the dict of arrays (and scalars) as one field."""

    values: Any = None


# --------------------------------------------------------------------------- states


@dataclasses.dataclass
class StateSpec:
    key: str
    label: str
    build: Callable[[np.random.Generator], dict[str, Any]]


def tensors(count: int, nbytes: int) -> Callable[[np.random.Generator], dict[str, Any]]:
    def build(rng: np.random.Generator) -> dict[str, Any]:
        n = nbytes // 4
        return {f"t{i:05d}": torch.from_numpy(rng.random(n, dtype=np.float32)) for i in range(count)}

    return build


def mixed(rng: np.random.Generator) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for i in range(100):
        values[f"f{i:03d}"] = float(rng.standard_normal())
    for i in range(50):
        values[f"i{i:03d}"] = int(rng.integers(-(2**40), 2**40))
    for i in range(50):
        values[f"s{i:03d}"] = f"member-{i:03d}-step-0"
    dtypes = (np.float32, np.float64, np.int64, np.uint32)
    for i in range(50):
        n = int(rng.integers(16, 4097))
        dtype = dtypes[i % len(dtypes)]
        values[f"a{i:03d}"] = (
            rng.random(n).astype(dtype) if np.dtype(dtype).kind == "f" else rng.integers(0, 2**31, n).astype(dtype)
        )
    return values


def state_specs(quick: bool) -> dict[str, StateSpec]:
    many64 = 100 if quick else 1000
    many1 = 1000 if quick else 10000
    big = 4 * MB if quick else 53 * MB
    return {
        "1": StateSpec("1", f"{many64:,} tensors of 64 KiB", tensors(many64, 64 * KiB)),
        "2": StateSpec("2", f"{many1:,} tensors of 1 KiB", tensors(many1, KiB)),
        "3": StateSpec("3", "200 scalars/strings + 50 small arrays", mixed),
        "4": StateSpec("4", f"5 tensors of {big / MB:g} MB ({5 * big / MB:g} MB)", tensors(5, big)),
    }


def kind_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, np.ndarray):
        return "numpy"
    if isinstance(value, float):
        return "float"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "str"
    raise TypeError(f"unexpected value {type(value)}")


def mutate(values: dict[str, Any], tick: int) -> None:
    """Change every value: arrays and tensors in place (+1), numbers + 1, strings rewritten."""
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            value.add_(1)
        elif isinstance(value, np.ndarray):
            value += value.dtype.type(1)
        elif isinstance(value, str):
            values[key] = f"{value.rsplit('-', 1)[0]}-{tick}"
        else:
            values[key] = value + 1


def logical_bytes(values: dict[str, Any]) -> int:
    total = 0
    for value in values.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, str):
            total += len(value.encode())
        else:
            total += 8
    return total


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return np.array_equal(
        np.ascontiguousarray(a).reshape(-1).view(np.uint8), np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    )


def same_value(expected: Any, got: Any) -> bool:
    if isinstance(expected, torch.Tensor):
        return isinstance(got, torch.Tensor) and bits_equal(expected.numpy(), got.detach().cpu().numpy())
    if isinstance(expected, np.ndarray):
        return isinstance(got, np.ndarray) and bits_equal(expected, got)
    return type(got) is type(expected) and got == expected


def same_state(expected: dict[str, Any], got: Any) -> bool:
    """Bit for bit: the same keys, and every value of the same type, dtype, shape and bytes."""
    return (
        isinstance(got, dict)
        and got.keys() == expected.keys()
        and all(same_value(value, got[key]) for key, value in expected.items())
    )


# --------------------------------------------------------------------------- file helpers


# Copies of restartable.store.files' helpers on purpose: the baselines must not run the code under test.
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def drop_file_pages(files: list[Path]) -> None:
    """Drop the page-cache pages of ``files`` (clean ones: everything is fsynced before)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_usage(files: list[Path]) -> int:
    """Bytes allocated on disk (``st_blocks * 512``), each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in files:
        st = path.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fault_in(tensors: list[torch.Tensor], file_size: int) -> None:
    """Read one byte of every page under ``tensors``.

    safetensors maps its file and returns tensors over the mapping without
    reading them; the data is read (from the disk, when cold) at first use.
    This makes its restore read what the others read. The tensors of one
    file lie in its one mapping: one strided pass over their address span
    (at most the file's size, else tensor by tensor).
    """
    spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors if t.numel()]
    if not spans:
        return
    low, high = min(a for a, _ in spans), max(b for _, b in spans)
    if high - low <= file_size:
        view = np.frombuffer((ctypes.c_char * (high - low)).from_address(low), dtype=np.uint8)
        int(view[::PAGE].sum()) + int(view[-1])
    else:
        for t in tensors:
            int(t.reshape(-1).view(torch.uint8)[::PAGE].sum())


# --------------------------------------------------------------------------- contenders


class Contender:
    """One way of saving the state: ``commit`` returns (blocking s, durable s); ``restore`` the dict."""

    name = ""
    asynchronous = False
    timed_restore = True  # False: restored once to check it (same format as another contender)

    def __init__(self, root: Path, values: dict[str, Any], kinds: dict[str, str]) -> None:
        self.dir = root / self.name.replace(" ", "-").replace(".", "-")
        self.dir.mkdir()
        self.values = values
        self.kinds = kinds

    def open(self, stack: contextlib.ExitStack) -> None:
        pass

    def commit(self, tick: int) -> tuple[float, float]:
        start = time.perf_counter()
        self.save(tick)
        elapsed = time.perf_counter() - start
        return elapsed, elapsed

    def save(self, tick: int) -> None:
        raise NotImplementedError

    def restore(self) -> dict[str, Any]:
        raise NotImplementedError

    def commit_files(self) -> list[Path]:
        """The files that hold one commit (bytes on disk, files per commit)."""
        return files_under(self.dir)

    def all_files(self) -> list[Path]:
        """Every file a restore may read (their pages are dropped before a cold restore)."""
        return files_under(self.dir)


class RestartableSide(Contender):
    name = "restartable"

    def __init__(self, root: Path, values: dict[str, Any], kinds: dict[str, str]) -> None:
        super().__init__(root, values, kinds)
        self.checkpoint_name = f"many-arrays-{self.dir.name}"
        self.holder = Holder(values)
        self.session: Any = None
        self.profile: cProfile.Profile | None = None
        self.deferred_delete_s: list[float] = []

    def commit(self, tick: int) -> tuple[float, float]:
        times = super().commit(tick)
        self.settle_deletion()
        return times

    def settle_deletion(self) -> None:
        """Wait, untimed, for the deletion of the retired row that restartable leaves running after a commit.

        restartable deletes a retired row of 64 MiB or more on a helper thread
        (joined before its next commit writes): left running, it would
        overlap the next contender's commit here. Waited for through the
        writer's private ``_join_reaper`` when it has one; the wait is
        reported as ``deferred_delete_s`` (JSON).
        """
        writer = getattr(self.session.checkpoint, "_writer", None)
        join = getattr(writer, "_join_reaper", None)
        if join is not None:
            start = time.perf_counter()
            join()
            self.deferred_delete_s.append(time.perf_counter() - start)

    def _checkpoint(self, **options: Any) -> Checkpoint:
        return Checkpoint(self.checkpoint_name, path=self.dir, mode="overwrite", rank=0, world_size=1, **options)

    def open(self, stack: contextlib.ExitStack) -> None:
        self.session = stack.enter_context(self._checkpoint(flush_interval=1, async_commit=self.asynchronous))
        self.session.bind(self.holder)

    def save(self, tick: int) -> None:
        if self.profile is not None:
            self.profile.runcall(self.session.write, lead_time=tick)
        else:
            self.session.write(lead_time=tick)

    def restore(self) -> dict[str, Any]:
        def run() -> Any:
            session = self._checkpoint().select(-1)  # reads and verifies every file
            fresh = Holder()
            with session:
                session.bind(fresh)
            return fresh.values

        # A fresh context: a session leaves its bound states registered for the next session of its Checkpoint.
        return contextvars.copy_context().run(run)

    def commit_files(self) -> list[Path]:
        entry = self._checkpoint().catalog[-1]
        return files_under(Path(entry.path))


class RestartableAsyncSide(RestartableSide):
    name = "restartable async"
    asynchronous = True
    timed_restore = False

    def commit(self, tick: int) -> tuple[float, float]:
        start = time.perf_counter()
        self.session.write(lead_time=tick)
        blocked = time.perf_counter() - start
        self.session.flush(wait=True)
        done = time.perf_counter() - start
        self.settle_deletion()
        return blocked, done


class SafetensorsSide(Contender):
    name = "safetensors"

    def __init__(self, root: Path, values: dict[str, Any], kinds: dict[str, str]) -> None:
        super().__init__(root, values, kinds)
        self.path = self.dir / "state.safetensors"
        self.only_tensors = all(kind == "tensor" for kind in kinds.values())

    def save(self, tick: int) -> None:
        if self.only_tensors:
            save_file(self.values, self.path)
        else:
            tensors: dict[str, torch.Tensor] = {}
            metadata: dict[str, str] = {}
            for key, value in self.values.items():
                kind = self.kinds[key]
                if kind == "tensor":
                    tensors[key] = value
                elif kind == "numpy":
                    tensors[key] = torch.from_numpy(value)
                elif kind == "float":
                    tensors[key] = torch.tensor(value, dtype=torch.float64)
                elif kind == "int":
                    tensors[key] = torch.tensor(value, dtype=torch.int64)
                else:
                    metadata[key] = value
            save_file(tensors, self.path, metadata=metadata)
        fsync_file(self.path)
        fsync_dir(self.dir)

    def restore(self) -> dict[str, Any]:
        with safe_open(str(self.path), framework="pt") as fh:
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is no dict)
            metadata = fh.metadata() or {}
        fault_in(list(tensors.values()), self.path.stat().st_size)
        if self.only_tensors:
            return tensors
        out: dict[str, Any] = {}
        for key, kind in self.kinds.items():
            if kind == "tensor":
                out[key] = tensors[key]
            elif kind == "numpy":
                out[key] = tensors[key].numpy()
            elif kind == "float":
                out[key] = float(tensors[key].item())
            elif kind == "int":
                out[key] = int(tensors[key].item())
            else:
                out[key] = metadata[key]
        return out


class TorchSaveSide(Contender):
    name = "torch.save"

    def __init__(self, root: Path, values: dict[str, Any], kinds: dict[str, str]) -> None:
        super().__init__(root, values, kinds)
        self.path = self.dir / "state.pt"
        self.numpy_keys = [key for key, kind in kinds.items() if kind == "numpy"]

    def save(self, tick: int) -> None:
        obj = self.values
        if self.numpy_keys:  # torch.load(weights_only=True) refuses numpy arrays
            obj = dict(obj)
            for key in self.numpy_keys:
                obj[key] = torch.from_numpy(obj[key])
        with open(self.path, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.dir)

    def restore(self) -> dict[str, Any]:
        out = torch.load(self.path, weights_only=True)
        for key in self.numpy_keys:
            out[key] = out[key].numpy()
        return out


class DcpSide(Contender):
    name = "DCP"

    def __init__(self, root: Path, values: dict[str, Any], kinds: dict[str, str]) -> None:
        super().__init__(root, values, kinds)
        # What the application knows before loading (DCP loads in place): the tensors' shapes and dtypes.
        self.layout = {key: (tuple(v.shape), v.dtype) for key, v in values.items() if isinstance(v, torch.Tensor)}

    def save(self, tick: int) -> None:
        dcp.save(self.values, checkpoint_id=self.dir, no_dist=True)
        fsync_dir(self.dir)

    def restore(self) -> dict[str, Any]:
        target: dict[str, Any] = {key: None for key in self.kinds}
        for key, (shape, dtype) in self.layout.items():
            target[key] = torch.empty(shape, dtype=dtype)
        dcp.load(target, checkpoint_id=self.dir, no_dist=True)
        return target


class DcpAsyncSide(DcpSide):
    name = "DCP async"
    asynchronous = True
    timed_restore = False

    def commit(self, tick: int) -> tuple[float, float]:
        start = time.perf_counter()
        future = dcp.async_save(self.values, checkpoint_id=self.dir, no_dist=True)
        blocked = time.perf_counter() - start
        future.result()
        fsync_dir(self.dir)
        return blocked, time.perf_counter() - start


class NumpySide(Contender):
    name = "numpy"

    def save(self, tick: int) -> None:
        for key, value in self.values.items():
            array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            with open(self.dir / f"{key}.npy", "wb") as fh:
                np.save(fh, array)
                fh.flush()
                os.fsync(fh.fileno())
        fsync_dir(self.dir)

    def restore(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(os.listdir(self.dir)):
            key = name[: -len(".npy")]
            array = np.load(self.dir / name)
            kind = self.kinds[key]
            if kind == "tensor":
                out[key] = torch.from_numpy(array)
            elif kind == "numpy":
                out[key] = array
            elif kind == "float":
                out[key] = float(array)
            elif kind == "int":
                out[key] = int(array)
            else:
                out[key] = str(array)
        return out


class PackSide(Contender):
    """The sweep's lower bound of a pack: every tensor's bytes back to back in one file (64-byte aligned), with an
    xxh3 checksum per tensor, one fsync; restored with one read and sliced. Its index (key, offset, size,
    checksum) stays in memory: no manifest is written or read."""

    name = "pack"
    ALIGN = 64

    def __init__(self, root: Path, values: dict[str, Any], kinds: dict[str, str]) -> None:
        super().__init__(root, values, kinds)
        self.path = self.dir / "pack.bin"
        self.index: list[tuple[str, int, int, int, torch.dtype, tuple[int, ...]]] = []

    def save(self, tick: int) -> None:
        index = []
        offset = 0
        with open(self.path, "wb") as fh:
            for key, tensor in self.values.items():
                data = memoryview(tensor.numpy()).cast("B")
                pad = -offset % self.ALIGN
                if pad:
                    fh.write(bytes(pad))
                    offset += pad
                fh.write(data)
                index.append((key, offset, len(data), xxhash.xxh3_64_intdigest(data), tensor.dtype, tensor.shape))
                offset += len(data)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.dir)
        self.index = index

    def restore(self) -> dict[str, Any]:
        buf = bytearray(self.path.stat().st_size)
        with open(self.path, "rb", buffering=0) as fh:
            fh.readinto(buf)
        view = memoryview(buf)
        out = {}
        for key, offset, size, digest, dtype, shape in self.index:
            if xxhash.xxh3_64_intdigest(view[offset : offset + size]) != digest:
                raise RuntimeError(f"pack: checksum of {key} differs")
            count = size // torch.empty((), dtype=dtype).element_size()
            out[key] = torch.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
        return out


CONTENDERS: list[type[Contender]] = [
    RestartableSide,
    RestartableAsyncSide,
    SafetensorsSide,
    TorchSaveSide,
    DcpSide,
    DcpAsyncSide,
    NumpySide,
]


# --------------------------------------------------------------------------- profiling


# (category, substrings of "filename:funcname" of a pstats entry), first match wins.
PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("fsync", ("posix.fsync", "posix.fdatasync")),
    ("open/close", ("posix.open>", "posix.close>", "io.open>")),
    ("read/write", ("posix.write>", "posix.pwrite", "posix.read>", "posix.pread", "readinto", "'write' of",
                    "'read' of")),
    ("unlink/rmdir (retired row)", ("posix.unlink", "posix.rmdir", "shutil.py")),
    ("mkdir/rename/link/stat/list", ("posix.mkdir", "posix.rename", "posix.replace", "posix.link", "stat>", "scandir",
                                     "listdir")),
    ("hashing (xxhash)", ("xxh",)),
    ("manifest JSON", ("/json/", "_json")),
    (".npy headers (numpy format, ast)", ("_format_impl", "/ast.py", "builtins.compile")),
    ("pathlib", ("pathlib.py",)),
    ("threading", ("threading.py", "_thread.")),
    ("restartable codec", ("restartable/codec",)),
    ("restartable store", ("restartable/store/",)),
    ("restartable catalog", ("restartable/catalog/",)),
    ("numpy (other)", ("numpy",)),
    ("torch", ("torch",)),
]  # fmt: skip


def profile_report(label: str, prof: cProfile.Profile, top: int = 14) -> dict[str, Any]:
    stats = pstats.Stats(prof)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in entries.values())
    categories: dict[str, list[float]] = {}
    for (filename, _line, func), (_cc, ncalls, tt, _ct, _callers) in entries.items():
        text = f"{filename}:{func}"
        category = next((name for name, marks in PROFILE_CATEGORIES if any(m in text for m in marks)), "other Python")
        slot = categories.setdefault(category, [0.0, 0])
        slot[0] += tt
        slot[1] += ncalls
    log(f"\n--- profile: {label} (own time by category; total {total * 1e3:.0f} ms under cProfile) ---")
    for name, (tt, ncalls) in sorted(categories.items(), key=lambda item: -item[1][0]):
        log(f"  {name:<34} {tt * 1e3:9.1f} ms  {tt / total:6.1%}  {int(ncalls):>9,} calls")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    lines = [
        line
        for line in out.getvalue().strip().splitlines()
        if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced"))
    ]
    log(f"--- profile: {label}, top {top} functions by own time ---")
    for line in lines[1:]:
        log(line)
    return {
        "total_s": total,
        "categories": {name: {"own_s": tt, "calls": int(n)} for name, (tt, n) in categories.items()},
    }


# --------------------------------------------------------------------------- one state


def bench_state(
    spec: StateSpec, root: Path, repeats: int, profile: bool, classes: list[type[Contender]] | None = None
) -> dict[str, Any]:
    rng = np.random.default_rng(int.from_bytes(spec.key.encode(), "little") % 2**32)
    values = spec.build(rng)
    kinds = {key: kind_of(value) for key, value in values.items()}
    nbytes = logical_bytes(values)
    state_root = root / f"state{spec.key}"
    state_root.mkdir()
    if classes is None:
        classes = [c for c in CONTENDERS if safetensors is not None or c is not SafetensorsSide]
    sides = [cls(state_root, values, kinds) for cls in classes]
    names = [side.name for side in sides]
    blocking: dict[str, list[float]] = {name: [] for name in names}
    durable: dict[str, list[float]] = {name: [] for name in names}
    profiles: dict[str, Any] = {}
    rs = sides[0]
    assert isinstance(rs, RestartableSide)
    tick = 0

    def commit_phase() -> None:
        nonlocal tick
        with contextlib.ExitStack() as stack:
            for side in sides:
                side.open(stack)
            for rnd in range(repeats + 1):  # round 0: warm-up (first files, buffers, imports)
                tick += 1
                mutate(values, tick)  # every value changed since every side's previous commit
                shift = rnd % len(sides)
                for side in sides[shift:] + sides[:shift]:
                    os.sync()
                    blocked, done = side.commit(tick)
                    if rnd:
                        blocking[side.name].append(blocked)
                        durable[side.name].append(done)
                if rnd:
                    log(
                        f"  state {spec.key} round {rnd}: commit "
                        + ", ".join(f"{side.name} {durable[side.name][-1] * 1e3:.0f} ms" for side in sides)
                    )
            if profile:  # one more restartable commit, of the state every side holds (untimed, unchanged)
                os.sync()
                rs.profile = cProfile.Profile()
                rs.commit(tick)
                profiles["commit"] = rs.profile
                rs.profile = None
        # Leaving the stack closes the restartable sessions (waits for any persist, retired rows deleted).
        # Every side now holds the same, final state (checked on restore).

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns about running without a process group
        contextvars.copy_context().run(commit_phase)
        os.sync()

        disk = {side.name: disk_usage(side.commit_files()) for side in sides}
        files = {side.name: len(side.commit_files()) for side in sides}
        equal: dict[str, bool] = {}
        for side in sides:  # every side once, untimed: also reads everything in (warm)
            equal[side.name] = same_state(values, side.restore())
        readers = [side for side in sides if side.timed_restore]
        restore: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
        for cache in ("cold", "warm"):
            for rnd in range(repeats):
                shift = rnd % len(readers)
                for side in readers[shift:] + readers[:shift]:
                    if cache == "cold":
                        drop_file_pages(side.all_files())
                    gc.collect()
                    start = time.perf_counter()
                    restored = side.restore()
                    restore[cache].setdefault(side.name, []).append(time.perf_counter() - start)
                    equal[side.name] = equal[side.name] and same_state(values, restored)
                    del restored
        if profile:
            prof = cProfile.Profile()
            gc.collect()
            prof.runcall(rs.restore)
            profiles["restore"] = prof

    result: dict[str, Any] = {
        "state": spec.key,
        "label": spec.label,
        "values": len(values),
        "arrays": sum(kind in ("tensor", "numpy") for kind in kinds.values()),
        "bytes": nbytes,
        "contenders": {},
    }
    for side in sides:
        entry: dict[str, Any] = {
            "durable_s": durable[side.name],
            "durable_median_s": median(durable[side.name]),
            "disk_bytes": disk[side.name],
            "files": files[side.name],
            "restored_equal": equal[side.name],
        }
        if side.asynchronous:
            entry["blocking_s"] = blocking[side.name]
            entry["blocking_median_s"] = median(blocking[side.name])
        for cache in ("cold", "warm"):
            if side.name in restore[cache]:
                entry[f"restore_{cache}_s"] = restore[cache][side.name]
                entry[f"restore_{cache}_median_s"] = median(restore[cache][side.name])
        if isinstance(side, RestartableSide) and side.deferred_delete_s:
            entry["deferred_delete_median_s"] = median(side.deferred_delete_s)
        result["contenders"][side.name] = entry
    result["ratios"] = ratios(result["contenders"])
    if profile:
        result["profile"] = {
            "commit": profile_report(f"state {spec.key}, one restartable commit", profiles["commit"]),
            "restore": profile_report(f"state {spec.key}, one restartable restore (warm)", profiles["restore"]),
        }
    return result


SYNC_PEERS = ("safetensors", "torch.save", "DCP", "numpy")


def best_peer(contenders: dict[str, Any], key: str) -> tuple[str, float] | None:
    found = [(contenders[name][key], name) for name in SYNC_PEERS if name in contenders and key in contenders[name]]
    if not found:
        return None
    value, name = min(found)
    return name, value


def ratios(contenders: dict[str, Any]) -> list[dict[str, Any]]:
    rs = contenders["restartable"]
    out = []
    for measure, key, target in (
        ("commit (durable)", "durable_median_s", COMMIT_TARGET),
        ("restore, cold", "restore_cold_median_s", RESTORE_TARGET),
        ("restore, warm", "restore_warm_median_s", RESTORE_TARGET),
        ("bytes on disk", "disk_bytes", DISK_TARGET),
    ):
        best = best_peer(contenders, key)
        if best is None:
            continue
        value = rs[key] / best[1] if best[1] else float("inf")
        out.append({"measure": measure, "peer": best[0], "value": value, "target": target, "meets": value <= target})
    ra, da = contenders.get("restartable async"), contenders.get("DCP async")
    if ra is not None and da is not None:
        for measure, key in (("async blocking", "blocking_median_s"), ("async until durable", "durable_median_s")):
            out.append(
                {"measure": measure, "peer": "DCP async", "value": ra[key] / da[key], "target": None, "meets": None}
            )
    return out


# --------------------------------------------------------------------------- sweep

SWEEP_SIZES = (KiB, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 << 20, 4 << 20, 16 << 20)


def sweep(root: Path, repeats: int, quick: bool) -> list[dict[str, Any]]:
    """Per-array cost of restartable, one file per array (numpy.save + fsync) and one pack, by array size."""
    total, most = (8 << 20, 200) if quick else (64 << 20, 2000)
    results = []
    for size in SWEEP_SIZES:
        count = min(most, max(8, total // size))
        spec = StateSpec(f"sweep-{size}", f"{count:,} tensors of {size / KiB:g} KiB", tensors(count, size))
        log(f"  sweep: {spec.label} ...")
        result = bench_state(spec, root, repeats, False, [RestartableSide, NumpySide, PackSide])
        result["array_bytes"] = size
        result["count"] = count
        shutil.rmtree(root / f"state{spec.key}", ignore_errors=True)
        results.append(result)
    return results


def print_sweep(results: list[dict[str, Any]]) -> None:
    log()
    log("sweep: cost per array by array size (medians, microseconds per array); files = numpy.save + fsync per")
    log("array; pack = one file, arrays back to back, xxh3 per array, index kept in memory (no manifest)")
    sides = ("restartable", "numpy", "pack")
    header = (
        f"{'array':>7} {'arrays':>6} | {'commit: restartable':>19} {'files':>7} {'pack':>6} | "
        f"{'cold: restartable':>17} {'files':>6} {'pack':>5} | {'warm: restartable':>17} {'files':>6} {'pack':>5} | "
        f"{'files-pack':>10} {'restartable/pack':>16}"
    )
    log_table_header(header)
    for r in results:
        c, n, size = r["contenders"], r["count"], r["array_bytes"]
        per = {
            key: [c[side][f"{key}_median_s"] / n * 1e6 for side in sides]
            for key in ("durable", "restore_cold", "restore_warm")
        }
        shown = f"{size // KiB} KiB" if size < 1 << 20 else f"{size >> 20} MiB"
        commit, cold, warm = per["durable"], per["restore_cold"], per["restore_warm"]
        log(
            f"{shown:>7} {n:>6,} | {commit[0]:>19.0f} {commit[1]:>7.0f} {commit[2]:>6.0f} | "
            f"{cold[0]:>17.0f} {cold[1]:>6.0f} {cold[2]:>5.0f} | {warm[0]:>17.0f} {warm[1]:>6.0f} {warm[2]:>5.0f} | "
            f"{commit[1] - commit[2]:>10.0f} {commit[0] / commit[2]:>16.2f}"
        )
    log("files-pack: what a file of its own adds to an array's commit; restartable/pack: commit time ratio")


# --------------------------------------------------------------------------- report


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def print_state(result: dict[str, Any]) -> None:
    log()
    log(
        f"state {result['state']}: {result['label']} ({result['values']:,} values, {result['arrays']:,} arrays, "
        f"{result['bytes'] / MB:.2f} MB of data)"
    )
    header = (
        f"{'contender':<18} {'commit ms':>10} {'blocking ms':>12} {'restore cold ms':>16} {'restore warm ms':>16} "
        f"{'disk MB':>9} {'files':>7}  equal"
    )
    log_table_header(header)
    for name, c in result["contenders"].items():
        log(
            f"{name:<18} {fmt_ms(c['durable_median_s']):>10} {fmt_ms(c.get('blocking_median_s')):>12} "
            f"{fmt_ms(c.get('restore_cold_median_s')):>16} {fmt_ms(c.get('restore_warm_median_s')):>16} "
            f"{c['disk_bytes'] / MB:>9.3f} {c['files']:>7,}  {c['restored_equal']}"
        )
    deferred = result["contenders"]["restartable"].get("deferred_delete_median_s")
    if deferred is not None and deferred >= 5e-4:
        log(
            f"  (restartable left the deletion of its retired row to a helper thread: {deferred * 1e3:.1f} ms "
            "median, waited for untimed after its commit)"
        )
    for r in result["ratios"]:
        mark = "(info)" if r["meets"] is None else f"<= {r['target']}  {'ok' if r['meets'] else 'MISS'}"
        log(f"  restartable / {r['peer']:<11} {r['measure']:<20} {r['value']:>7.2f}x  {mark}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--states", default=None, help="comma-separated states to run (1-4); default all (none with --sweep)"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="per-array cost of restartable, one file per array and one pack, arrays of 1 KiB to 16 MiB",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement; default 3 (1 quick)")
    parser.add_argument("--quick", action="store_true", help="small states, 1 repeat: checks that everything runs")
    parser.add_argument(
        "--dir", default=None, help="parent directory of the scratch directory (default: the system temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile one extra restartable commit and one warm restore per state (untimed) and print the costs",
    )
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable results on stdout (the tables go to stderr)"
    )
    args = parser.parse_args(argv)
    if args.json:
        log_to_stderr()
    specs = state_specs(args.quick)
    states = args.states if args.states is not None else ("" if args.sweep else "1,2,3,4")
    chosen = [s.strip() for s in states.split(",") if s.strip()]
    for key in chosen:
        if key not in specs:
            parser.error(f"unknown state {key!r} (choose from 1,2,3,4)")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    if safetensors is None:
        log("safetensors is not installed (pip install safetensors): its column is skipped")

    root = Path(tempfile.mkdtemp(prefix="restartable-bench-many-", dir=args.dir))
    meta = {
        **run_meta(
            root,
            torch=torch.__version__,
            safetensors=getattr(safetensors, "__version__", None),
        ),
        "repeats": repeats,
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
        "targets": {"commit": COMMIT_TARGET, "restore": RESTORE_TARGET, "disk": DISK_TARGET},
    }
    log(
        f"bench_many_arrays: states {', '.join(chosen) or '-'}{' + sweep' if args.sweep else ''}, "
        f"{repeats} timed round(s) + 1 warm-up, in {root}"
    )
    started = time.perf_counter()
    results = []
    swept: list[dict[str, Any]] = []
    try:
        for key in chosen:
            log(f"  running state {key}: {specs[key].label} ...")
            state_started = time.perf_counter()
            results.append(bench_state(specs[key], root, repeats, args.profile))
            results[-1]["elapsed_s"] = time.perf_counter() - state_started
            if not args.keep:
                shutil.rmtree(root / f"state{key}", ignore_errors=True)
            gc.collect()
        if args.sweep:
            swept = sweep(root, repeats, args.quick)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    meta["elapsed_s"] = time.perf_counter() - started
    log_run_head(meta, f", median of {repeats} round(s); torch {torch.get_num_threads()} intra-op threads")
    log(
        "commit: durable (file(s) and directory fsynced); blocking: time inside write() / async_save(); "
        "restore cold: file pages dropped with posix_fadvise(DONTNEED)"
    )
    for result in results:
        print_state(result)
    if swept:
        print_sweep(swept)
    missed = sum(1 for r in results for x in r["ratios"] if x["meets"] is False)
    log()
    log(f"{missed} target(s) missed; elapsed {meta['elapsed_s']:.0f} s")
    if args.json:
        print(json.dumps({"benchmark": "many_arrays", "meta": meta, "results": results, "sweep": swept}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
