"""Seeded fuzzing of hostile and broken stores (issue 18): every input ends in a CheckpointError or a fallback.

Real rows are committed through the public API (``Checkpoint`` with a bound
dataclass of numpy arrays of several dtypes, a structured one, a 0-d and an
empty one, a bfloat16 tensor and codec values, metadata holding an array;
and ``IteratorCheckpoint`` rows of an iterator whose state holds arrays).
Each case takes a copy of that store (hard links, and real copies of the
row it edits), mutates it in one of six ways, and reads it with every
reader there is:

==================  =====================================================
category            what is mutated
==================  =====================================================
``manifest``        manifest JSON: fields, the files list, types, raw JSON
                    (NaN, 100,000-deep nesting, lone surrogates), mostly
                    re-signed so that only validation can refuse it;
                    unsigned byte edits, which the checksum must catch
``npy-header``      ``.npy`` headers: bit flips, structural bytes, the
                    length field, version, magic, descr/shape/fortran
                    texts replaced (overflowing shapes, object dtypes,
                    Python expressions), re-signed 70% of the time
``payload-body``    the data after the header: flips, cuts, extensions,
                    another payload's bytes, sparse terabytes; and packs
                    (40%): flips, cuts, extensions, another row's pack
``filesystem``      links (to a canary outside the store, to itself, to
                    ``/dev/zero``), FIFOs, directories, sockets, deleted
                    files, strays, oddly named rows, links for
                    ``commits``, ``rank_*``, ``.lock``, trash and staging
                    folders; a third of them followed by a writer
``archive``         ``write_archive`` output: flipped and cut gzip, tar
                    header fields rewritten with a fixed checksum, members
                    renamed to ``../x`` or absolute paths, links and hard
                    links out, special members, pax records; then
                    ``extract_archive`` and, if it extracts, every reader
``codec``           state and metadata documents (re-signed): dataclass
                    types and torch dtypes that would import modules,
                    malformed tagged records, payload references past the
                    list, deep nesting
==================  =====================================================

The readers: a ``with Checkpoint(...)`` resume binding the dataclass (or
``IteratorCheckpoint`` ``get_latest_step``, ``list_checkpoints``,
``get_metadata``, ``restore_latest``), ``scan_rows``, ``open_row`` and
``verify_row`` of the damaged row, ``restartable ls`` (text or ``--json``),
``verify --json`` (every row, checked row by row), ``show`` (by index or
commit id) and ``gc``, on a strict UTF-8 stream as a terminal's, the
catalog, its entries and ``print(checkpoint)``, ``select`` of the newest
good row (when the resume did not land there) and of the newest row (when
it is another); after a third of the filesystem cases a writer commits a
row. For every case (see :func:`fuzzing.run_case`):

1. only :class:`~restartable.CheckpointError` subclasses are raised (for
   ``extract_archive`` also what ``RemoteCheckpoint`` maps to one: OSError,
   EOFError, tarfile.TarError), the CLI returns a documented code (0, 1, 2
   or 5; gc also 3) without a traceback or an unescaped control character,
   ``print(checkpoint)`` writes to a strict UTF-8 stream without one, and an
   unsigned edit is always caught: the resume falls back, with a
   :class:`~restartable.CheckpointFallbackWarning`, to exactly the newest
   good row, whose state is compared bit for bit;
2. nothing hangs: each case runs under ``SIGALRM`` and fails with its id
   (a thread waiting to open a FIFO is found, reported and let go after a
   fraction of a second);
3. nothing outside the store is read, written or deleted: an audit hook
   records every path the readers open, list, rename or delete, resolved
   as the operating system would, and canary files next to the store are
   compared (inode, size, times) after every case;
4. no module is imported while reading (``sys.modules`` before and after,
   after a warm-up of every reader);
5. no committed good row is lost: its files are byte for byte unchanged
   after ``gc`` (and after an append writer, or a refused writer), it is
   listed, verifies and restores, and ``gc`` deletes no file that a row's
   signed manifest names.

Cases are numbered; a case's mutation is drawn from ``random.Random`` seeded
with its id (``category/flavor/seed``), so a failure names a case that
reproduces: ``FUZZ_CASES=npy-header/state/17,codec/iterator/4 pytest
tests/test_fuzz_stores.py`` runs only those; a failure lists the problems
grouped by kind. :data:`KNOWN_FAILURES` are cases that fail
because of library bugs still open: they run apart, as strict xfails.

Cases by category (a case costs some 25 ms of CPU, most of it the readers).
The default run draws the seeds below and reads one case of each kind of
mutation they draw (:func:`fuzzing.mutation_kind`: the flavor, what is
mutated and how, signed or not, the writer after it; some 320 cases of the
1,600, the first seed of each kind); drawing a mutation without reading it
costs a fifteenth of a case. The stress run reads the other seeds of the
default range and ten times as many seeds from 1,000,000 on:

==================  ===========  ==========================================
category            seeds drawn  ``-m stress`` (seeds from 1,000,000 on)
                    by default
==================  ===========  ==========================================
``manifest``        300          3,000
``npy-header``      300          3,000
``payload-body``    200          2,000
``filesystem``      300          3,000
``archive``         200          2,000
``codec``           300          3,000
total               1,600        16,000
==================  ===========  ==========================================

The module's teardown prints the number of cases run by category.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import restartable.cli
import restartable.codec
import restartable.store.rows
from fuzzing import (
    CATEGORIES,
    PACK_BELOW,
    AuditRecorder,
    Canary,
    CaseTimeout,
    Fixture,
    draw_case,
    mutation_kind,
    prepare,
    run_case,
    time_limit,
)
from restartable.store import LocalRowStore

STRESS_CHUNK = 1000
# Seeds per category drawn in the default run (one case of each kind read), and read in the stress run (other seeds).
DEFAULT_CASES = {
    "manifest": 300,
    "npy-header": 300,
    "payload-body": 200,
    "filesystem": 300,
    "archive": 200,
    "codec": 300,
}
STRESS_CASES = {category: count * 10 for category, count in DEFAULT_CASES.items()}
STRESS_SEED_BASE = 1_000_000
# A case that takes longer than this hangs (a healthy one takes tens of milliseconds).
CASE_TIME_LIMIT_S = 10.0

RUN_COUNTS: collections.Counter[str] = collections.Counter()

# Cases that still fail, each because of a library bug reported (with a
# minimal reproducer) when this suite was written: the failing cases of the
# default seeds, and a few from other seeds. They run in test_known_failure,
# apart from the chunks, as strict xfails that must fail in the way their
# pattern says: once the bug is fixed the case passes, the xfail turns into
# a failure, and its line goes.
_KNOWN: dict[str, tuple[str, list[str]]] = {}
KNOWN_FAILURES: dict[str, tuple[str, str]] = {
    case: (reason, pattern) for reason, (pattern, cases) in _KNOWN.items() for case in cases
}


def _flavor(category: str, seed: int) -> str:
    # One case in five reads IteratorCheckpoint rows; archives hold a Checkpoint store.
    return "iterator" if category != "archive" and seed % 5 == 4 else "state"


def _scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A memory-backed folder when there is one: a case copies and deletes a store, which disks make slow."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 256 << 20:
        return Path(tempfile.mkdtemp(prefix="restartable-fuzz-", dir=shm))
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Fixture]:
    root = _scratch_root(tmp_path_factory)
    cache = root / "cache"
    # Module-scoped: monkeypatch cannot serve it, so the variables are set and restored here.
    variables = {"RESTARTABLE_CACHE": str(cache), "RESTARTABLE_PACK_BELOW": PACK_BELOW}
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield prepare(root)
    finally:
        _FIRST_OF_KIND.clear()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)
        if RUN_COUNTS:
            line = "fuzz cases run: " + ", ".join(f"{c} {RUN_COUNTS[c]}" for c in CATEGORIES if c in RUN_COUNTS)
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            capture = request.config.pluginmanager.get_plugin("capturemanager")
            if reporter is not None:  # None in an xdist worker
                with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
                    reporter.write_line(f"\n{line} (total {sum(RUN_COUNTS.values())})")


def _selected() -> set[str] | None:
    text = os.environ.get("FUZZ_CASES", "").strip()
    return {item.strip() for item in text.split(",") if item.strip()} if text else None


def _one_per_kind(fuzz: Fixture, category: str) -> set[int]:
    """The default seeds of ``category`` that draw a kind of mutation no smaller seed drew (drawn, not read)."""
    if category not in _FIRST_OF_KIND:
        seen: set[tuple[object, ...]] = set()
        firsts = set()
        for seed in range(DEFAULT_CASES[category]):
            kind = mutation_kind(draw_case(fuzz, category, _flavor(category, seed), seed))
            if kind not in seen:
                seen.add(kind)
                firsts.add(seed)
        _FIRST_OF_KIND[category] = firsts
    return _FIRST_OF_KIND[category]


_FIRST_OF_KIND: dict[str, set[int]] = {}


def _run_chunk(fuzz: Fixture, category: str, seeds: range, only: set[int] | None = None) -> None:
    """Read the cases of ``seeds`` (those in ``only``, if given; FUZZ_CASES, if set, picks from all of them)."""
    selected = _selected()
    failures: list[str] = []
    for seed in seeds:
        flavor = _flavor(category, seed)
        case_id = f"{category}/{flavor}/{seed}"
        if selected is None and only is not None and seed not in only:
            continue
        if (selected is not None and case_id not in selected) or case_id in KNOWN_FAILURES:
            continue
        _case, problems = run_case(fuzz, category, flavor, seed, time_limit_s=CASE_TIME_LIMIT_S)
        RUN_COUNTS[category] += 1
        failures.extend(problems)
    assert not failures, _summary(failures)


def _summary(failures: list[str]) -> str:
    """The problems grouped by kind (paths and numbers blanked), each kind with a count and its first case."""
    kinds: dict[str, list[str]] = {}
    for failure in failures:
        what = failure.split("]: ", 1)[-1]
        kind = re.sub(r"\d+", "N", re.sub(r"(/[^\s'\"\]]+)+", "<path>", what))[:160]
        kinds.setdefault(kind, []).append(failure)
    lines = [f"{len(failures)} problem(s) of {len(kinds)} kind(s); rerun a case with FUZZ_CASES=<id>:"]
    for kind, cases in sorted(kinds.items(), key=lambda item: -len(item[1])):
        lines += [f"{len(cases)} x {kind}", f"    e.g. {cases[0][:1500]}"]
    return "\n".join(lines)


def _chunks(counts: dict[str, int], base: int, size: int) -> list[tuple[str, int, int]]:
    return [
        (category, base + start, base + min(start + size, count))
        for category, count in counts.items()
        for start in range(0, count, size)
    ]


@pytest.mark.parametrize("category", list(DEFAULT_CASES))
def test_fuzz(fuzz: Fixture, category: str) -> None:
    """One case of each kind of mutation the default seeds draw: all the mutators, reader paths and writers."""
    _run_chunk(fuzz, category, range(DEFAULT_CASES[category]), only=_one_per_kind(fuzz, category))


@pytest.mark.stress
@pytest.mark.parametrize("category", list(DEFAULT_CASES))
def test_fuzz_other_default_seeds(fuzz: Fixture, category: str) -> None:
    """The default seeds whose kind of mutation a smaller seed drew already."""
    repeats = set(range(DEFAULT_CASES[category])) - _one_per_kind(fuzz, category)
    _run_chunk(fuzz, category, range(DEFAULT_CASES[category]), only=repeats)


@pytest.mark.stress
@pytest.mark.parametrize(
    ("category", "first", "last"),
    _chunks(STRESS_CASES, STRESS_SEED_BASE, STRESS_CHUNK),
    ids=lambda v: v if isinstance(v, str) else str(v),
)
def test_fuzz_stress(fuzz: Fixture, category: str, first: int, last: int, request: pytest.FixtureRequest) -> None:
    if "stress" not in (request.config.getoption("markexpr", "") or ""):
        pytest.skip("stress run: select it with -m stress")
    _run_chunk(fuzz, category, range(first, last))


class KnownFailure(AssertionError):
    """A known case failed, and only in the way its entry of KNOWN_FAILURES says."""


@pytest.mark.parametrize(
    "case_id",
    [
        pytest.param(case, marks=pytest.mark.xfail(raises=KnownFailure, strict=True, reason=reason))
        for case, (reason, _pattern) in sorted(KNOWN_FAILURES.items())
    ],
)
def test_known_failure(fuzz: Fixture, case_id: str) -> None:
    category, flavor, seed = case_id.split("/")
    _case, problems = run_case(fuzz, category, flavor, int(seed), time_limit_s=CASE_TIME_LIMIT_S)
    RUN_COUNTS[category] += 1
    pattern = KNOWN_FAILURES[case_id][1]
    unexpected = [p for p in problems if not re.search(pattern, p)]
    assert not unexpected, "problems other than the known one:\n" + "\n".join(unexpected)
    if problems:
        raise KnownFailure("\n".join(problems))


def test_documented_case_counts_are_the_real_ones() -> None:
    table = {
        m.group(1): (int(m.group(2).replace(",", "")), int(m.group(3).replace(",", "")))
        for m in re.finditer(r"^``([a-z-]+)``\s+([\d,]+)\s+([\d,]+)\s*$", __doc__ or "", re.MULTILINE)
    }
    assert table == {c: (DEFAULT_CASES[c], STRESS_CASES[c]) for c in CATEGORIES}


# --------------------------------------------------------------------------- the harness itself
#
# The suite is only worth its green if each guard fails when it should:
# these plant each kind of fault, by hand or in the library, and check that
# the guard reports it with the case id.


def test_audit_hook_flags_reads_outside_the_store(tmp_path: Path) -> None:
    store, canary = tmp_path / "store", tmp_path / "canary"
    store.mkdir()
    canary.mkdir()
    secret = canary / "secret.npy"
    secret.write_bytes(b"secret")
    (store / "inside.npy").write_bytes(b"inside")
    os.symlink(secret, store / "link.npy")
    recorder = AuditRecorder([store], canary)
    with recorder.active():
        assert (store / "inside.npy").read_bytes() == b"inside"
        os.listdir(store)
    assert recorder.violations == []
    with recorder.active():
        # O_NOFOLLOW on the link: refused by the kernel, nothing read outside.
        with pytest.raises(OSError):
            os.open(store / "link.npy", os.O_RDONLY | os.O_NOFOLLOW)
    assert recorder.violations == []
    with recorder.active():
        (store / "link.npy").read_bytes()  # follows the link out of the store
    assert len(recorder.violations) == 1 and "a canary outside the store" in recorder.violations[0]
    recorder.violations.clear()

    def open_relative(name: str, dir_fd: int) -> None:  # as the library does: a name in an open directory
        os.close(os.open(name, os.O_RDONLY, dir_fd=dir_fd))

    fd = os.open(canary, os.O_RDONLY)
    try:
        with recorder.active():
            open_relative("secret.npy", dir_fd=fd)
            os.listdir(canary)
            secret.read_bytes()
    finally:
        os.close(fd)
    assert len(recorder.violations) == 3, recorder.violations
    assert all("canary" in v for v in recorder.violations)


def test_audit_hook_flags_writes_and_deletes_outside_the_store(tmp_path: Path) -> None:
    store, canary, other = tmp_path / "store", tmp_path / "canary", tmp_path / "other"
    for folder in (store, canary, other):
        folder.mkdir()
    (canary / "victim.txt").write_text("precious")
    recorder = AuditRecorder([store], canary)
    with recorder.active():
        (store / "new.txt").write_text("fine")
        (other / "new.txt").write_text("not fine")
        os.remove(canary / "victim.txt")
        os.rename(store / "new.txt", other / "moved.txt")
        shutil.rmtree(other)
    kinds = "\n".join(recorder.violations)
    assert "open (write) of" in kinds and "os.remove (write)" in kinds and "shutil.rmtree" in kinds, kinds
    assert "os.rename (write)" in kinds, kinds
    assert not any(str(store / "new.txt") + ":" in v for v in recorder.violations if "open" in v), kinds


def test_time_limit_ends_a_hang_with_the_case_id(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # Without the limit, opening the FIFO waits for a writer forever (pytest's timeout would end it).
    with pytest.raises(CaseTimeout, match="planted/state/0"), time_limit(0.5, "planted/state/0"):
        with open(fifo, "rb"):
            pass


def test_canary_notices_any_change(fuzz: Fixture) -> None:
    canary: Canary = fuzz.canary
    assert canary.check() == []
    with open(canary.victim, "a") as fh:
        fh.write("x")
    (canary.elsewhere / ".staging-0123" / "data").unlink()
    problems = canary.check()
    assert any("victim.txt was changed" in p for p in problems), problems
    assert any("data was deleted" in p for p in problems), problems
    assert canary.check() == [], "check() makes the canaries again"


def _problems(fuzz: Fixture, category: str, seed: int, flavor: str = "state", **options: float) -> list[str]:
    case, problems = run_case(fuzz, category, flavor, seed, **options)  # type: ignore[arg-type]
    assert all(p.startswith(case.id) for p in problems), problems
    return problems


def test_a_clean_case_passes(fuzz: Fixture) -> None:
    # A filesystem case that only adds a stray file to the store root: nothing may be flagged.
    for seed in range(200):
        drawn = draw_case(fuzz, "filesystem", "state", seed)
        if drawn.description and drawn.description[0] == "stray file in the store root" and not drawn.writer:
            case, problems = run_case(fuzz, "filesystem", "state", seed)
            assert case.description == drawn.description
            assert problems == []
            return
    pytest.fail("no seed below 200 draws a stray file in the store root")


def test_planted_escape_is_reported(fuzz: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes, *args: object, **kwargs: object) -> dict[str, object]:
        raise KeyError("planted")

    monkeypatch.setattr(restartable.store.rows, "load_manifest", broken)
    problems = _problems(fuzz, "codec", 0)
    assert any("escaped with builtins.KeyError" in p for p in problems), problems
    assert any("restartable ls raised builtins.KeyError" in p for p in problems), problems


def test_planted_read_outside_the_store_is_reported(fuzz: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    original = LocalRowStore.read_payload
    secret = fuzz.canary.secret

    def peeking(self: LocalRowStore, *args: object, **kwargs: object) -> object:
        with open(secret, "rb") as fh:
            fh.read()
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalRowStore, "read_payload", peeking)
    problems = _problems(fuzz, "codec", 1)
    assert any("a canary outside the store" in p and "secret.npy" in p for p in problems), problems


def test_planted_import_is_reported(fuzz: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    original = restartable.codec.decode

    def importing(*args: object, **kwargs: object) -> object:
        sys.modules.pop("colorsys", None)
        importlib.import_module("colorsys")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(restartable.codec, "decode", importing)
    # Not imported before the case either, whatever ran earlier in this process (torch imports it lazily).
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    problems = _problems(fuzz, "codec", 2)
    assert any("reading imported modules: ['colorsys']" in p for p in problems), problems


def test_planted_row_loss_is_reported(fuzz: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    original = restartable.cli.clean_leftovers

    def greedy(store: LocalRowStore, *args: object, **kwargs: object) -> list[str]:
        rows = sorted((Path(store.location) / "commits").iterdir())
        min(path for path in rows[0].iterdir() if path.name != "manifest.json").unlink()  # a payload file
        return original(store, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(restartable.cli, "clean_leftovers", greedy)
    problems = _problems(fuzz, "codec", 3)
    assert any("gc deleted commits" in p for p in problems), problems
    assert any("of the good row" in p and "is gone" in p for p in problems), problems


def test_planted_hang_is_reported(fuzz: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    original = LocalRowStore.read_manifest

    def slow(self: LocalRowStore, *args: object, **kwargs: object) -> bytes:
        time.sleep(60)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalRowStore, "read_manifest", slow)
    problems = _problems(fuzz, "codec", 5, time_limit_s=0.5)
    assert any("hang:" in p and "ran longer than 0.5 s" in p for p in problems), problems


def test_planted_fifo_wait_is_found_and_let_go(fuzz: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader that opens a FIFO of the store for reading, blocking: found after FIFO_PATIENCE_S, not the time limit.
    original = LocalRowStore.read_manifest

    def blocking(self: LocalRowStore, *args: object, **kwargs: object) -> bytes:
        fifo = Path(self.root) / "planted-fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
            with open(fifo, "rb") as fh:
                fh.read()
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalRowStore, "read_manifest", blocking)
    problems = _problems(fuzz, "codec", 6)  # the case's time limit ends the wait
    assert any("a reader waited on the FIFO" in p and "planted-fifo" in p for p in problems), problems


def test_planted_silent_acceptance_is_reported(fuzz: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader that no longer checks payload checksums restores a flipped payload as if it were whole.
    original = restartable.store.rows.Row.read_payload

    def trusting(self: restartable.store.rows.Row, index: int, verify: bool = True) -> object:
        return original(self, index, verify=False)

    monkeypatch.setattr(restartable.store.rows.Row, "read_payload", trusting)
    for seed in range(100):
        drawn = draw_case(fuzz, "payload-body", "state", seed)
        if drawn.must_detect and drawn.victim == 2 and "flip bit" in " ".join(drawn.description):
            case, problems = run_case(fuzz, "payload-body", "state", seed)
            assert case.description == drawn.description
            assert any("unsigned damage went unnoticed" in p for p in problems), problems
            return
    pytest.fail("no seed below 100 draws an unsigned bit flip in the newest row's payload")
