"""Progress that reads well on a terminal and in a batch job's log (issue 20).

Without a terminal: one plain line per event through logging (stderr when
nothing is configured), no ``\\r``, no escape codes; on a terminal: a live
bar; ``verbose=False`` / ``--quiet``: nothing. The SIGTERM notice of a
workflow starts on its own line either way. ``push``/``pull`` report each
row as it is copied, and the bytes of a large file.
"""

from __future__ import annotations

import logging
import os
import pty
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from restartable import Checkpoint
from restartable.cli import main as cli_main
from restartable.remote.sync import pull, push
from restartable.store import open_store

CHILD_TIMEOUT = 120  # a hang guard, never a timing assertion
ESCAPES = re.compile(r"[\r\x1b]")
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"

# A deterministic forecast of 6 steps (7 lead times, 6 hours apart) that
# sends itself SIGTERM right after its write number argv[2].
WORKFLOW_CHILD = """
import signal, sys
from restartable import Checkpoint
from restartable.components import Lorenz96, SyntheticData, ZarrIO
from restartable.workflows import deterministic

class StopAfter(ZarrIO):
    writes = 0

    def write(self, x, coords, names):
        super().write(x, coords, names)
        self.writes += 1
        if self.writes == int(sys.argv[2]):
            signal.raise_signal(signal.SIGTERM)

data = SyntheticData(nlat=4, nlon=8)
model = Lorenz96(lat=data.lat, lon=data.lon)
with Checkpoint("wf", path=sys.argv[1] + "/ckpt", flush_interval=2) as session:
    deterministic(["2024-01-01"], 6, model, data, StopAfter(sys.argv[1] + "/out.zarr"), device="cpu",
                  checkpoint=session)
"""


@pytest.fixture
def every_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line per event: no test depends on how fast it runs."""
    monkeypatch.setenv("RESTARTABLE_PROGRESS_INTERVAL", "0")


def _restartable_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("restartable")]


# --------------------------------------------------------------------------- workflows


def test_an_ensemble_without_a_terminal_logs_one_plain_line_per_event(
    tmp_path: Path, every_event: None, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("zarr")
    from restartable.components import GaussianPerturbation, Lorenz96, SyntheticData, ZarrIO
    from restartable.workflows import ensemble

    caplog.set_level(logging.INFO, logger="restartable")
    data = SyntheticData(nlat=4, nlon=8)
    with Checkpoint("ens", path=tmp_path / "ckpt", flush_interval=2) as session:
        model, noise = Lorenz96(lat=data.lat, lon=data.lon), GaussianPerturbation(std=0.1, seed=0)
        ensemble(["2024-01-01"], 2, 4, model, data, ZarrIO(tmp_path / "out.zarr"), noise, batch_size=2,
                 device="cpu", checkpoint=session)  # fmt: skip

    assert {r.name for r in caplog.records if r.name.startswith("restartable")} == {"restartable.workflows"}
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "restartable.workflows")
    # Each batch writes lead times 0, 6, 12 hours; a row is committed every second write.
    assert _restartable_messages(caplog) == [
        "ensemble members 0-1: 1/3 lead times (33%), lead time 0 hours written",
        "ensemble members 0-1: 2/3 lead times (66%), lead time 6 hours committed",
        "ensemble members 0-1: 3/3 lead times (100%), lead time 12 hours written",
        "ensemble: 1/2 member batches (50%), members 0-1 complete",
        "ensemble members 2-3: 1/3 lead times (33%), lead time 0 hours committed",
        "ensemble members 2-3: 2/3 lead times (66%), lead time 6 hours written",
        "ensemble members 2-3: 3/3 lead times (100%), lead time 12 hours committed",
        "ensemble: 2/2 member batches (100%), members 2-3 complete",
    ]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""  # logging was configured (by pytest): nothing else


def test_lines_are_rate_limited_but_keep_the_first_and_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("zarr")
    from restartable.components import Lorenz96, SyntheticData, ZarrIO
    from restartable.workflows import deterministic

    monkeypatch.setenv("RESTARTABLE_PROGRESS_INTERVAL", "3600")  # no second line is ever due
    caplog.set_level(logging.INFO, logger="restartable")
    data = SyntheticData(nlat=4, nlon=8)
    deterministic(
        ["2024-01-01"], 5, Lorenz96(lat=data.lat, lon=data.lon), data, ZarrIO(tmp_path / "o.zarr"), device="cpu"
    )
    assert _restartable_messages(caplog) == [
        "deterministic: 1/6 lead times (16%), lead time 0 hours written",
        "deterministic: 6/6 lead times (100%), lead time 30 hours written",
    ]


def test_verbose_false_reports_nothing(
    tmp_path: Path, every_event: None, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("zarr")
    from restartable.components import Lorenz96, SyntheticData, ZarrIO
    from restartable.workflows import deterministic

    caplog.set_level(logging.DEBUG)
    data = SyntheticData(nlat=4, nlon=8)
    model = Lorenz96(lat=data.lat, lon=data.lon)
    deterministic(["2024-01-01"], 3, model, data, ZarrIO(tmp_path / "o.zarr"), device="cpu", verbose=False)
    assert _restartable_messages(caplog) == []
    assert capsys.readouterr().err == ""


def test_a_batch_job_without_logging_gets_plain_lines_on_stderr_and_the_stop_notice_on_its_own_line(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("zarr")
    env = dict(os.environ, RESTARTABLE_PROGRESS_INTERVAL="0")
    result = subprocess.run(
        [sys.executable, "-c", WORKFLOW_CHILD, str(tmp_path), "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 75, result.stderr
    assert not ESCAPES.search(result.stderr), repr(result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 4, result.stderr
    expected = [
        "deterministic: 1/7 lead times (14%), lead time 0 hours written",
        "deterministic: 2/7 lead times (28%), lead time 6 hours committed",
        "deterministic: 3/7 lead times (42%), lead time 12 hours written",
    ]
    for line, text in zip(lines, expected, strict=False):
        assert re.fullmatch(f"{STAMP} {re.escape(text)}", line), line
    assert re.fullmatch(
        r"restartable: SIGTERM received; stopped after lead time 12 hours, progress committed \(row \S+\)\. "
        r"Run the same command again to resume\.",
        lines[3],
    ), lines[3]


def _run_on_a_terminal(*argv: str) -> tuple[int, str]:
    """Run ``python argv`` with a pseudo-terminal as stderr; its exit status and what it drew there."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave
        )
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        code = process.wait(timeout=CHILD_TIMEOUT)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_a_bar_is_drawn_and_the_stop_notice_clears_it(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("zarr")
    pytest.importorskip("tqdm")
    code, drawn = _run_on_a_terminal("-c", WORKFLOW_CHILD, str(tmp_path), "3")
    assert code == 75, drawn
    assert re.search(r"\rdeterministic: +\d+%\|.*\| \d/7 ", drawn), repr(drawn)  # a bar, redrawn in place
    assert "lead times (" not in drawn  # no log lines on a terminal
    notice = drawn.index("restartable: SIGTERM received; stopped after lead time 12 hours")
    before = drawn[:notice]
    assert before.endswith("\r"), repr(drawn)  # the notice starts at the start of a line...
    erased = before[:-1].rsplit("\r", 1)[-1]
    assert erased.strip() == "", repr(drawn)  # ...which was cleared of the bar


# --------------------------------------------------------------------------- push and pull


@dataclass
class Big:
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _local_rows(path: Path, rows: int, size: int = 8) -> list[str]:
    checkpoint = Checkpoint("sync", path=path, mode="append", level=1)
    with checkpoint as session:
        state = session.bind(Big())
        for step in range(1, rows + 1):
            state.values = np.full(size, float(step))
            session.write(lead_time=step)
    return [e.commit_id for e in checkpoint.catalog]


class _Watch(logging.Handler):
    """Records each sync line with the rows its destination held when the line was logged."""

    def __init__(self, destination: str | Path) -> None:
        super().__init__(logging.INFO)
        self.destination = destination
        self.seen: list[tuple[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), len(open_store(self.destination).list_rows())))


@pytest.fixture
def watch() -> object:
    handlers: list[_Watch] = []
    logger = logging.getLogger("restartable.remote.sync")
    level = logger.level

    def start(destination: str | Path) -> _Watch:
        handler = _Watch(destination)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        handlers.append(handler)
        return handler

    yield start
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


def test_push_and_pull_log_a_line_per_row_as_they_go(tmp_path: Path, every_event: None, watch) -> None:  # type: ignore[no-untyped-def]
    rows = _local_rows(tmp_path / "local", 4)
    url = f"memory://progress-{uuid.uuid4().hex}/run"

    pushed = watch(url)
    report = push(tmp_path / "local", url, verbose=True)
    assert report.copied == rows
    # One line per row, each logged once that row was at the destination and before the next one was.
    assert [held for _, held in pushed.seen] == [1, 2, 3, 4]
    for k, ((message, _), row) in enumerate(zip(pushed.seen, rows, strict=True), start=1):
        assert re.fullmatch(rf"push: {k}/4 rows \({k * 25}%\), {row} copied \(\d+ B\)", message), message

    pulled = watch(tmp_path / "pulled")
    report = pull(url, tmp_path / "pulled", verbose=True)
    assert report.copied == rows
    assert [held for _, held in pulled.seen] == [1, 2, 3, 4]
    for k, ((message, _), row) in enumerate(zip(pulled.seen, rows, strict=True), start=1):
        assert re.fullmatch(rf"pull: {k}/4 rows \({k * 25}%\), {row} copied \(\d+ B\)", message), message

    again = watch(url)
    push(tmp_path / "local", url, verbose=True)
    assert [m for m, _ in again.seen][-1] == f"push: 4/4 rows (100%), {rows[-1]} already there"


def test_a_large_file_reports_its_bytes_while_it_is_copied(tmp_path: Path, every_event: None, watch) -> None:  # type: ignore[no-untyped-def]
    (row,) = _local_rows(tmp_path / "local", 1, size=(20 << 20) // 8)  # one 20 MiB array file
    url = f"memory://progress-{uuid.uuid4().hex}/run"
    seen = watch(url)
    push(tmp_path / "local", url, verbose=True)
    messages = [m for m, _ in seen.seen]
    notes = [m for m in messages if " of 20.0 MiB (" in m]
    assert notes, messages
    assert all(m.startswith(f"push: 0/1 rows (0%), {row}/") for m in notes)
    assert notes[-1].endswith(": 20.0 MiB of 20.0 MiB (100%)")
    assert messages[-1].startswith(f"push: 1/1 rows (100%), {row} copied (20.0 MiB")


def test_push_and_pull_quiet_print_nothing(
    tmp_path: Path, every_event: None, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _local_rows(tmp_path / "local", 3)
    url = f"memory://progress-{uuid.uuid4().hex}/run"
    caplog.set_level(logging.DEBUG)

    assert cli_main(["push", "-q", str(tmp_path / "local"), url]) == 0
    assert cli_main(["pull", "--quiet", url, str(tmp_path / "pulled")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert _restartable_messages(caplog) == []
    assert [name for _, name in open_store(tmp_path / "pulled").list_rows()] == rows

    # Without --quiet the same command reports each row.
    assert cli_main(["pull", url, str(tmp_path / "again")]) == 0
    assert len([m for m in _restartable_messages(caplog) if m.startswith("pull: ")]) == 3
    assert capsys.readouterr().out.count("copied  ") == 3
