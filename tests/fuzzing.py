"""The machinery of the seeded fuzz suite (``tests/test_fuzz_stores.py``).

Everything a fuzz case needs apart from the tests themselves:

- the guards that watch a case: :class:`AuditRecorder` (a ``sys.addaudithook``
  hook, installed once per process, that records every path opened, listed,
  written, renamed or deleted while a case reads, and flags those outside
  the store), :func:`time_limit` (``SIGALRM``, so that a hang fails with the
  case id instead of stopping the run), :class:`Canary` (files next to the
  store whose bytes and inode times are compared after every case);
- the stores that are mutated: real rows committed through the public API
  (:func:`build_pristine`), hard-linked into every case, the row a case
  edits copied (:func:`populate`, :func:`own_row`);
- the mutations, one generator per category (:data:`MUTATORS`), each
  drawing everything from a ``random.Random`` seeded by the case id;
- :func:`run_case`, which copies the store, mutates it, runs every reader
  under the guards and returns what went wrong; :func:`draw_case`, which
  only mutates (to tell which kind of mutation a seed draws,
  :func:`mutation_kind`).

Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import faulthandler
import gzip
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import sys
import tarfile
import threading
import time
import traceback
import warnings
import zoneinfo
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import restartable
import restartable.cli
from restartable import (
    Checkpoint,
    CheckpointError,
    CheckpointFallbackWarning,
    bind_checkpoint_state,
)
from restartable.cli import main as cli_main
from restartable.iterators import IteratorCheckpoint
from restartable.remote.archive import extract_archive, write_archive
from restartable.store import open_row, scan_rows, verify_row
from restartable.store.files import checksum_bytes
from restartable.store.manifest import MANIFEST_NAME, dump_manifest
from support import assert_same

NAME = "fuzz"
ROWS = 3
CATEGORIES = ("manifest", "npy-header", "payload-body", "filesystem", "archive", "codec")

# --------------------------------------------------------------------------- the state


RECORD = np.dtype([("a", "<i4"), ("b", "<f8", (2,))])
# Arrays under this many bytes share a pack (RESTARTABLE_PACK_BELOW, set
# while cases run): every row then holds both kinds of payload file, ``.npy``
# files of their own (values, records; buffer, table) and a pack (scalar,
# empty, tensor, coords; flags), and both are mutated.
PACK_BELOW = "20"


@dataclasses.dataclass
class FuzzState:
    """What each row of the ``state`` store holds: arrays of several kinds, a tensor, codec values."""

    step: int = 0
    values: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(4))
    records: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2, dtype=RECORD))
    scalar: np.ndarray = dataclasses.field(default_factory=lambda: np.array(0, dtype=np.int16))
    empty: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3), dtype=np.complex64))
    tensor: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(3, dtype=torch.bfloat16))
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def state_for(k: int) -> FuzzState:
    return FuzzState(
        step=k,
        values=np.arange(4, dtype=np.float64) * 0.5 + k,
        records=np.array([(k, (1.5, -k)), (-k, (np.inf, 2.0))], dtype=RECORD),
        scalar=np.array(k, dtype=np.int16),
        empty=np.zeros((0, 3), dtype=np.complex64),
        tensor=torch.arange(3, dtype=torch.bfloat16) + k,
        extra={
            "when": dt.datetime(2024, 1, k, 6, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
            "span": dt.timedelta(days=k, microseconds=7),
            "half": np.float16(k / 2),
            "kind": np.dtype("<M8[ns]"),
            "tdtype": torch.float16,
            "big": 2**70 + k,
            "nan": float("nan"),
            "raw": bytes(range(k)),
            "pair": (k, "x"),
        },
    )


def metadata_for(k: int) -> dict[str, Any]:
    return {
        "lead_time": k,
        "note": f"row {k}",
        "coords": np.arange(3, dtype=np.int32) + k,  # a payload of the metadata
        "scale": np.float32(k) / 2,
        "when": dt.datetime(2024, 1, k, tzinfo=dt.timezone.utc),
    }


class ArrayStream:
    """A checkpointable iterator whose state holds arrays (the ``iterator`` store)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = iterator_state_for(0)

    def get_state(self) -> dict[str, Any]:
        return self.state

    def set_state(self, state: Any) -> None:
        self.state = state

    def __iter__(self) -> ArrayStream:
        return self

    def __next__(self) -> int:
        return int(self.state["position"])


def iterator_state_for(k: int) -> dict[str, Any]:
    return {
        "position": k,
        "buffer": np.arange(5, dtype=np.float32) * k,
        "table": np.array([(k, (0.0, 1.0))], dtype=RECORD),
        "seed": 2**65 + k,
        "flags": np.array([k % 2 == 0, True]),
    }


# --------------------------------------------------------------------------- guards: time


class CaseTimeout(BaseException):
    """A case ran past its time limit. A BaseException, so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float, case_id: str, soft: tuple[float, Callable[[Any], None]] | None = None) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread after ``seconds``; a last-resort dump after far longer.

    With ``soft=(after, callback)``, ``callback(frame)`` is called first,
    ``after`` seconds in, with the frame the main thread was in (it may
    unblock it; the hard limit still counts from the start). The timer of
    ``SIGALRM`` (pytest-timeout's, when it uses signals) is saved and
    re-armed with what was left of it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    phases = [soft] if soft is not None and soft[0] < seconds else []

    def on_alarm(signum: int, frame: Any) -> None:
        if phases:
            after, callback = phases.pop()
            signal.setitimer(signal.ITIMER_REAL, seconds - after)
            callback(frame)
            return
        raise CaseTimeout(f"{case_id} ran longer than {seconds} s")

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, phases[0][0] if phases else seconds)
    # If the case is stuck where no signal handler can run (inside C code),
    # dump every thread's stack and end the process rather than hang the run.
    faulthandler.dump_traceback_later(seconds * 10 + 60, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
        if old_delay:
            left = old_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), old_interval)


# --------------------------------------------------------------------------- guards: files


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _system_read_roots() -> list[str]:
    """What a reader may read outside the store: the interpreter's, the packages' and the time zones' files."""
    if not _SYSTEM_READ_ROOTS:
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *zoneinfo.TZPATH}
        roots.add(str(Path(restartable.__file__).resolve().parent.parent))  # the package's own sources
        roots.add(str(Path(__file__).resolve().parent))  # these tests' sources (tracebacks)
        roots.update(("/dev/null", "/dev/urandom", "/proc/self", f"/proc/{os.getpid()}", "/sys/devices/system/cpu"))
        _SYSTEM_READ_ROOTS.extend(sorted({os.path.realpath(r) for r in roots if r}))
    return _SYSTEM_READ_ROOTS


def _import_folders() -> set[str]:
    """The folders on ``sys.path`` (``""`` is the working directory), resolved."""
    return {os.path.realpath(entry or os.getcwd()) for entry in sys.path if isinstance(entry, str)}


# The audit events that name a path, with the positions of the path and of
# its dir_fd in the event's arguments, whether the event follows a link in
# the last component, and whether it writes.
_PATH_EVENTS: dict[str, list[tuple[int, int | None, bool, bool]]] = {
    "os.listdir": [(0, None, True, False)],
    "os.scandir": [(0, None, True, False)],
    "os.remove": [(0, 1, False, True)],
    "os.rmdir": [(0, 1, False, True)],
    "os.mkdir": [(0, 2, False, True)],
    "os.rename": [(0, 2, False, True), (1, 3, False, True)],
    "os.link": [(0, 2, True, True), (1, 3, False, True)],
    "os.symlink": [(1, 2, False, True)],
    "os.truncate": [(0, None, True, True)],
    # chmod/chown/utime: tarfile uses the l-variants on links; the canaries'
    # inode times catch any that followed a link out of the store.
    "os.chmod": [(0, 2, False, True)],
    "os.chown": [(0, 3, False, True)],
    "os.utime": [(0, 3, False, True)],
    "os.chdir": [(0, None, True, False)],
    "os.mkfifo": [(0, 2, False, True)],
    "os.mknod": [(0, 3, False, True)],
    "os.setxattr": [(0, None, True, True)],
    "os.removexattr": [(0, None, True, True)],
    "shutil.rmtree": [(0, 1, False, True)],
    "shutil.move": [(0, None, False, True), (1, None, False, True)],
    "shutil.copyfile": [(0, None, True, False), (1, None, True, True)],
    "shutil.copytree": [(0, None, True, False), (1, None, False, True)],
}
# Events that no reader may cause at all.
_FORBIDDEN_EVENTS = {
    "pickle.find_class",
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "ctypes.dlopen",
    "socket.connect",
    "socket.bind",
    "webbrowser.open",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_HOOK_LOCAL = threading.local()
_SYSTEM_READ_ROOTS: list[str] = []
_ACTIVE: AuditRecorder | None = None
_INSTALLED = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    recorder = _ACTIVE
    if recorder is None or recorder.paused:
        return
    if event != "open" and event not in _PATH_EVENTS and event not in _FORBIDDEN_EVENTS:
        return
    if getattr(_HOOK_LOCAL, "busy", False) or threading.get_ident() in recorder.bystanders:
        return
    _HOOK_LOCAL.busy = True
    try:
        recorder.on_event(event, args)
    except Exception as exc:  # an audit hook must never raise into the code it watches
        recorder.violations.append(f"the audit hook failed on {event} {args!r}: {exc!r}")
    finally:
        _HOOK_LOCAL.busy = False


def install_audit_hook() -> None:
    """Install the process-wide hook (once; a hook cannot be removed, so it idles between cases)."""
    global _INSTALLED
    if not _INSTALLED:
        sys.addaudithook(_hook)
        _INSTALLED = True


class AuditRecorder:
    """Records the file system events of one case and flags those outside ``allowed``.

    A path is judged where the operating system would take it: relative
    names are joined to the directory of their ``dir_fd`` (read from
    ``/proc/self/fd``; for ``open``, which does not report it, from the
    caller's local ``dir_fd``), intermediate links are resolved, and the
    last component is resolved only when the call follows links there (no
    ``O_NOFOLLOW``; never for remove, rename, mkdir). A path inside
    ``canary`` is always a violation; any other outside ``allowed`` is one
    too, except reads of the interpreter's and the package's own files.

    Two shortcuts keep it cheap (a case opens some 400 paths): a plain name
    opened with ``O_NOFOLLOW`` relative to a directory descriptor needs no
    look (that directory was judged when it was opened, inside the case),
    and an absolute path is judged once until something is renamed,
    removed or linked.
    """

    def __init__(self, allowed: list[Path | str], canary: Path | str) -> None:
        self.allowed = [os.path.realpath(a) for a in allowed]
        self.canary = os.path.realpath(canary)
        self.system = _system_read_roots()
        self.violations: list[str] = []
        self.events = 0
        self.paused = False
        self.judged: set[tuple[str, bool, bool]] = set()
        # Threads that ran before the case (an earlier test's lease heartbeat,
        # an S3 client's event loop): not the case's doing. Threads the case
        # starts are watched like its own.
        self.bystanders: frozenset[int] = frozenset()

    @contextlib.contextmanager
    def active(self) -> Iterator[AuditRecorder]:
        global _ACTIVE
        install_audit_hook()
        me = threading.get_ident()
        self.bystanders = frozenset(t.ident for t in threading.enumerate() if t.ident is not None and t.ident != me)
        previous, _ACTIVE = _ACTIVE, self
        try:
            yield self
        finally:
            _ACTIVE = previous

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        self.paused, was = True, self.paused
        try:
            yield
        finally:
            self.paused = was

    # ------------------------------------------------------------------ events

    def on_event(self, event: str, args: tuple[Any, ...]) -> None:
        self.events += 1
        if event in _FORBIDDEN_EVENTS:
            self.violations.append(f"forbidden event {event} {_short(args)}")
            return
        if event == "open":
            path, mode, flags = (*args, None, None, None)[:3]
            if isinstance(path, int) or path is None:
                return
            if not isinstance(path, str):
                path = os.fsdecode(os.fspath(path))
            flags = flags if isinstance(flags, int) and flags >= 0 else 0
            write = bool(flags & _WRITE_FLAGS) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            follow = not flags & _NOFOLLOW
            if path[:1] == os.sep:
                # The library opens its store's root by path again and again: judge each path once
                # (until something is renamed, removed or linked).
                key = (path, follow, write)
                if key not in self.judged:
                    self.judged.add(key)
                    self.judge(event, path, None, follow, write)
                return
            dir_fd = self._caller_dir_fd()
            if dir_fd is not None and os.sep not in path and path not in (".", ".."):
                # The common case, made cheap: a plain name in a directory the case opened (and
                # this hook judged) before. Opened without following a link, it cannot lead
                # out of that directory; otherwise only a link as that name can.
                if not follow:
                    return
                base = _fd_path(dir_fd)
                if base is not None:
                    real = base + os.sep + path
                    if follow and os.path.islink(real):
                        real = os.path.realpath(real)
                    self.classify(event, real, write, real)
                    return
            self.judge(event, path, dir_fd, follow, write)
            return
        if event in ("os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "shutil.rmtree", "shutil.move"):
            self.judged.clear()
        for path_at, fd_at, follow, write in _PATH_EVENTS[event]:
            path = args[path_at] if path_at < len(args) else None
            dir_fd = args[fd_at] if fd_at is not None and fd_at < len(args) else None
            if path is None and event in ("os.listdir", "os.scandir"):
                path = "."
            if isinstance(path, int):
                real = _fd_path(path)
                if real is not None:
                    self.classify(event, real, write)
                continue
            if path is None:
                continue
            self.judge(event, path, dir_fd if isinstance(dir_fd, int) else None, follow, write)

    @staticmethod
    def _caller_dir_fd() -> int | None:
        frame = sys._getframe(3)  # over this function, on_event and _hook
        while frame is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return None
        # The library names it dir_fd; shutil.rmtree (which opens subfolders by name) topfd or dirfd.
        local = frame.f_locals
        for name in ("dir_fd", "topfd", "dirfd"):
            if isinstance(local.get(name), int) and not isinstance(local.get(name), bool):
                return int(local[name])
        return None

    def judge(self, event: str, path: Any, dir_fd: int | None, follow: bool, write: bool) -> None:
        try:
            text = os.fsdecode(os.fspath(path))
        except TypeError:
            return
        if not os.path.isabs(text):
            base = _fd_path(dir_fd) if dir_fd is not None else os.getcwd()
            if base is None:
                self.violations.append(f"{event} of {text!r} relative to an unknown directory (fd {dir_fd})")
                return
            text = os.path.join(base, text)
        head, tail = os.path.split(text)
        if tail in ("", ".", ".."):
            real = os.path.realpath(text)
        else:
            real = os.path.join(os.path.realpath(head), tail)
            if follow and os.path.islink(real):
                real = os.path.realpath(real)
        self.classify(event, real, write, text)

    def classify(self, event: str, real: str, write: bool, given: str | None = None) -> None:
        if _under(real, self.canary):
            self.violations.append(f"{self._what(event, real, write, given)}: a canary outside the store")
            return
        if event == "os.listdir" and real in _import_folders():
            return  # the import system refilling its cache of a sys.path folder whose contents changed
        for root in self.allowed:
            if _under(real, root):
                return
        if not write and any(_under(real, root) for root in self.system):
            return
        self.violations.append(f"{self._what(event, real, write, given)}: outside the store")

    @staticmethod
    def _what(event: str, real: str, write: bool, given: str | None) -> str:
        shown = f"{given} -> {real}" if given and given != real else real
        return f"{event} ({'write' if write else 'read'}) of {shown}"


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Canary:
    """Files in a sibling directory of the stores, and their inode state.

    ``check`` compares every entry (kind, mode, size, inode, link count,
    mtime and ctime; ctime cannot be set back, so any write, chmod or
    rename shows) with the state recorded when they were made, and makes
    them again when anything differs.
    """

    def __init__(self, root: Path, pristine: Pristine) -> None:
        self.root = root
        self.pristine = pristine
        self.make()

    @property
    def secret(self) -> Path:
        """A well-formed ``.npy`` of the shape and dtype of payload 0, holding what an attacker wants restored."""
        return self.root / "secret.npy"

    @property
    def victim(self) -> Path:
        return self.root / "victim.txt"

    @property
    def row_copy(self) -> Path:
        """A copy of the newest row (same name, so its manifest is valid for it)."""
        return self.root / "row-copy"

    @property
    def linked_row(self) -> Path:
        """A copy of the newest row signed for :data:`LINKED_ROW_NAME`."""
        return self.root / "linked-row"

    @property
    def elsewhere(self) -> Path:
        """Another store (rows, a staging-like folder) for links to ``commits``, ``rank_*`` and trash folders."""
        return self.root / "elsewhere"

    @property
    def manifest_copy(self) -> Path:
        return self.root / "manifest-copy.json"

    def make(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        np.save(self.secret, np.full(4, -1.0))
        self.victim.write_text("precious\n")
        newest = self.pristine.store / "commits" / self.pristine.rows[-1]
        shutil.copytree(newest, self.row_copy)
        shutil.copytree(newest, self.linked_row)
        body = json.loads((newest / MANIFEST_NAME).read_bytes())["manifest"]
        body.update(sequence=int(LINKED_ROW_NAME[:12]), commit_id=LINKED_ROW_NAME)
        (self.linked_row / MANIFEST_NAME).write_bytes(dump_manifest(body))
        shutil.copyfile(newest / MANIFEST_NAME, self.manifest_copy)
        shutil.copytree(self.pristine.store / "commits", self.elsewhere / "commits")
        staging = self.elsewhere / ".staging-0123"
        staging.mkdir()
        (staging / "data").write_text("someone else's\n")
        (self.elsewhere / ".trash-0123").mkdir()
        (self.elsewhere / ".trash-0123" / "data").write_text("someone else's\n")
        self.baseline = self.snapshot()

    def snapshot(self) -> dict[str, tuple[int, ...]]:
        found: dict[str, tuple[int, ...]] = {}
        skip = len(str(self.root)) + 1
        for current, dirs, files in os.walk(self.root):
            for name in dirs + files:
                path = current + os.sep + name
                info = os.lstat(path)
                found[path[skip:]] = (
                    info.st_mode,
                    info.st_size,
                    info.st_ino,
                    info.st_nlink,
                    info.st_mtime_ns,
                    info.st_ctime_ns,
                )
        return found

    def check(self) -> list[str]:
        now = self.snapshot()
        if now == self.baseline:
            return []
        problems = []
        for name in sorted(set(now) | set(self.baseline)):
            if name not in now:
                problems.append(f"canary {name} was deleted")
            elif name not in self.baseline:
                problems.append(f"canary directory gained {name}")
            elif now[name] != self.baseline[name]:
                problems.append(f"canary {name} was changed (lstat {self.baseline[name]} -> {now[name]})")
        self.make()
        return problems


LINKED_ROW_NAME = "000000000009-" + "f" * 32


# --------------------------------------------------------------------------- pristine stores


@dataclasses.dataclass
class Pristine:
    """A store of committed rows, made once per process, hard-linked into every case."""

    flavor: str  # "state" (Checkpoint, bound dataclass) or "iterator" (IteratorCheckpoint)
    store: Path
    rows: list[str]  # row names, oldest first
    files: dict[str, bytes]  # relative path -> bytes, for every file of every row
    bodies: list[dict[str, Any]]  # the manifest bodies, oldest first
    by_row: dict[int, dict[str, bytes]] = dataclasses.field(default_factory=dict, repr=False)

    def row_files(self, index: int) -> dict[str, bytes]:
        """The files of row ``index`` by name (the caller must not change the dict)."""
        if index not in self.by_row:
            prefix = f"commits/{self.rows[index]}/"
            self.by_row[index] = {k[len(prefix) :]: v for k, v in self.files.items() if k.startswith(prefix)}
        return self.by_row[index]


def _collect(flavor: str, store: Path) -> Pristine:
    rows = sorted(os.listdir(store / "commits"))
    files = {}
    for row in rows:
        for name in sorted(os.listdir(store / "commits" / row)):
            files[f"commits/{row}/{name}"] = (store / "commits" / row / name).read_bytes()
    bodies = [json.loads(files[f"commits/{row}/{MANIFEST_NAME}"])["manifest"] for row in rows]
    return Pristine(flavor, store, rows, files, bodies)


def build_pristine(root: Path) -> tuple[Pristine, Pristine]:
    """The ``state`` store (``Checkpoint`` rows) and the ``iterator`` store (``IteratorCheckpoint`` rows)."""
    store = root / "state"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Checkpoint(NAME, path=store, mode="append") as session:
            state = bind_checkpoint_state(FuzzState())
            for k in range(1, ROWS + 1):
                for f in dataclasses.fields(FuzzState):
                    setattr(state, f.name, getattr(state_for(k), f.name))
                session.write(**metadata_for(k))
        it_store = root / "iterator"
        stream = ArrayStream()
        with IteratorCheckpoint(it_store) as checkpoint:
            for k in range(1, ROWS + 1):
                stream.state = iterator_state_for(k)
                checkpoint.save_to_directory(stream, step=k, keep=None, metadata={"epoch": k, "tag": "x"})
    state_pristine = _collect("state", store)
    iterator_pristine = _collect("iterator", it_store)
    for pristine in (state_pristine, iterator_pristine):
        assert len(pristine.rows) == ROWS, pristine.rows
        for body in pristine.bodies:
            suffixes = sorted({entry["name"].rsplit(".", 1)[-1] for entry in body["files"]})
            assert suffixes == ["bin", "npy"], f"every row must hold .npy payloads and a pack, not {suffixes}"
    return state_pristine, iterator_pristine


# --------------------------------------------------------------------------- editing rows


def read_body(row: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((row / MANIFEST_NAME).read_bytes())["manifest"]
    return body


def sign_raw(row: Path, data: bytes) -> None:
    """Write a manifest whose body is the exact bytes ``data``, with a matching checksum."""
    raw = b'{"checksum":"' + checksum_bytes(data).encode() + b'","manifest":' + data + b"}\n"
    _replace_file(row / MANIFEST_NAME, raw)


def write_body(row: Path, body: dict[str, Any], raw: dict[str, str] | None = None) -> None:
    """Sign ``body`` again; each string ``key`` of ``raw`` found in it is replaced by the raw JSON text ``raw[key]``."""
    if not raw:
        _replace_file(row / MANIFEST_NAME, dump_manifest(body))
        return
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    for key, text in raw.items():
        data = data.replace(json.dumps(key), text)
    sign_raw(row, data.encode("utf-8", "surrogatepass"))


def _replace_file(path: Path, data: bytes) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)


def resign_payload(row: Path, name: str) -> bool:
    """Record the current size and checksum of payload ``name`` in its row's manifest; whether it is listed."""
    body = read_body(row)
    data = (row / name).read_bytes()
    for entry in body["files"]:
        if entry["name"] == name:
            entry.update(size=len(data), checksum=checksum_bytes(data))
            write_body(row, body)
            return True
    return False


def npy_header_end(data: bytes) -> int:
    """Where the header of a pristine (version 1.0) ``.npy`` ends."""
    assert data[:6] == b"\x93NUMPY" and data[6] == 1, data[:10]
    return 10 + int.from_bytes(data[8:10], "little")


def npy_fields(data: bytes) -> dict[str, str]:
    """The descr, fortran_order and shape texts of a pristine header."""
    import ast

    header = ast.literal_eval(data[10 : npy_header_end(data)].decode("latin1"))
    return {
        "descr": repr(header["descr"]),
        "fortran_order": repr(header["fortran_order"]),
        "shape": repr(header["shape"]),
    }


def npy_header(text: str | bytes, version: tuple[int, int] = (1, 0), align: bool = True) -> bytes:
    body = text.encode("latin1" if version[0] < 3 else "utf-8") if isinstance(text, str) else text
    width = 2 if version[0] == 1 else 4
    if align:
        total = 6 + 2 + width + len(body) + 1
        body += b" " * (-total % 64) + b"\n"
    limit = 256**width
    length = min(len(body), limit - 1)
    return b"\x93NUMPY" + bytes(version) + length.to_bytes(width, "little") + body


# --------------------------------------------------------------------------- hostile values

HOSTILE_JSON: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    7,
    2**31,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    1.5,
    -0.0,
    1e308,
    "",
    "x",
    "0",
    "1",
    "-1",
    "null",
    "p000000.npy",
    "../../x.npy",
    "/etc/passwd",
    "a/b",
    ".",
    "..",
    "\x00",
    "\ud800",
    "\u202e",
    "\udcff",
    "é",
    "A" * 5000,
    [],
    {},
    [[]],
    [None, None],
    {"__t": "x"},
    {"__t": "dict"},
    {"__t": "ndarray", "i": 0},
    {"__t": "ndarray", "i": 99},
    {"a": 1},
    ["p000000.npy", 64, "0" * 16],
]
# Raw JSON texts a signer may put anywhere a value goes.
RAW_JSON = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1" + "0" * 5000,
    "1.0e-400",
    "[" * 1200 + "]" * 1200,
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    '{"a":1,"a":2}',
    '"\\ud800"',
    '"\\u0000"',
    '"\\udfff\\ud800"',
    "-0",
    "1E+2",
]
ODD_FILE_NAMES = [
    "",
    ".",
    "..",
    "./p000000.npy",
    "sub/p000000.npy",
    "../../x.npy",
    "/etc/passwd",
    "/dev/zero",
    "manifest.json",
    ".hidden",
    "p000000.npy/",
    "P000000.NPY",
    " p000000.npy",
    "p000000.npy\n",
    "p000000.npy\x00",
    "a\\b",
    "\u202ep000000.npy",
    "é.npy",
    "x" * 300,
    "\udcff",
    "-",
    "--help",
]
DESCRS = [
    "'<f8'",
    "'>f8'",
    "'<f4'",
    "'|u1'",
    "'<i8'",
    "'|b1'",
    "'<c16'",
    "'<f2'",
    "'<U1'",
    "'|S8'",
    "'|V8'",
    "'|O'",
    "'O'",
    "'<M8[ns]'",
    "'<m8[D]'",
    "'<M8'",
    "'<f16'",
    "'<c32'",
    "'f8'",
    "'d'",
    "'float64'",
    "'i'",
    "'<i0'",
    "'<i3'",
    "'<f99999999999999999999'",
    "'|S0'",
    "'V0'",
    "'<U0'",
    "'|S9223372036854775807'",
    "'<U4611686018427387904'",
    "[('a', '<i4'), ('b', '<f8', (2,))]",
    "[('a', '|O')]",
    "[('', '<i4')]",
    "[('a', '<i4'), ('a', '<i4')]",
    "[('a', '<f8', (1099511627776,))]",
    "[('a', '<f8', (-1,))]",
    "[('a', [('b', [('c', '<i4')])])]",
    "[('a', '<i4', (" + "1, " * 40 + "))]",
    "{'names': ['a'], 'formats': ['<i4']}",
    "{'names': ['a'], 'formats': ['|O']}",
    "('<i4', (2,))",
    "('|V8', [('a', '<i4')])",
    "b'<f8'",
    "1",
    "None",
    "'\\x00'",
    "'" + "a" * 3000 + "'",
    "[" * 400 + "]" * 400,
    "[('a', '<i4')] * 2",
    "__import__('os').getcwd()",
]
SHAPES = [
    "()",
    "(0,)",
    "(4,)",
    "(2, 2)",
    "(1,)",
    "(3,)",
    "(-1,)",
    "(4, -1)",
    "(18446744073709551616,)",
    "(4294967296, 4294967296)",
    "(9223372036854775807,)",
    "(9223372036854775808,)",
    "(3037000500, 3037000500)",
    "(0, 18446744073709551616)",
    "(1099511627776,)",
    "(0, -1)",
    "(4.0,)",
    "('4',)",
    "(True,)",
    "(None,)",
    "[4]",
    "4",
    "(" + "1, " * 33 + ")",
    "(" + "1, " * 64 + ")",
    "((4,),)",
    "(" * 300 + ")" * 300,
    "(2**64,)",
    "(4,) + (1,)",
]
FORTRAN = ["False", "True", "0", "1", "None", "'False'", "[]", "not False"]
HEADER_TEXTS = [
    "[]",
    "None",
    "'x'",
    "(1, 2)",
    "{}",
    "{'descr': '<f8'}",
    "__import__('os').system('true')",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), **{}}",
    "1e999",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,)} {}",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), 'descr': '|O'}",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), 'extra': 1}",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), 1: 2}",
    "{'descr': '<f8',\r\n'fortran_order': False,\t'shape': (4,), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }\x00",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), } # comment",
    "{'descr': '\u00e9', 'fortran_order': False, 'shape': (4,), }",
    '{"descr": "<f8", "fortran_order": false, "shape": [4]}',
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }" + " " * 70_000,
    "{'descr': '<f8', 'fortran_order': False, 'shape': " + "(" * 5000 + ")" * 5000 + "}",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,)",
    "{'descr': f'<f8', 'fortran_order': False, 'shape': (4,), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }".replace("'", '"'),
]
STRUCTURAL_BYTES = b"{}()[]',:\n\x00\\\" 0123456789-+.eEjJTFN#*_"
TYPE_NAMES = [
    "numpy.f2py.X",
    "numpy.f2py",
    "torch._dynamo.X",
    "torch.onnx.X",
    "torch._inductor.X",
    "os.system",
    "builtins.eval",
    "subprocess.Popen",
    "collections.OrderedDict",
    "fuzzing.FuzzState",
    "fuzzing.ArrayStream",
    "fuzzing.Nope",
    "test_fuzz_stores.X",
    "numpy.ndarray",
    "numpy.testing.X",
    "scipy.X",
    "antigravity.X",
    "this.X",
    "__main__.X",
    "a" * 1000,
    "",
    ".",
    "..X",
    "X.",
    12,
    None,
    ["fuzzing", "FuzzState"],
]
TORCH_DTYPE_NAMES = [
    "_dynamo",
    "onnx",
    "float32",
    "bfloat16",
    "float16",
    "int16",
    "uint8",
    "complex32",
    "qint8",
    "uint64",
    "bits8",
    "float8_e4m3fn",
    "__class__",
    "Tensor",
    "nn",
    "bool",
    "int8",
    "",
    12,
    None,
]
NP_DTYPE_DOCS: list[Any] = [
    "<f8",
    "|O",
    "O",
    [["a", "|O"]],
    "V0",
    "<U0",
    "<M8[as]",
    "(2,3)f8",
    "<f16",
    "numpy.float64",
    "f2py",
    [["a", "<i4"], ["a", "<i4"]],
    {"names": ["a"], "formats": ["|O"]},
    [["a", "<f8", [2**40]]],
    12,
    None,
    "",
    "<i" + "9" * 30,
]
ZONES = [
    "Europe/Paris",
    "UTC",
    "../../../etc/passwd",
    "/etc/localtime",
    "posix/Europe/Paris",
    "Europe/../../etc/passwd",
    "\x00",
    "a" * 1000,
    "",
    12,
    None,
]


def _codec_values() -> list[Any]:
    return (
        [
            {"__t": "dataclass", "type": name, "schema": None, "v": {}}
            for name in [*TYPE_NAMES[:12], 12, None, "fuzzing.FuzzState"]
        ]
        + [{"__t": "tensor", "dtype": name, "i": 4} for name in TORCH_DTYPE_NAMES]
        + [{"__t": "torch.dtype", "v": name} for name in TORCH_DTYPE_NAMES]
        + [{"__t": "np.dtype", "v": doc} for doc in NP_DTYPE_DOCS]
        + [
            {"__t": "np.scalar", "dtype": doc, "hex": h, "repr": "?"}
            for doc in ("<f8", "|O", "<f2", "<U2", [["a", "<i4"]], "V3", 7)
            for h in ("0000000000000000", "00", "zz", "", "0" * 100_001)
        ]
        + [{"__t": "datetime", "v": "2020-01-01T00:00:00", "fold": 0, "zone": zone} for zone in ZONES]
        + [
            {"__t": "datetime", "v": v, "fold": f}
            for v in ("2020-01-01T00:00:00", "not a date", "9999-99-99", 12, "2020-01-01T00:00:00+99:00")
            for f in (0, 1, 2, "0", None)
        ]
        + [{"__t": "int", "v": v} for v in ("1" + "0" * 5000, "12", "0x10", "1e5", " 1", "", 12, None, "١٢")]
        + [{"__t": "float", "v": v} for v in ("nan", "inf", "-inf", "1.5", "NaN", "nan(ind)", 1.5, None)]
        + [{"__t": "bytes", "v": v} for v in ("AAAA", "A", "====", "!!", "", 12, "A" * 100_001)]
        + [
            {"__t": "timedelta", "v": v}
            for v in ([1, 2, 3], [10**12, 0, 0], [-(10**12), 0, 0], [1, 2], "1 day", [1.5, 0, 0], [2**70, 0, 0])
        ]
        + [{"__t": "date", "v": v} for v in ("2020-01-01", "0000-01-01", 12)]
        + [{"__t": "time", "v": v, "fold": 0} for v in ("12:00:00", "25:00:00", 12)]
        + [{"__t": "tuple", "v": v} for v in ([], [1], "ab", None, {"a": 1})]
        + [{"__t": "torch.device", "v": v} for v in ("cpu", "cuda:99", "meta", "xla", "", 12, "mps")]
        + [{"__t": "torch.Size", "v": v} for v in ([1, 2], [-1], [2**70], "x", None)]
        + [{"__t": "ndarray", "i": i} for i in (0, 1, 4, 5, 99, -1, -6, True, "0", 1.0, None, 2**64)]
        + [{"__t": "tensor", "dtype": "bfloat16", "i": i} for i in (0, 1, 3, 4, 5, -1, 99)]
        + [
            {"__t": "dict", "items": items}
            for items in ([[1, 2]], [["a"]], [[{"__t": "ndarray", "i": 0}, 1]], [[[], 1]], [["a", 1], ["a", 2]], "x")
        ]
        + [{"__t": "dict", "v": v} for v in ({"a": 1}, [], None, {"__t": "x"})]
        + [{"__t": tag} for tag in ("dataclass", "tensor", "ndarray", "np.scalar", "datetime", "dict", "int", "bytes")]
        + [{"__t": t, "v": 1} for t in ("unknown", "__class__", "pickle", "", 12, None, "np.Scalar", "DICT")]
    )


CODEC_VALUES = _codec_values()


# --------------------------------------------------------------------------- a case


@dataclasses.dataclass
class Case:
    """One fuzz case: its id, the random source of its mutation, and what the mutation claims."""

    category: str
    flavor: str
    seed: int
    rng: random.Random = dataclasses.field(init=False)
    description: list[str] = dataclasses.field(default_factory=list)
    victim: int | None = None  # the row index the mutation damaged (None: none, or the store as a whole)
    must_detect: bool = False  # the damaged row must be refused (bytes changed unsigned, a link, a special file)
    store_level: bool = False  # the store as a whole may be refused (a CheckpointError from every reader)
    writer: str | None = None  # after reading, commit a row in this mode ("append" / "overwrite")
    archive: bool = False
    rows_removed: bool = False  # the mutation took the rows away (commits replaced): no good row is left
    outcomes: list[str] = dataclasses.field(default_factory=list)  # what the readers did (for tallies)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.category}/{self.flavor}/{self.seed}")

    @property
    def id(self) -> str:
        return f"{self.category}/{self.flavor}/{self.seed}"

    def note(self, text: str) -> None:
        self.description.append(text)


@dataclasses.dataclass
class Env:
    """Where a case runs: its copy of the store, a work folder, the shared canary."""

    pristine: Pristine
    canary: Canary
    case_dir: Path
    store: Path
    work: Path

    @property
    def rows(self) -> list[Path]:
        return [self.store / "commits" / name for name in self.pristine.rows]

    def payloads(self, index: int) -> list[str]:
        """The ``.npy`` payload files of row ``index``."""
        return [name for name in self.files(index) if name.endswith(".npy")]

    def packs(self, index: int) -> list[str]:
        """The pack files of row ``index``."""
        return [name for name in self.files(index) if name.endswith(".bin")]

    def files(self, index: int) -> list[str]:
        """Every payload file of row ``index`` (``.npy`` files and packs)."""
        return [entry["name"] for entry in self.pristine.bodies[index]["files"]]


# --------------------------------------------------------------------------- mutators: manifest


def _json_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths.extend(_json_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            paths.extend(_json_paths(value, (*prefix, index)))
    return paths


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _mutate_json(rng: random.Random, doc: Any, path: tuple[Any, ...], pool: list[Any], raw: dict[str, str]) -> str:
    """Apply one random edit at ``path`` of ``doc`` (which must not be the root); returns its description."""
    parent, key = _get(doc, path[:-1]), path[-1]
    op = rng.choice(["replace", "replace", "replace", "delete", "raw", "retype", "duplicate", "swap", "wrap"])
    if op == "delete":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
        return f"delete {path}"
    if op == "raw":
        sentinel = f"@@raw{len(raw)}@@"
        raw[sentinel] = rng.choice(RAW_JSON)
        parent[key] = sentinel
        return f"set {path} to raw {_short(raw[sentinel], 60)}"
    if op == "retype":
        value = parent[key]
        options = [str(value), [value], {"v": value}, None, bool(value) if not isinstance(value, bool) else 1]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            options += [float(value) if isinstance(value, int) else int(value), -value, value + 1, str(value)]
        if isinstance(value, str):
            options += [value.upper(), value + "x", value[:-1], value * 3, len(value)]
        parent[key] = rng.choice(options)
        return f"retype {path} to {_short(parent[key], 60)}"
    if op == "duplicate" and isinstance(parent, list):
        parent.insert(key, json.loads(json.dumps(parent[key])))
        return f"duplicate {path}"
    if op == "swap":
        others = [
            p for p in _json_paths(doc) if p and p != path and not _is_prefix(p, path) and not _is_prefix(path, p)
        ]
        if others:
            other = rng.choice(others)
            other_parent = _get(doc, other[:-1])
            parent[key], other_parent[other[-1]] = other_parent[other[-1]], parent[key]
            return f"swap {path} with {other}"
    if op == "wrap":
        parent[key] = rng.choice([[parent[key]], {"__t": "dict", "v": {"x": parent[key]}}, {"v": parent[key]}])
        return f"wrap {path}"
    parent[key] = json.loads(json.dumps(rng.choice(pool)))
    return f"set {path} to {_short(parent[key], 60)}"


def _is_prefix(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) <= len(b) and b[: len(a)] == a


def _pick_victim(case: Case, env: Env) -> int:
    """The newest row most of the time; sometimes an older one (the newer rows must then stay the restart point)."""
    victim = ROWS - 1 if case.rng.random() < 0.8 else case.rng.randrange(ROWS - 1)
    case.victim = victim
    own_row(env, victim)
    return victim


def populate(env: Env) -> None:
    """The case's store: the pristine rows hard-linked (cheap), the rest copied; see :func:`own_row`."""
    env.store.mkdir(parents=True)
    for name in os.listdir(env.pristine.store):
        if name != "commits":
            shutil.copyfile(env.pristine.store / name, env.store / name)
    (env.store / "commits").mkdir()
    for row in env.pristine.rows:
        (env.store / "commits" / row).mkdir()
        for file in os.listdir(env.pristine.store / "commits" / row):
            os.link(env.pristine.store / "commits" / row / file, env.store / "commits" / row / file)


def own_row(env: Env, index: int) -> None:
    """Give row ``index`` of the case its own copies of its files: editing them in place leaves the pristine alone."""
    for name, data in env.pristine.row_files(index).items():
        path = env.rows[index] / name
        path.unlink()
        path.write_bytes(data)


def _flip_file(case: Case, path: Path, start: int = 0, end: int | None = None) -> str:
    """An unsigned byte-level edit of ``path`` in [start, end): the bytes always change."""
    data = bytearray(path.read_bytes())
    rng = case.rng
    end = len(data) if end is None else min(end, len(data))
    op = rng.choice(["flip", "flip", "flip", "set", "truncate", "append", "insert", "delete", "zero"])
    if not data or end <= start:
        op = "append"
    if op == "flip":
        at = rng.randrange(start, end)
        bit = rng.randrange(8)
        data[at] ^= 1 << bit
        note = f"flip bit {bit} of byte {at}"
    elif op == "set":
        at = rng.randrange(start, end)
        new = rng.choice([b for b in range(256) if b != data[at]])
        data[at] = new
        note = f"set byte {at} to {new:#04x}"
    elif op == "truncate":
        at = rng.randrange(start, end)
        del data[at:]
        note = f"truncate at {at}"
    elif op == "append":
        extra = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 64, 4096])))
        data += extra
        note = f"append {len(extra)} bytes"
    elif op == "insert":
        at = rng.randrange(start, end + 1)
        data[at:at] = bytes([rng.randrange(256)])
        note = f"insert a byte at {at}"
    elif op == "delete":
        at = rng.randrange(start, end)
        length = rng.randint(1, min(16, end - at))
        del data[at : at + length]
        note = f"delete {length} bytes at {at}"
    else:
        at = rng.randrange(start, end)
        length = rng.randint(1, end - at)
        if not any(data[at : at + length]):
            data[at] ^= 0xFF
        else:
            data[at : at + length] = bytes(length)
        note = f"zero {length} bytes at {at}"
    with open(path, "r+b") as fh:  # in place: same inode
        fh.truncate(0)
        fh.write(data)
    return note


def mutate_manifest(case: Case, env: Env) -> None:
    rng = case.rng
    victim = _pick_victim(case, env)
    row = env.rows[victim]
    body = read_body(row)
    if rng.random() < 0.3:
        # Unsigned: the checksum no longer matches, or the framing broke.
        case.must_detect = True
        op = rng.random()
        if op < 0.75:
            case.note(f"manifest of row {victim}: " + _flip_file(case, row / MANIFEST_NAME))
        elif op < 0.85:
            other = rng.choice([i for i in range(ROWS) if i != victim])
            shutil.copyfile(env.rows[other] / MANIFEST_NAME, row / MANIFEST_NAME)
            case.note(f"manifest of row {victim} replaced by row {other}'s")
        elif op < 0.95:
            text = (row / MANIFEST_NAME).read_bytes()
            _replace_file(row / MANIFEST_NAME, text.replace(b'"manifest":', b'"manifest": ', 1))
            case.note(f"manifest of row {victim}: a space before the body, checksum unchanged")
        else:
            _replace_file(row / MANIFEST_NAME, b"")
            case.note(f"manifest of row {victim} emptied")
        return
    raw: dict[str, str] = {}
    files = body["files"]
    op = rng.random()
    if op < 0.35:
        # The files list: names, sizes, checksums, order.
        index = rng.randrange(len(files))
        entry = files[index]
        what = rng.choice(["name", "name", "size", "checksum", "entry", "order", "extra", "drop"])
        if what == "name":
            entry["name"] = rng.choice(ODD_FILE_NAMES + [f["name"] for f in files])
            if rng.random() < 0.3 and isinstance(entry["name"], str) and "/" in entry["name"].strip("/."):
                # The named file exists (in a subfolder of the row), as an attacker would arrange.
                target = row / entry["name"]
                with contextlib.suppress(OSError):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(row / files[(index + 1) % len(files)]["name"], target)
        elif what == "size":
            entry["size"] = rng.choice(
                [entry["size"] + 1, entry["size"] - 1, 0, 2**63, 2**64, -(2**63), 1e20, float(entry["size"]), True]
            )
        elif what == "checksum":
            entry["checksum"] = rng.choice(
                [
                    entry["checksum"].upper(),
                    entry["checksum"][:15],
                    "g" * 16,
                    files[(index + 1) % len(files)]["checksum"],
                ]
            )
        elif what == "entry":
            case.note(
                f"files[{index}]: "
                + _mutate_json(rng, body, ("files", index, rng.choice(list(entry))), HOSTILE_JSON, raw)
            )
        elif what == "order":
            other = rng.randrange(len(files))
            files[index], files[other] = files[other], files[index]
            # Sizes of a swapped pair differ unless the payloads do too: make them match so the reader must look.
            if rng.random() < 0.5:
                files[index]["name"], files[other]["name"] = files[other]["name"], files[index]["name"]
        elif what == "extra":
            stray = f"p{len(files) + rng.randrange(3):06d}.npy"
            data = env.pristine.row_files(victim)[rng.choice(env.files(victim))]
            (row / stray).write_bytes(data)
            files.append({"name": stray, "size": len(data), "checksum": checksum_bytes(data)})
        else:
            files.pop(index)
        case.note(f"files[{index}] {what} edited, re-signed")
    elif op < 0.75:
        # Any top-level field (but the states and metadata documents, which the codec category edits).
        keys = [k for k in body if k not in ("states", "metadata", "files")]
        key = rng.choice(keys)
        pool = [*HOSTILE_JSON, ROWS, ROWS + 1, 10**12, 10**12 - 1, "restartable-row", "restartable-save", 2, 0]
        case.note(_mutate_json(rng, body, (key,), pool, raw) + ", re-signed")
    elif op < 0.9:
        # Anywhere at all, states and metadata included.
        path = rng.choice([p for p in _json_paths(body) if p])
        case.note(_mutate_json(rng, body, path, HOSTILE_JSON, raw) + ", re-signed")
    else:
        # Not an object, or an object that is not a manifest.
        replacement = rng.choice([[], None, 1, "x", {}, {"format": "restartable-row"}, [body]])
        body = replacement  # type: ignore[assignment]
        case.note(f"body replaced by {_short(replacement, 40)}, re-signed")
    if isinstance(body, dict):
        write_body(row, body, raw)
    else:
        sign_raw(row, json.dumps(body).encode())


# --------------------------------------------------------------------------- mutators: .npy header and body


def _pick_payload(case: Case, env: Env, victim: int) -> tuple[Path, bytes]:
    name = case.rng.choice(env.payloads(victim))
    path = env.rows[victim] / name
    return path, path.read_bytes()


def _finish_payload(case: Case, env: Env, victim: int, path: Path, data: bytes, sign_probability: float) -> None:
    original = env.pristine.row_files(victim)[path.name]
    if data == original:
        # The edit happened to change nothing: make it change one byte, so the case is never a no-op.
        data = bytes([data[0] ^ 0x01]) + data[1:]
    with open(path, "r+b") as fh:
        fh.truncate(0)
        fh.write(data)
    if case.rng.random() < sign_probability:
        resign_payload(env.rows[victim], path.name)
        case.note("re-signed")
    else:
        case.must_detect = True
        case.note("not re-signed")


def mutate_npy_header(case: Case, env: Env) -> None:
    rng = case.rng
    victim = _pick_victim(case, env)
    path, data = _pick_payload(case, env, victim)
    end = npy_header_end(data)
    body = data[end:]
    fields = npy_fields(data)
    op = rng.random()
    if op < 0.3:
        new = bytearray(data)
        at = rng.randrange(end)
        if rng.random() < 0.6:
            bit = rng.randrange(8)
            new[at] ^= 1 << bit
            case.note(f"{path.name}: flip bit {bit} of header byte {at}")
        else:
            new[at] = rng.choice(STRUCTURAL_BYTES)
            case.note(f"{path.name}: header byte {at} set to {bytes([new[at]])!r}")
        data = bytes(new)
    elif op < 0.4:
        length = rng.choice([0, 1, end - 11, end - 9, end + 1, end + 100, 65535, 118, 119, 117, 256, len(data)])
        data = data[:8] + (length & 0xFFFF).to_bytes(2, "little") + data[10:]
        case.note(f"{path.name}: header length field set to {length & 0xFFFF}")
    elif op < 0.47:
        version = rng.choice([(2, 0), (3, 0), (0, 0), (255, 255), (1, 1), (4, 0), (1, 255)])
        data = data[:6] + bytes(version) + data[8:]
        case.note(f"{path.name}: version bytes set to {version}")
    elif op < 0.52:
        magic = rng.choice([b"\x93NUMPZ", b"\x00NUMPY", b"PK\x03\x04\x00\x00", b"\x80\x04\x95NUMP", b"\x93numpy"])
        data = magic + data[6:]
        case.note(f"{path.name}: magic set to {magic!r}")
    else:
        # A new header text: replaced fields, or a different document.
        text_fields = dict(fields)
        what = rng.choice(["descr", "descr", "shape", "shape", "fortran_order", "text", "several"])
        if what in ("descr", "several"):
            text_fields["descr"] = rng.choice(DESCRS)
        if what in ("shape", "several"):
            text_fields["shape"] = rng.choice(SHAPES)
        if what in ("fortran_order", "several"):
            text_fields["fortran_order"] = rng.choice(FORTRAN)
        if what == "text":
            text = rng.choice(HEADER_TEXTS)
        else:
            text = "{" + "".join(f"'{k}': {v}, " for k, v in text_fields.items()) + "}"
        version = rng.choice([(1, 0), (1, 0), (1, 0), (2, 0), (3, 0)])
        align = rng.random() < 0.8
        try:
            header = npy_header(text, version, align)
        except UnicodeEncodeError:
            header = npy_header(text.encode("utf-8"), version, align)
        if len(text) >= 65000 and version == (1, 0):
            version = (2, 0)
            header = npy_header(text, version, align)
        body_op = rng.choice(["keep", "keep", "fit", "fit", "empty", "double"])
        if body_op == "fit":
            body = _fit_body(text_fields, body, rng)
        elif body_op == "empty":
            body = b""
        elif body_op == "double":
            body = body * 2
        data = header + body
        case.note(f"{path.name}: header {what} -> {_short(text, 90)} v{version}, aligned={align}, body {body_op}")
    _finish_payload(case, env, victim, path, data, sign_probability=0.7)


def _fit_body(fields: dict[str, str], body: bytes, rng: random.Random) -> bytes:
    """A body as long as the header's descr and shape say, when that is small; else the old body."""
    import ast

    try:
        descr = ast.literal_eval(fields["descr"])
        shape = ast.literal_eval(fields["shape"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dtype = np.dtype(descr)
        count = 1
        for n in shape:
            count *= int(n)
        size = count * dtype.itemsize
    except Exception:
        return body
    if not 0 <= size <= 1 << 16:
        return body
    return (
        bytes(rng.randrange(256) for _ in range(size))
        if rng.random() < 0.3
        else (body * (size // max(len(body), 1) + 1))[:size]
    )


def mutate_pack(case: Case, env: Env, victim: int) -> None:
    """A pack's bytes (raw arrays and padding, no header): flips, cuts, extensions, another pack's bytes."""
    rng = case.rng
    path = env.rows[victim] / rng.choice(env.packs(victim))
    data = path.read_bytes()
    op = rng.random()
    if op < 0.5 and data:
        case.note(f"{path.name}: " + _flip_file(case, path))
        data = path.read_bytes()
    elif op < 0.62:
        data = data[: rng.randrange(len(data))] if data else b"\x00"
        case.note(f"{path.name}: cut to {len(data)} bytes")
    elif op < 0.72:
        data = data + bytes(rng.choice([1, 8, 64, 4096]))
        case.note(f"{path.name}: extended to {len(data)} bytes")
    elif op < 0.82:
        data = bytes(rng.randrange(256) for _ in range(len(data))) or b"\x01"
        case.note(f"{path.name}: random bytes of the same length")
    elif op < 0.92:
        other_row = rng.choice([i for i in range(ROWS) if i != victim])
        data = env.pristine.row_files(other_row)[rng.choice(env.packs(other_row))]
        case.note(f"{path.name}: replaced by row {other_row}'s pack")
    else:
        data = b""
        case.note(f"{path.name}: emptied")
    _finish_payload(case, env, victim, path, data, sign_probability=0.5)


def mutate_payload_body(case: Case, env: Env) -> None:
    rng = case.rng
    victim = _pick_victim(case, env)
    if rng.random() < 0.4:
        mutate_pack(case, env, victim)
        return
    path, data = _pick_payload(case, env, victim)
    end = npy_header_end(data)
    op = rng.random()
    if op < 0.55 and len(data) > end:
        with open(path, "r+b") as fh:
            fh.write(data)
        case.note(f"{path.name}: " + _flip_file(case, path, start=end))
        data = path.read_bytes()
    elif op < 0.65:
        data = data[: rng.randrange(end, len(data) + 1)] if len(data) > end else data + b"\x00"
        case.note(f"{path.name}: body cut to {len(data) - end} bytes")
    elif op < 0.72:
        data = data + bytes(rng.choice([1, 8, 16, 4096]))
        case.note(f"{path.name}: body extended to {len(data) - end} bytes")
    elif op < 0.8:
        other_row = rng.choice([i for i in range(ROWS) if i != victim])
        name = rng.choice(env.payloads(other_row))
        data = env.pristine.row_files(other_row)[name]
        case.note(f"{path.name}: replaced by row {other_row}'s {name}")
    elif op < 0.86:
        name = rng.choice(env.payloads(victim))
        data = env.pristine.row_files(victim)[name]
        case.note(f"{path.name}: replaced by {name} of the same row")
    elif op < 0.92:
        data = bytes(rng.randrange(256) for _ in range(len(data)))
        case.note(f"{path.name}: random bytes of the same length")
    elif op < 0.96:
        data = b""
        case.note(f"{path.name}: emptied")
    else:
        # Sparse and huge: the size check must refuse it without reading it.
        size = rng.choice([1 << 26, 1 << 40])
        with open(path, "r+b") as fh:
            fh.truncate(size)
        case.note(f"{path.name}: extended sparsely to {size} bytes, not re-signed")
        case.must_detect = True
        return
    _finish_payload(case, env, victim, path, data, sign_probability=0.5)


# --------------------------------------------------------------------------- mutators: codec documents


def mutate_codec(case: Case, env: Env) -> None:
    rng = case.rng
    victim = _pick_victim(case, env)
    row = env.rows[victim]
    body = read_body(row)
    raw: dict[str, str] = {}
    roots = [("states", i, "value") for i in range(len(body["states"]))] + [("metadata",)]
    if rng.random() < 0.15:
        # The state record around the document.
        index = rng.randrange(len(body["states"]))
        record = body["states"][index]
        key = rng.choice(["id", "schema", "level", "value", "value"])
        pool = HOSTILE_JSON + TYPE_NAMES + ["iterator", "fuzzing.FuzzState"]
        if key not in record:
            record[key] = rng.choice(pool)
            case.note(f"states[{index}].{key} added")
        else:
            case.note(_mutate_json(rng, body, ("states", index, key), pool, raw))
    else:
        root = rng.choice(roots)
        inside = [p for p in _json_paths(_get(body, root)) if p]
        target = root + rng.choice(inside) if inside and rng.random() < 0.85 else root
        if rng.random() < 0.6:
            value = json.loads(json.dumps(rng.choice(CODEC_VALUES)))
            parent = _get(body, target[:-1])
            parent[target[-1]] = value
            case.note(f"set {target} to {_short(value, 90)}")
        else:
            case.note(_mutate_json(rng, body, target, HOSTILE_JSON + CODEC_VALUES, raw))
        if rng.random() < 0.1:
            depth = rng.choice([100, 600, 3000])
            sentinel = "@@deep@@"
            raw[sentinel] = '{"__t":"tuple","v":[' * depth + "1" + "]}" * depth
            with contextlib.suppress(LookupError, TypeError):
                _get(body, target[:-1])[target[-1]] = sentinel
                case.note(f"and nested {depth} tuples deep")
    case.note("re-signed")
    write_body(row, body, raw)


# --------------------------------------------------------------------------- mutators: the file system


def _rel(path: Path, target: Path) -> str:
    return os.path.relpath(target, path.parent)


def _replace_by_link(path: Path, target: str | Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(target, path)


def _replace_by_special(path: Path, kind: str) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
        (path / "inside").write_bytes(b"x" * 8)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.bind(str(path))
            except OSError:  # a path too long for a socket address
                os.mkfifo(path)
    elif kind == "file":
        path.write_bytes(b"not what it should be\n")
    else:
        raise ValueError(kind)


def mutate_filesystem(case: Case, env: Env) -> None:
    rng = case.rng
    canary = env.canary
    victim = ROWS - 1
    own_row(env, victim)
    row = env.rows[victim]
    payload = row / rng.choice(env.files(victim))
    ops: list[tuple[str, Callable[[], None]]] = []

    def payload_link(target: str | Path, resign: bool = False) -> Callable[[], None]:
        def apply() -> None:
            _replace_by_link(payload, target)
            if resign and os.path.isfile(payload):
                data = Path(os.path.realpath(payload)).read_bytes()
                body = read_body(row)
                for entry in body["files"]:
                    if entry["name"] == payload.name:
                        entry.update(size=len(data), checksum=checksum_bytes(data))
                write_body(row, body)

        return apply

    def at(path: Path, action: Callable[[Path], None]) -> Callable[[], None]:
        return lambda: action(path)

    manifest = row / MANIFEST_NAME
    commits = env.store / "commits"
    ops += [
        ("payload -> canary (absolute), re-signed", payload_link(canary.secret, resign=True)),
        ("payload -> canary (relative), re-signed", payload_link(_rel(payload, canary.secret), resign=True)),
        ("payload -> canary (absolute)", payload_link(canary.secret)),
        ("payload -> itself", payload_link(payload.name)),
        ("payload -> /dev/zero", payload_link("/dev/zero")),
        ("payload -> /dev/urandom", payload_link("/dev/urandom")),
        ("payload -> /dev/null", payload_link("/dev/null")),
        ("payload -> /etc/passwd", payload_link("/etc/passwd")),
        ("payload -> dangling", payload_link("does-not-exist.npy")),
        ("payload -> another payload of the row", payload_link(rng.choice(env.files(victim)))),
        (
            "payload -> the same payload of the previous row",
            payload_link(f"../{env.pristine.rows[victim - 1]}/{payload.name}"),
        ),
        ("payload is a FIFO", at(payload, lambda p: _replace_by_special(p, "fifo"))),
        ("payload is a directory", at(payload, lambda p: _replace_by_special(p, "dir"))),
        ("payload is a socket", at(payload, lambda p: _replace_by_special(p, "socket"))),
        ("payload deleted", lambda: payload.unlink()),
        ("manifest -> canary copy", at(manifest, lambda p: _replace_by_link(p, canary.manifest_copy))),
        (
            "manifest -> canary copy (relative)",
            at(manifest, lambda p: _replace_by_link(p, _rel(p, canary.manifest_copy))),
        ),
        ("manifest -> /dev/zero", at(manifest, lambda p: _replace_by_link(p, "/dev/zero"))),
        ("manifest -> itself", at(manifest, lambda p: _replace_by_link(p, MANIFEST_NAME))),
        ("manifest is a FIFO", at(manifest, lambda p: _replace_by_special(p, "fifo"))),
        ("manifest is a directory", at(manifest, lambda p: _replace_by_special(p, "dir"))),
        ("manifest deleted", lambda: manifest.unlink()),
        ("row -> canary copy of the row", at(row, lambda p: _replace_by_link(p, canary.row_copy))),
        ("row -> canary copy (relative)", at(row, lambda p: _replace_by_link(p, _rel(p, canary.row_copy)))),
        ("row is a regular file", at(row, lambda p: _replace_by_special(p, "file"))),
        ("row is a FIFO", at(row, lambda p: _replace_by_special(p, "fifo"))),
        ("row emptied", lambda: [f.unlink() for f in row.iterdir()] and None),
    ]
    # Store-level: the store as a whole may be refused.
    store_ops: list[tuple[str, Callable[[], None]]] = [
        ("commits -> canary store's commits", at(commits, lambda p: _replace_by_link(p, canary.elsewhere / "commits"))),
        ("commits is a regular file", at(commits, lambda p: _replace_by_special(p, "file"))),
        ("commits is a FIFO", at(commits, lambda p: _replace_by_special(p, "fifo"))),
        ("commits -> /dev/zero", at(commits, lambda p: _replace_by_link(p, "/dev/zero"))),
        ("rank_000001 -> canary store", lambda: os.symlink(canary.elsewhere, env.store / "rank_000001")),
        ("rank_000000 -> canary store", lambda: os.symlink(canary.elsewhere, env.store / "rank_000000")),
        (".lock -> canary victim", at(env.store / ".lock", lambda p: _replace_by_link(p, canary.victim))),
        (".lock is a FIFO", at(env.store / ".lock", lambda p: _replace_by_special(p, "fifo"))),
        (".lock is a directory", at(env.store / ".lock", lambda p: _replace_by_special(p, "dir"))),
    ]
    # The store's other entries: ignored or cleaned up, never followed; every row stays good.
    benign_ops: list[tuple[str, Callable[[], None]]] = [
        (
            "newer row name -> canary row signed for it",
            at(commits / LINKED_ROW_NAME, lambda p: os.symlink(canary.linked_row, p)),
        ),
        ("HEAD -> /dev/zero", lambda: os.symlink("/dev/zero", env.store / "HEAD")),
        ("HEAD is a FIFO", lambda: os.mkfifo(env.store / "HEAD")),
        ("HEAD -> canary", lambda: os.symlink(canary.victim, env.store / "HEAD")),
        (".trash-x -> canary store", lambda: os.symlink(canary.elsewhere, env.store / ".trash-x")),
        (".trash-x is a FIFO", lambda: os.mkfifo(env.store / ".trash-x")),
        (".staging-x is a FIFO", lambda: os.mkfifo(env.store / ".staging-x")),
        (".trash-x is a socket", at(env.store / ".trash-x", lambda p: _replace_by_special(p, "socket"))),
        (
            ".staging-x -> canary staging",
            lambda: os.symlink(canary.elsewhere / ".staging-0123", env.store / ".staging-x"),
        ),
        (
            ".trash-x holds a link to the canary",
            lambda: ((env.store / ".trash-x").mkdir(), os.symlink(canary.elsewhere, env.store / ".trash-x" / "link")),
        ),
        (
            ".staging-x holds a FIFO and a link out",
            lambda: (
                (env.store / ".staging-x").mkdir(),
                os.mkfifo(env.store / ".staging-x" / "fifo"),
                os.symlink(canary.victim, env.store / ".staging-x" / "p000000.npy"),
            ),
        ),
    ]
    # Odd names and strays: nothing but the names of good rows should matter.
    hexes = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    odd_names = [
        f"{10**12 - 1:012d}-{hexes}",
        f"{10**12:013d}-{hexes}",
        f"{ROWS + 1:012d}-{hexes.upper()}",
        f"{ROWS + 1:012d}-{hexes[:31]}",
        f"{ROWS + 1:011d}-{hexes}",
        f"-{ROWS + 1:011d}-{hexes}",
        f"{ROWS + 1:012d}-{hexes} ",
        "\u0660" * 11 + "\u0664" + f"-{hexes}",
        "\uff10" * 11 + "\uff14" + f"-{hexes}",
        f"{ROWS + 1:012d}-{hexes}\n",
        f"{ROWS + 1:012d}_{hexes}",
        ".hidden",
        "tmp",
    ]
    odd = rng.choice(odd_names)
    stray_ops: list[tuple[str, Callable[[], None]]] = [
        (f"empty row folder {odd!r}", lambda: (commits / odd).mkdir()),
        (f"copy of the newest row as {odd!r}", lambda: shutil.copytree(row, commits / odd)),
        (f"regular file named {odd!r}", lambda: (commits / odd).write_bytes(b"x")),
        (f"FIFO named {odd!r}", lambda: os.mkfifo(commits / odd)),
        ("copy of row 0 under a newer name, re-signed for it", lambda: _copy_row_as(env, 0, ROWS + 5)),
        ("copy of row 0 under a newer name, not re-signed", lambda: _copy_row_as(env, 0, ROWS + 5, resign=False)),
        ("stray file in the newest row", lambda: (row / "junk.bin").write_bytes(b"junk")),
        (
            "stray unlisted payload in the newest row",
            lambda: (row / "p000099.npy").write_bytes(env.pristine.row_files(victim)[payload.name]),
        ),
        ("stray FIFO in the newest row", lambda: os.mkfifo(row / "p000098.npy")),
        ("stray link out of the newest row", lambda: os.symlink(canary.victim, row / "p000097.npy")),
        ("stray link to a folder out of the newest row", lambda: os.symlink(canary.elsewhere, row / "sub")),
        ("stray folder in the newest row", lambda: (row / "sub").mkdir()),
        ("stray hidden file in the newest row", lambda: (row / ".manifest.json.tmp").write_bytes(b"{}")),
        ("stray file in the store root", lambda: (env.store / "README").write_text("hi")),
        ("stray file in commits", lambda: (commits / "README").write_text("hi")),
    ]
    kind = rng.random()
    if kind < 0.45:
        # The newest row cannot be read without following a link or opening a special file: it is damage.
        name, apply = rng.choice(ops)
        case.victim = victim
        case.must_detect = True
    elif kind < 0.6:
        name, apply = rng.choice(store_ops)
        case.store_level = True
        case.rows_removed = name.startswith("commits")
    elif kind < 0.75:
        name, apply = rng.choice(benign_ops)
    else:
        name, apply = rng.choice(stray_ops)
        if "newest row" in name:
            case.victim = victim  # its verify reports the stray; it stays the restart point
    apply()
    case.note(name)
    if rng.random() < 0.35:
        case.writer = rng.choice(["append", "append", "overwrite"])
        case.note(f"then a {case.writer} writer commits a row")


def _copy_row_as(env: Env, index: int, sequence: int, resign: bool = True) -> None:
    source = env.rows[index]
    name = f"{sequence:012d}-" + "e" * 32
    shutil.copytree(source, env.store / "commits" / name)
    if resign:
        body = read_body(source)
        body.update(sequence=sequence, commit_id=name)
        write_body(env.store / "commits" / name, body)


# --------------------------------------------------------------------------- mutators: archives

_HEADER_FIELDS = {
    "name": (0, 100),
    "mode": (100, 8),
    "uid": (108, 8),
    "gid": (116, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "typeflag": (156, 1),
    "linkname": (157, 100),
    "magic": (257, 6),
    "version": (263, 2),
    "uname": (265, 32),
    "devmajor": (329, 8),
    "devminor": (337, 8),
    "prefix": (345, 155),
}


def tar_headers(tar: bytes) -> list[int]:
    """The offsets of the header blocks of ``tar``, up to its end-of-archive marker."""
    offsets, at = [], 0
    while at + 512 <= len(tar) and tar[at : at + 512] != bytes(512):
        offsets.append(at)
        size = tarfile.nti(tar[at + 124 : at + 136])
        at += 512 + (size + 511) // 512 * 512
    return offsets


def fix_tar_checksum(tar: bytearray, at: int) -> None:
    block = tar[at : at + 512]
    block[148:156] = b" " * 8
    tar[at + 148 : at + 156] = b"%06o\0 " % sum(block)


def _member_list(tar: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        for member in archive.getmembers():
            data = archive.extractfile(member).read() if member.isreg() else None  # type: ignore[union-attr]
            out.append((member, data))
    return out


def _build_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


@dataclasses.dataclass
class ArchiveSource:
    gz: bytes
    tar: bytes
    members: list[tuple[tarfile.TarInfo, bytes | None]]


def build_archive_source(pristine: Pristine, work: Path) -> ArchiveSource:
    path = work / "pristine.tar.gz"
    write_archive(pristine.store, path)
    gz = path.read_bytes()
    tar = gzip.decompress(gz)
    return ArchiveSource(gz, tar, _member_list(tar))


def _info(name: str, kind: bytes = tarfile.REGTYPE, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 1_700_000_000
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def mutate_archive(case: Case, env: Env, source: ArchiveSource) -> tuple[Path, str]:
    """Write a damaged or hostile archive into the case's work folder; returns its path and compression."""
    rng = case.rng
    case.archive = True
    canary = env.canary
    compression = "gz" if rng.random() < 0.8 else ""
    op = rng.random()
    tar: bytes | None = None
    gz: bytes | None = None
    if op < 0.2:
        data = bytearray(source.gz)
        what = rng.choice(["flip", "flip", "truncate", "append-garbage", "append-zeros", "append-archive"])
        if what == "flip":
            at = rng.randrange(len(data))
            data[at] ^= 1 << rng.randrange(8)
            case.note(f"gzip byte {at} flipped")
        elif what == "truncate":
            at = rng.randrange(len(data))
            del data[at:]
            case.note(f"gzip cut at {at}")
        elif what == "append-garbage":
            data += bytes(rng.randrange(256) for _ in range(rng.choice([1, 100, 5000])))
            case.note("garbage after the gzip stream")
        elif what == "append-zeros":
            data += gzip.compress(bytes(rng.choice([1 << 10, 1 << 20, 8 << 20])), compresslevel=1)
            case.note("zeros gzipped after the end of the tar")
        else:
            data += source.gz
            case.note("a second archive after the first")
        gz, compression = bytes(data), "gz"
    elif op < 0.4:
        data = bytearray(source.tar)
        headers = tar_headers(source.tar)
        at = rng.choice(headers)
        field = rng.choice(list(_HEADER_FIELDS))
        start, width = _HEADER_FIELDS[field]
        value = _field_value(rng, field, width, canary)
        data[at + start : at + start + width] = value.ljust(width, b"\0")[:width]
        fixed = rng.random() < 0.85
        if fixed:
            fix_tar_checksum(data, at)
        case.note(f"tar header at {at}: {field} = {_short(value, 60)}, checksum {'fixed' if fixed else 'stale'}")
        tar = bytes(data)
    elif op < 0.5:
        data = bytearray(source.tar)
        for _ in range(rng.choice([1, 1, 3, 20])):
            at = rng.randrange(len(data))
            data[at] ^= 1 << rng.randrange(8)
        cut = rng.random() < 0.3
        if cut:
            del data[rng.randrange(len(data)) :]
        case.note(f"tar bytes flipped{', then cut' if cut else ''}")
        tar = bytes(data)
    else:
        members = [(m, d) for m, d in source.members]
        fmt = rng.choice([tarfile.PAX_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
        payloads = [i for i, (m, _) in enumerate(members) if m.name.endswith(".npy")]
        payload_index = rng.choice(payloads)
        payload_name = members[payload_index][0].name
        outside = canary.root / "planted.txt"
        hostile_names = [
            "../x",
            "../../canary-escape.txt",
            str(outside),
            os.path.relpath(outside, env.work / "target"),
            "commits/../../x",
            "./commits/x",
            "commits//x",
            "",
            ".",
            "/",
            "a/" * 300 + "x",
            "a" * 5000,
            "..\\x",
            "commits/\u202ex",
            "commits/x\udcff",
            "\x7f",
            "-rf",
        ]
        what = rng.choice(
            [
                "rename",
                "rename",
                "symlink",
                "symlink",
                "hardlink",
                "special",
                "duplicate",
                "through-link",
                "pax",
                "many",
            ]
        )
        if what == "rename":
            index = rng.randrange(len(members))
            info = _copy_info(members[index][0])
            info.name = rng.choice(hostile_names)
            members[index] = (info, members[index][1])
            case.note(f"member {members[index][0].name!r} renamed to {_short(info.name, 60)}")
        elif what in ("symlink", "hardlink"):
            kind = tarfile.SYMTYPE if what == "symlink" else tarfile.LNKTYPE
            target = rng.choice(
                [
                    str(canary.secret),
                    os.path.relpath(canary.secret, env.work / "target" / os.path.dirname(payload_name)),
                    "/dev/zero",
                    "/etc/passwd",
                    ".",
                    "..",
                    os.path.basename(payload_name),
                    payload_name,
                    "does-not-exist",
                    "../" * 20 + "etc/passwd",
                ]
            )
            info = _info(payload_name, kind, linkname=target)
            where = rng.choice(["replace", "append", "prepend"])
            if where == "replace":
                members[payload_index] = (info, None)
            elif where == "append":
                members.append((info, None))
            else:
                members.insert(0, (info, None))
            case.note(f"{what} {payload_name!r} -> {_short(target, 80)} ({where})")
        elif what == "special":
            kind = rng.choice([tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.CONTTYPE, b"Z", b"V"])
            info = _info(payload_name, kind, devmajor=1, devminor=3)
            members[payload_index] = (info, None if kind != tarfile.CONTTYPE else members[payload_index][1])
            if kind == tarfile.CONTTYPE:
                info.size = len(members[payload_index][1] or b"")
            case.note(f"{payload_name!r} made a member of type {kind!r}")
        elif what == "duplicate":
            index = rng.randrange(len(members))
            info, data_ = members[index]
            twin = _copy_info(info)
            if rng.random() < 0.5:
                twin.type = tarfile.DIRTYPE if info.isreg() else tarfile.REGTYPE
                twin.size = 0 if twin.type == tarfile.DIRTYPE else 3
                data_ = None if twin.type == tarfile.DIRTYPE else b"abc"
            members.append((twin, data_))
            case.note(f"{info.name!r} appears twice")
        elif what == "through-link":
            members.append((_info("escape", tarfile.SYMTYPE, linkname=str(canary.root)), None))
            members.append((_info("escape/planted.txt", size=5), b"owned"))
            case.note("a link member to the canary, then a file through it")
        elif what == "pax":
            fmt = tarfile.PAX_FORMAT
            index = rng.randrange(len(members))
            info = _copy_info(members[index][0])
            key, value = rng.choice(
                [
                    ("path", "../x"),
                    ("path", str(outside)),
                    ("linkpath", str(canary.secret)),
                    ("size", "99999999999"),
                    ("size", "-1"),
                    ("size", "1" + "0" * 50),
                    ("uid", "x"),
                    ("mtime", "nan"),
                    ("GNU.sparse.map", "0,1"),
                    ("hdrcharset", "BINARY"),
                    ("comment", "x" * 100_000),
                ]
            )
            info.pax_headers = {**info.pax_headers, key: value}
            members[index] = (info, members[index][1])
            case.note(f"pax record {key}={_short(value, 40)} on {info.name!r}")
        else:
            count = rng.choice([100, 500])
            members.extend((_info(f"junk/{i}", size=0), b"") for i in range(count))
            case.note(f"{count} extra empty members")
        try:
            tar = _build_tar(members, fmt)
        except (ValueError, tarfile.TarError, UnicodeError) as exc:
            case.note(f"(tarfile refused to write it: {exc!r}; the unchanged archive is used)")
            tar = source.tar
    if gz is None:
        assert tar is not None
        gz = gzip.compress(tar, compresslevel=1, mtime=0) if compression == "gz" else tar
    path = env.work / ("hostile.tar.gz" if compression == "gz" else "hostile.tar")
    path.write_bytes(gz)
    case.note(f"compression {compression or 'none'}")
    return path, compression


def _copy_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    twin = tarfile.TarInfo(info.name)
    for key in ("size", "mtime", "mode", "type", "linkname", "uid", "gid", "uname", "gname", "devmajor", "devminor"):
        setattr(twin, key, getattr(info, key))
    twin.pax_headers = dict(info.pax_headers)
    return twin


def _field_value(rng: random.Random, field: str, width: int, canary: Canary) -> bytes:
    if field in ("name", "prefix", "linkname"):
        return rng.choice(
            [
                b"../x",
                b"/" + bytes(str(canary.root), "utf-8")[1:] + b"/planted",
                b"",
                b"\xff\xfe",
                b"a/" * 49,
                b".",
                b"commits/../../y",
            ]
        )
    if field == "typeflag":
        return rng.choice(
            [
                b"0",
                b"1",
                b"2",
                b"3",
                b"4",
                b"5",
                b"6",
                b"7",
                b"g",
                b"x",
                b"L",
                b"K",
                b"S",
                b"V",
                b"M",
                b"D",
                b"Z",
                b"\0",
            ]
        )
    if field == "size":
        return rng.choice(
            [
                b"77777777777\0",
                b"00000000000\0",
                b"99999999999\0",
                b"\x80" + (2**62).to_bytes(11, "big"),
                b"\xff" * 12,
                b"-0000000001\0",
                b"00000001000\0",
                b"00000000001\0",
            ]
        )
    if field in ("mode", "uid", "gid", "devmajor", "devminor"):
        return rng.choice([b"7777777\0", b"0000000\0", b"xxxxxxx\0", b"\x80" + b"\xff" * 7, b"4755\0", b"0006777\0"])
    if field == "mtime":
        return rng.choice([b"77777777777\0", b"\xff" * 12, b"nan\0"])
    if field == "magic":
        return rng.choice([b"ustar\0", b"ustar ", b"\0\0\0\0\0\0", b"GNUtar"])
    return bytes(rng.randrange(256) for _ in range(width))


# --------------------------------------------------------------------------- reading: every front end

# The exit codes cli.py documents for a local store: 0 ok, 1 damage, 2 usage or not a checkpoint,
# 5 the file system refused; gc also 3, the store is locked (4 is for object stores).
ACCEPTED_CLI_CODES = {0, 1, 2, 5}
# What a store's text must never put on a terminal unescaped (escape sequences start with ESC, \x1b).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


def _tail(exc: BaseException, frames: int = 3) -> str:
    stack = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack))
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {_short(str(exc), 300)} [at {where}]"


@dataclasses.dataclass
class Observed:
    """What the readers of one case did."""

    problems: list[str] = dataclasses.field(default_factory=list)
    outcomes: list[str] = dataclasses.field(default_factory=list)
    landed: str | None = None
    fell_back: bool = False

    def attempt(
        self, label: str, action: Callable[[], Any], allowed: tuple[type[BaseException], ...] = (CheckpointError,)
    ) -> Any:
        try:
            return action()
        except (CaseTimeout, KeyboardInterrupt):
            raise
        except allowed as exc:
            self.outcomes.append(f"{label}: {type(exc).__name__}")
            return None
        except BaseException as exc:
            self.problems.append(f"{label} escaped with {_tail(exc)}")
            return None


def _cli(observed: Observed, argv: list[str]) -> tuple[int | None, str]:
    # A terminal's stream: strict UTF-8, so a name that cannot be printed fails here as it would there.
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", newline="\n")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", newline="\n")
    code: Any = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except SystemExit as exc:
            code = exc.code
        except CaseTimeout:
            raise
        except BaseException as exc:
            observed.problems.append(f"restartable {' '.join(argv[:1])} raised {_tail(exc)}")
            return None, ""
        finally:
            with contextlib.suppress(Exception):
                out.flush()
                err.flush()
    text = out.buffer.getvalue().decode("utf-8", "replace") + err.buffer.getvalue().decode("utf-8", "replace")  # type: ignore[attr-defined]

    if code not in ACCEPTED_CLI_CODES and not (argv[0] == "gc" and code == 3):
        observed.problems.append(f"restartable {argv[0]} returned {code!r}: {_short(text, 300)}")
    if "Traceback" in text:
        observed.problems.append(f"restartable {argv[0]} printed a traceback: {_short(text, 300)}")
    control = _CONTROL.search(text)
    if control:
        observed.problems.append(f"restartable {argv[0]} printed the control character {control.group()!r} unescaped")
    observed.outcomes.append(f"cli {argv[0]}: {code}")
    return (code if isinstance(code, int) else None), out.buffer.getvalue().decode("utf-8", "replace")  # type: ignore[attr-defined]


def _state_matches(actual: Any, expected: Any) -> str | None:
    try:
        assert_same(actual, expected)
    except AssertionError as exc:
        return str(exc)
    return None


def read_state_store(case: Case, env: Env, observed: Observed, good: dict[str, int]) -> None:
    """Every reader of a ``Checkpoint`` store; ``good`` maps the untouched rows' names to their k."""
    store = str(env.store)

    def resume() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with Checkpoint(NAME, path=store, mode="append") as session:
                    observed.landed = session.commit_id
                    if observed.landed not in good:
                        bind_checkpoint_state(FuzzState())
                        return
                    try:
                        restored = bind_checkpoint_state(FuzzState())
                    except CheckpointError as exc:
                        observed.problems.append(f"resume could not restore the good row {observed.landed}: {exc!r}")
                        return
                    problem = _state_matches(restored.checkpoint_dataclass, state_for(good[observed.landed]))
                    if problem:
                        observed.problems.append(f"resume restored row {observed.landed} wrongly: {problem}")
            finally:
                observed.fell_back = any(issubclass(w.category, CheckpointFallbackWarning) for w in caught)

    observed.attempt("resume", resume)
    observed.attempt("scan_rows", lambda: _scan(observed, env, good))
    _verify_all(case, env, observed, good)
    _cli_readers(case, env, observed, good)

    def catalog() -> None:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            checkpoint = Checkpoint(NAME, path=store, mode="append")
            entries = checkpoint.catalog
            listed = [entry.commit_id for entry in entries]
            for name in good:
                if name not in listed and not case.store_level:
                    observed.problems.append(f"the catalog lost the good row {name}: {listed}")
            for entry in entries:
                repr(entry)
                dict(entry.metadata)
                _ = (entry.lead_time, entry.state_ids, entry.metadata_keys, entry.saved_at, entry.write_count)
            printed = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
            print(checkpoint, file=printed)
            printed.flush()
            control = _CONTROL.search(printed.buffer.getvalue().decode("utf-8"))
            if control:
                observed.problems.append(f"print(checkpoint) printed the control character {control.group()!r}")
            # Restore the newest good row by its position, and the newest row whatever it is.
            newest_good = max(good, default=None)
            if newest_good in listed and observed.landed != newest_good:
                position = listed.index(newest_good)
                try:
                    restored = checkpoint.select(position).bind(FuzzState())
                except CheckpointError as exc:
                    observed.problems.append(
                        f"select({position}) could not restore the good row {newest_good}: {exc!r}"
                    )
                else:
                    problem = _state_matches(restored.checkpoint_dataclass, state_for(good[newest_good]))
                    if problem:
                        observed.problems.append(
                            f"select({position}) restored the good row {newest_good} wrongly: {problem}"
                        )
            damaged = env.pristine.rows[case.victim] if case.must_detect and case.victim is not None else None
            if (
                listed
                and listed[-1] != observed.landed
                and observed.attempt("select(-1)", lambda: checkpoint.select(-1).bind(FuzzState()))
                and listed[-1] == damaged
            ):
                observed.problems.append(f"select(-1) restored the damaged row {listed[-1]}")

    observed.attempt("catalog", catalog)


def read_iterator_store(case: Case, env: Env, observed: Observed, good: dict[str, int]) -> None:
    store = str(env.store)
    steps_of = {name: k for name, k in good.items()}

    def restore() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with IteratorCheckpoint(store) as checkpoint:
                    latest = checkpoint.get_latest_step()
                    listed = checkpoint.list_checkpoints()
                    for name, k in steps_of.items():
                        if k not in listed and not case.store_level:
                            observed.problems.append(f"list_checkpoints lost the good step {k} ({name}): {listed}")
                    if latest is None:
                        return
                    checkpoint.get_metadata()
                    stream = ArrayStream()
                    checkpoint.restore_latest(stream)
                    # Which row was restored: the pristine state it equals bit for bit (a re-signed
                    # edit of the damaged row may restore anything, and then matches none).
                    observed.landed = "(a state no pristine row holds)"
                    for k, name in enumerate(env.pristine.rows, start=1):
                        if _state_matches(stream.state, iterator_state_for(k)) is None:
                            observed.landed = name
                    if observed.landed not in good and case.victim != ROWS - 1:
                        observed.problems.append(f"restore_latest restored a state of no good row: {stream.state}")
            finally:
                observed.fell_back = any(issubclass(w.category, CheckpointFallbackWarning) for w in caught)

    observed.attempt("iterator restore", restore, allowed=(CheckpointError,))
    observed.attempt("scan_rows", lambda: _scan(observed, env, good))
    _verify_all(case, env, observed, good)
    _cli_readers(case, env, observed, good)


def _verify_all(case: Case, env: Env, observed: Observed, good: dict[str, int]) -> None:
    """open_row and verify_row of the damaged row, by its directory (``restartable verify`` checks every row)."""
    if case.victim is None:
        return
    name = env.pristine.rows[case.victim]
    observed.attempt("open_row(dir)", lambda: open_row(env.store / "commits" / name))
    found = observed.attempt("verify_row(dir)", lambda: verify_row(env.store / "commits" / name))
    if found == [] and case.must_detect and os.path.lexists(env.store / "commits" / name):
        observed.problems.append(f"verify_row found nothing wrong with {name} after an unsigned edit")


def _cli_readers(case: Case, env: Env, observed: Observed, good: dict[str, int]) -> None:
    """ls (text or JSON), verify (JSON, checked row by row), show (by index or commit id), as the seed has it."""
    store = str(env.store)
    json_flag = ["--json"] if case.seed % 2 else []
    _cli(observed, ["ls", store, *json_flag])
    code, text = _cli(observed, ["verify", store, "--json"])
    if code in (0, 1) and text:
        try:
            report = json.loads(text)
            ok = {os.path.basename(row["row"].rstrip("/")): row["ok"] for row in report["rows"]}
        except (ValueError, KeyError, TypeError) as exc:
            observed.problems.append(f"restartable verify --json printed no report ({exc!r}): {_short(text, 200)}")
            ok = {}
        for name in good:
            if ok.get(name) is not True and not case.store_level:
                observed.problems.append(f"restartable verify does not pass the good row {name}: {ok.get(name)!r}")
        if case.must_detect and case.victim is not None and ok.get(env.pristine.rows[case.victim]) is True:
            observed.problems.append("restartable verify passes the damaged row after an unsigned edit")
    selector = "-1" if case.seed % 4 < 2 else env.pristine.rows[-1]
    _cli(observed, ["show", store, selector, *json_flag])


def _scan(observed: Observed, env: Env, good: dict[str, int]) -> None:
    scan = scan_rows(env.store)
    listed = {row.name for row in scan.rows}
    for name in good:
        if name not in listed:
            observed.problems.append(f"scan_rows lost the good row {name}")
    for problem in scan.problems:
        str(problem)


def _tree(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under ``root`` (links not followed): kind, size, and the bytes of small regular files."""
    found: dict[str, tuple[int, int, bytes | None]] = {}
    skip = len(str(root)) + 1
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = current + os.sep + name
            info = os.lstat(path)
            data = None
            if stat.S_ISREG(info.st_mode) and info.st_size <= 1 << 16:
                with open(path, "rb") as fh:
                    data = fh.read()
            found[path[skip:]] = (stat.S_IFMT(info.st_mode), info.st_size, data)
    return found


def _good_rows_intact(
    env: Env, good: dict[str, int], tree: dict[str, tuple[int, int, bytes | None]], when: str
) -> list[str]:
    problems = []
    for name, k in good.items():
        for file, data in env.pristine.row_files(k - 1).items():
            rel = os.path.join("commits", name, file)
            if rel not in tree:
                problems.append(f"{when}: {rel} of the good row {name} is gone")
            elif tree[rel][2] != data:
                problems.append(f"{when}: {rel} of the good row {name} changed")
    return problems


# --------------------------------------------------------------------------- one case

MUTATORS: dict[str, Callable[[Case, Env], None]] = {
    "manifest": mutate_manifest,
    "npy-header": mutate_npy_header,
    "payload-body": mutate_payload_body,
    "filesystem": mutate_filesystem,
    "codec": mutate_codec,
}


@dataclasses.dataclass
class Fixture:
    """What a process prepares once: the pristine stores, the canary, the archive, the warm-up."""

    root: Path
    state: Pristine
    iterator: Pristine
    canary: Canary
    archive: ArchiveSource
    counter: int = 0

    def __post_init__(self) -> None:
        self.stamps = self._stamps()

    def _stamps(self) -> dict[Path, tuple[int, int]]:
        stamps = {}
        for pristine in (self.state, self.iterator):
            for rel in pristine.files:
                info = os.lstat(pristine.store / rel)
                stamps[pristine.store / rel] = (info.st_size, info.st_mtime_ns)
        return stamps

    def check_pristine(self) -> list[str]:
        """Cases hard-link the pristine rows: a reader that wrote into a file of a row would change them."""
        try:
            if self._stamps() == self.stamps:
                return []
        except OSError:
            pass
        for pristine in (self.state, self.iterator):
            for rel, data in pristine.files.items():
                path = pristine.store / rel
                if path.exists():
                    path.unlink()
                path.write_bytes(data)
        self.stamps = self._stamps()
        return ["a file of a committed row was written in place (the pristine copy changed; restored)"]


def prepare(root: Path) -> Fixture:
    install_audit_hook()
    state, iterator = build_pristine(root / "pristine")
    canary = Canary(root / "canary", state)
    work = root / "archive-source"
    work.mkdir()
    fixture = Fixture(root, state, iterator, canary, build_archive_source(state, work))
    # Warm up: the first run of every reader imports what it imports lazily
    # (xxhash, zoneinfo, argparse's helpers, ...), and so does the first repr
    # of a tensor (torch's printing, which a case does to an entry holding
    # one); after this, any module imported while a case reads was imported
    # because of the case.
    repr(state_for(1))
    repr(iterator_state_for(1))
    for category in CATEGORIES:
        for flavor in ("state", "iterator"):
            for seed in range(3):
                run_case(fixture, category, flavor, -1 - seed, check_imports=False)
    return fixture


_PARSER: list[Any] = []


@contextlib.contextmanager
def _one_parser() -> Iterator[None]:
    """Build the CLI's argument parser once: building it costs more than most commands (it is reused as is)."""
    if not _PARSER:
        _PARSER.append(restartable.cli.build_parser())
    original = restartable.cli.build_parser
    restartable.cli.build_parser = lambda: _PARSER[0]
    try:
        yield
    finally:
        restartable.cli.build_parser = original


def run_case(
    fixture: Fixture, category: str, flavor: str, seed: int, *, time_limit_s: float = 10.0, check_imports: bool = True
) -> tuple[Case, list[str]]:
    """Copy the store, mutate it, read it every way there is under the guards; the problems found."""
    case = Case(category, "state" if category == "archive" else flavor, seed)
    pristine = fixture.state if case.flavor == "state" else fixture.iterator
    fixture.counter += 1
    case_dir = fixture.root / "cases" / str(fixture.counter)
    env = Env(pristine, fixture.canary, case_dir, case_dir / "store", case_dir / "work")
    problems: list[str] = []
    releaser = _FifoReleaser(case_dir)
    try:
        with (
            time_limit(time_limit_s, case.id, soft=(FIFO_PATIENCE_S, releaser.start)),
            warnings.catch_warnings(record=True),
            _one_parser(),
        ):
            warnings.simplefilter("always")
            problems = _run(fixture, case, env, check_imports)
    except CaseTimeout as exc:
        problems.append(f"hang: {exc} [stopped at {_tail(exc, frames=6)}]")
    finally:
        releaser.stop()
        _release_fifos(case_dir)
        shutil.rmtree(case_dir, ignore_errors=True)
    problems += releaser.found + fixture.canary.check() + fixture.check_pristine()
    return case, [f"{case.id} [{'; '.join(case.description)}]: {p}" for p in problems]


def draw_case(fixture: Fixture, category: str, flavor: str, seed: int) -> Case:
    """The case :func:`run_case` would run, mutated but not read: what its mutation is, at a fraction of the cost."""
    case = Case(category, "state" if category == "archive" else flavor, seed)
    pristine = fixture.state if case.flavor == "state" else fixture.iterator
    fixture.counter += 1
    case_dir = fixture.root / "draws" / str(fixture.counter)
    env = Env(pristine, fixture.canary, case_dir, case_dir / "store", case_dir / "work")
    try:
        env.work.mkdir(parents=True)
        if category == "archive":
            mutate_archive(case, env, fixture.archive)
        else:
            populate(env)
            MUTATORS[category](case, env)
    finally:
        _release_fifos(case_dir)
        shutil.rmtree(case_dir, ignore_errors=True)
    return case


def mutation_kind(case: Case) -> tuple[str, str, bool, str | None]:
    """What sets a case's mutation apart from another's, values aside.

    The flavor read (Checkpoint or IteratorCheckpoint rows), the first three
    words of its first description (``manifest of row``, ``files order
    edited``, ``payload -> canary``, ``tar header at uname``, ``set ... to``),
    quoted names and numbers left out; whether the damage is unsigned (found
    by the checksums) or re-signed (found by validation); the writer after it.
    """
    first = case.description[0] if case.description else ""
    words = re.findall(r"[A-Za-z][A-Za-z_]*", re.sub(r"b?'[^']*'|\"[^\"]*\"", "", first))
    return case.flavor, " ".join(words[:3]), case.must_detect, case.writer


class _FifoReleaser:
    """Finds threads blocked opening a FIFO of the case, records where, and lets them go.

    Started by the soft alarm with the frame the main thread was in. A
    thread of this process blocked in ``open()`` of a FIFO sleeps in the
    kernel's ``wait_for_partner`` (``/proc/self/task/*/wchan``); where that
    cannot be read, a non-blocking open of the FIFO for writing, which
    succeeds only while a reader has it open, is taken as the sign. Opening
    it for writing also wakes the reader, which then reads end-of-file.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.found: list[str] = []
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, frame: Any) -> None:
        fifos = _fifos(self.root)
        if not fifos:
            return
        stack = " <- ".join(
            f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(traceback.extract_stack(frame)[-6:])
        )
        self.thread = threading.Thread(target=self._release, args=(fifos, stack), daemon=True)
        self.thread.start()

    def _release(self, fifos: list[str], stack: str) -> None:
        deadline = time.monotonic() + 5
        while not self.done.is_set() and time.monotonic() < deadline:
            waiting = _waiting_on_a_fifo()
            if waiting is not False:
                for path in fifos:
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                    except OSError:
                        continue  # no reader has it open
                    os.close(fd)
                    if any(path in f for f in self.found):
                        continue  # the same reader came back to it: once is enough
                    self.found.append(
                        f"hang: a reader waited on the FIFO {path} for {FIFO_PATIENCE_S} s (let go) [at {stack}]"
                    )
            self.done.wait(0.02)

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()


def _waiting_on_a_fifo() -> bool | None:
    """Whether a thread of this process waits in ``open()`` of a FIFO; ``None`` where the kernel does not say."""
    try:
        tasks = os.listdir("/proc/self/task")
        states = []
        for tid in tasks:
            with open(f"/proc/self/task/{tid}/wchan") as fh:
                states.append(fh.read().strip())
    except OSError:
        return None
    if not any(state not in ("", "0") for state in states):
        return None
    return "wait_for_partner" in states


# A reader blocked on a FIFO is found (and let go) after this long, not after the whole time limit:
# soon where the kernel tells which threads wait on a FIFO (no healthy case ever does), later where
# a reader holding the FIFO open is the only sign.
FIFO_PATIENCE_S = 0.25 if _waiting_on_a_fifo() is not None else 1.0


def _fifos(root: Path) -> list[str]:
    found = []
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(current, name)
            with contextlib.suppress(OSError):
                if stat.S_ISFIFO(os.lstat(path).st_mode):
                    found.append(path)
    return found


def _release_fifos(root: Path) -> None:
    """Open every FIFO under ``root`` for writing, so that a reader stuck on one (in any thread) goes on."""
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(current, name)
            with contextlib.suppress(OSError):
                if stat.S_ISFIFO(os.lstat(path).st_mode):
                    os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))


def _run(fixture: Fixture, case: Case, env: Env, check_imports: bool) -> list[str]:
    env.work.mkdir(parents=True)
    if case.category != "archive":
        populate(env)
    if case.category == "archive":
        archive, compression = mutate_archive(case, env, fixture.archive)
    else:
        MUTATORS[case.category](case, env)
    good = {name: k + 1 for k, name in enumerate(env.pristine.rows) if k != case.victim}
    if case.category == "archive" or case.rows_removed:
        good = {}
    allowed = [env.case_dir, os.environ.get("RESTARTABLE_CACHE", str(env.case_dir))]
    recorder = AuditRecorder(allowed, fixture.canary.root)
    observed = Observed()
    modules = set(sys.modules)
    with recorder.active():
        if case.category == "archive":
            target = env.work / "target"
            extracted = observed.attempt(
                "extract_archive",
                lambda: extract_archive(archive, target, compression=compression) or True,
                # What RemoteCheckpoint maps to CheckpointCorruptError (remote/task.py); anything else escapes.
                allowed=(CheckpointError, OSError, EOFError, tarfile.TarError),
            )
            if extracted:
                env = dataclasses.replace(env, store=target)
                case.store_level = True
                read_state_store(case, env, observed, good)
        elif case.flavor == "state":
            read_state_store(case, env, observed, good)
        else:
            read_iterator_store(case, env, observed, good)
        with recorder.pause():
            before_gc = _tree(env.store) if env.store.is_dir() else {}
        if not case.archive:
            _cli(observed, ["gc", str(env.store)])
            with recorder.pause():
                after_gc = _tree(env.store) if env.store.is_dir() else {}
                observed.problems += _good_rows_intact(env, good, after_gc, "after gc")
                observed.problems += _gc_deletions(before_gc, after_gc)
            if case.writer:
                _write(case, env, observed, good)
    if check_imports:
        imported = sorted(set(sys.modules) - modules)
        if imported:
            observed.problems.append(f"reading imported modules: {imported[:20]}")
    observed.problems += recorder.violations
    _judge_outcome(case, env, observed, good)
    landed = "fresh" if observed.landed is None else ("good" if observed.landed in good else "other")
    case.outcomes = [*observed.outcomes, f"landed: {landed}", f"fallback warning: {observed.fell_back}"]
    return observed.problems


def _protected(before: dict[str, tuple[int, int, bytes | None]]) -> dict[str, set[str]]:
    """For each row folder, the files gc must keep: those its signed manifest names; all of them when it has none.

    A manifest's names are normalized (``./p000001.npy`` protects
    ``p000001.npy``), since a reader that resolves them would read those.
    """
    rows: dict[str, set[str]] = {}
    for rel, (_kind, _size, _data) in before.items():
        parts = rel.split(os.sep)
        if len(parts) == 3 and parts[0] == "commits":
            rows.setdefault(parts[1], set()).add(parts[2])
    protected = {}
    for row, present in rows.items():
        raw = before.get(os.path.join("commits", row, MANIFEST_NAME), (0, 0, None))[2]
        names = _signed_names(raw) if raw is not None else None
        protected[row] = present if names is None else {os.path.normpath(n) for n in names} | {MANIFEST_NAME}
    return protected


def _signed_names(raw: bytes) -> list[str] | None:
    prefix, middle = b'{"checksum":"', b'","manifest":'
    head = len(prefix) + 16 + len(middle)
    if not (raw.startswith(prefix) and raw.endswith(b"}\n") and raw[head - len(middle) : head] == middle):
        return None
    data = raw[head:-2]
    if checksum_bytes(data).encode() != raw[len(prefix) : len(prefix) + 16]:
        return None
    try:
        files = json.loads(data)["files"]
        return [entry["name"] for entry in files if isinstance(entry["name"], str)]
    except Exception:
        return None


def _gc_deletions(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """gc may delete files no signed manifest names, and leftovers; never a file a row's signed manifest names."""
    problems = []
    protected = _protected(before)
    for name in before:
        if name in after:
            continue
        parts = name.split(os.sep)
        if len(parts) == 3 and parts[0] == "commits" and parts[2] in protected.get(parts[1], ()):
            problems.append(f"gc deleted {name}, which its row's manifest names (or the row is damaged)")
        elif len(parts) == 2 and parts[0] == "commits" and before[name][0] == stat.S_IFDIR:
            problems.append(f"gc deleted the row folder {name}")
    return problems


def _write(case: Case, env: Env, observed: Observed, good: dict[str, int]) -> None:
    mode = case.writer

    def write() -> None:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with Checkpoint(NAME, path=str(env.store), mode=mode) as session:
                state = bind_checkpoint_state(FuzzState())
                new = state_for(9)
                for f in dataclasses.fields(FuzzState):
                    setattr(state, f.name, getattr(new, f.name))
                written = session.write(**metadata_for(9))
            entries = Checkpoint(NAME, path=str(env.store), mode="append").catalog
            if written is None or entries[-1].commit_id != written.commit_id:
                observed.problems.append(f"the {mode} writer's row is not the newest: {[e.commit_id for e in entries]}")
            if mode == "append":
                listed = {e.commit_id for e in entries}
                lost = [name for name in good if name not in listed]
                if lost and not case.store_level:
                    observed.problems.append(f"after an append write, good rows are gone: {lost}")

    if env.pristine.flavor != "state":
        return
    refused = len(observed.outcomes)
    observed.attempt(f"{mode} writer", write)
    refused = len(observed.outcomes) > refused
    if mode == "append" or refused:
        # An append, or a refused write of any mode: no good row may have gone.
        tree = _tree(env.store) if env.store.is_dir() else {}
        observed.problems += _good_rows_intact(env, good, tree, f"after the {mode} writer")


def _judge_outcome(case: Case, env: Env, observed: Observed, good: dict[str, int]) -> None:
    """Where the resume landed: never on a damaged row, never older than the newest good row."""
    if case.archive or case.store_level:
        return
    newest_good = max(good, default=None)
    landed = observed.landed
    raised = [o for o in observed.outcomes if o.startswith(("resume:", "iterator restore:"))]
    if raised and case.must_detect:
        observed.problems.append(f"the resume raised instead of falling back: {raised}")
    if landed is None:
        escaped = any(p.startswith(("resume escaped", "iterator restore escaped")) for p in observed.problems)
        if newest_good is not None and not raised and not escaped:
            observed.problems.append(f"the resume started fresh although {newest_good} is whole")
        return
    if landed == LINKED_ROW_NAME:
        observed.problems.append(f"the resume restored {landed}, a link out of the store")
    if newest_good is not None and landed < newest_good and landed in env.pristine.rows:
        observed.problems.append(f"the resume fell back to {landed}, past the good row {newest_good}")
    if case.victim is not None and landed == env.pristine.rows[case.victim] and case.must_detect:
        observed.problems.append(f"the resume restored the damaged row {landed} (unsigned damage went unnoticed)")
    fell_back = newest_good is not None and landed == newest_good and case.victim == ROWS - 1
    if fell_back and case.must_detect and not observed.fell_back:
        observed.problems.append("the resume fell back without a CheckpointFallbackWarning")
