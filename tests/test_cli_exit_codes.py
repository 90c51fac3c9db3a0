"""Every failure of the command line: one line on stderr and the exit code the CLI documents.

0 ok, 1 damage found, 2 usage, 3 locked by a writer, 4 object store failed,
5 local file system refused. One test per command and kind of failure, run
in-process through ``restartable.cli.main`` on real stores.

A read-only store cannot be made with ``chmod`` when the tests run as root
(root ignores permission bits), and mounting a read-only file system needs
privileges a test must not use. So the command runs on a thread that first
drops the capabilities that let root override permissions (Linux
credentials are per thread): from then on that thread is refused what any
user would be, and the rest of the test process is unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import http.server
import json
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from restartable import Checkpoint
from restartable.cli import main

STAGING = ".staging-0123456789abcdef0123456789abcdef"

# CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root ignore permission bits.
_OVERRIDES = (1 << 1) | (1 << 2) | (1 << 3)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_overrides() -> None:
    """Drop this thread's permission overrides (nothing to drop for a user who is not root)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0].effective &= ~_OVERRIDES & 0xFFFFFFFF
    data[0].permitted &= ~_OVERRIDES & 0xFFFFFFFF
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


needs_linux = pytest.mark.skipif(sys.platform != "linux", reason="per-thread capabilities are Linux's")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str, unprivileged: bool = False) -> tuple[int, str, str]:
    """``restartable ARGV``: (exit code, stdout, stderr); ``unprivileged``: as a user without overrides."""
    if not unprivileged:
        code = main(list(argv))
    else:
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                _drop_overrides()
                result["code"] = main(list(argv))
            except BaseException as exc:  # handed to the test thread
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        code = result["code"]
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str, command: str) -> str:
    assert err.startswith(f"restartable {command}: error: "), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def make_store(path: Path, rows: int = 3) -> list[str]:
    with Checkpoint("cli", path=path, mode="append") as session:
        for step in range(rows):
            session.write(lead_time=np.timedelta64(6 * step, "h"))
    return [e.commit_id for e in Checkpoint("cli", path=path).catalog]


def read_only(path: Path) -> None:
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            target = Path(folder) / name
            target.chmod(target.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture
def writable_again(tmp_path: Path) -> Iterator[None]:
    yield
    # pytest removes tmp_path later: give every folder its permissions back.
    for folder, dirs, _ in os.walk(tmp_path):
        for name in dirs:
            (Path(folder) / name).chmod(0o755)


# --------------------------------------------------------------------------- 1: damage found


@pytest.mark.parametrize("command", ["ls", "verify"])
def test_a_truncated_newest_manifest_is_damage_exit_1(
    store: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    ids = make_store(store)
    manifest = store / "commits" / ids[-1] / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-10])
    code, out, err = run_cli(capsys, command, str(store))
    assert code == 1 and err == ""
    assert "DAMAGED" in out and ids[-1] in out
    assert all(commit_id in out for commit_id in ids[:-1]) or command == "verify"


def test_show_of_a_damaged_row_is_one_line_exit_1(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = make_store(store)
    manifest = store / "commits" / ids[-1] / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-10])
    code, out, err = run_cli(capsys, "show", str(store), ids[-1])
    assert code == 1 and out == ""
    assert "manifest.json" in one_line(err, "show") and ids[-1] in err


# --------------------------------------------------------------------------- ls shows leftovers and commit ids


def test_ls_shows_commit_ids_and_an_interrupted_commit_s_leftover(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = make_store(store)
    (store / STAGING).mkdir()  # what a writer killed during a commit leaves
    code, out, err = run_cli(capsys, "ls", str(store))
    assert code == 0 and err == ""  # a leftover is not damage
    table = out.splitlines()
    assert table[1].split()[-1] == "commit_id"
    assert [line.split()[-1] for line in table[2:5]] == ids  # the ids `restartable demo` and show name
    (leftover,) = [line for line in table if "LEFTOVER" in line]
    assert str(store / STAGING) in leftover and "interrupted commit" in leftover and "restartable gc" in leftover
    code, out, _ = run_cli(capsys, "ls", "--json", str(store))
    (block,) = json.loads(out)
    assert [r["commit_id"] for r in block["rows"]] == ids
    assert block["leftovers"] == [{"path": str(store / STAGING), "kind": "interrupted commit", "commit_id": None}]
    # gc removes it, after which ls shows none.
    assert run_cli(capsys, "gc", str(store))[0] == 0
    code, out, _ = run_cli(capsys, "ls", "--json", str(store))
    assert json.loads(out)[0]["leftovers"] == [] and not (store / STAGING).exists()


# --------------------------------------------------------------------------- 2: usage


@pytest.mark.parametrize(
    "argv, named",
    [
        (["show", "{store}", "nonsense"], "'nonsense'"),
        (["show", "{store}", "7"], "row 7 is out of range"),
        (["ls", "{store}/nowhere"], "nowhere"),
        (["verify", "{store}/nowhere"], "nowhere"),
        (["gc", "{store}/nowhere"], "nowhere"),
        (["push", "{store}", "{store}/elsewhere"], "is not a URL"),
        (["pull", "{store}/elsewhere", "{store}"], "is not a URL"),
        (["import-earth2studio", "{store}/nowhere", "{store}/new"], "nowhere"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    store: Path, capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    make_store(store, rows=1)
    code, out, err = run_cli(capsys, *(a.format(store=store) for a in argv))
    assert code == 2 and out == ""
    assert named in one_line(err, argv[0])


@pytest.mark.parametrize("argv", [["ls", "--bogus", "."], ["gc"], ["show", "."], ["ls", "-o", "novalue", "."]])
def test_argument_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len(err.splitlines()) == 1 and ": error: " in err and "--help" in err


# --------------------------------------------------------------------------- 3: locked


def test_gc_while_a_writer_runs_is_one_line_exit_3(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(store, rows=1)
    with Checkpoint("cli", path=store, mode="append"):
        (store / STAGING).mkdir()  # the running writer's commit in progress
        code, out, err = run_cli(capsys, "gc", str(store))
        assert code == 3 and out == ""
        assert str(store) in one_line(err, "gc")
        assert (store / STAGING).exists()


# --------------------------------------------------------------------------- 4: object store failed


class _AccessDenied(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request, as a bucket without a grant does."""

    def _deny(self) -> None:
        body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _deny

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def denying_endpoint() -> Iterator[str]:
    pytest.importorskip("s3fs")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AccessDenied)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", [["ls"], ["verify"], ["gc"], ["show", "-1"], ["push"], ["pull"]])
def test_an_object_store_refusing_access_is_one_line_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], denying_endpoint: str, command: list[str]
) -> None:
    url = "s3://bucket/run"
    local = tmp_path / "local"
    make_store(local, rows=1)
    options = ["-o", f"endpoint_url={denying_endpoint}", "-o", "key=k", "-o", "secret=s"]
    if command[0] == "push":
        argv = ["push", str(local), url]
    elif command[0] == "pull":
        argv = ["pull", url, str(tmp_path / "pulled")]
    else:
        argv = [command[0], url, *command[1:]]
    code, out, err = run_cli(capsys, *argv, *options)
    assert code == 4 and out == ""
    assert url in one_line(err, command[0]) and "Access Denied" in err


# --------------------------------------------------------------------------- 5: local file system refused


@needs_linux
@pytest.mark.usefixtures("writable_again")
def test_gc_on_a_read_only_store_is_one_line_exit_5(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(store)
    (store / STAGING).mkdir()
    read_only(store)
    code, out, err = run_cli(capsys, "gc", str(store), unprivileged=True)
    assert code == 5 and out == ""
    assert str(store / ".lock") in one_line(err, "gc") and "Permission denied" in err
    assert (store / STAGING).exists()
    # Reading a read-only store works.
    code, out, err = run_cli(capsys, "ls", str(store), unprivileged=True)
    assert code == 0 and "LEFTOVER" in out and err == ""
    assert run_cli(capsys, "verify", str(store), unprivileged=True)[0] == 0


@needs_linux
@pytest.mark.usefixtures("writable_again")
def test_gc_that_cannot_remove_a_leftover_says_so_exit_5(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(store)
    (store / STAGING).mkdir()
    read_only(store)
    (store / ".lock").chmod(0o644)  # the lock can be taken; the folder holding the leftover is read-only
    code, out, err = run_cli(capsys, "gc", str(store), unprivileged=True)
    assert code == 5 and out == ""
    assert f"could not remove {store / STAGING}" in one_line(err, "gc")
    assert (store / STAGING).exists()


@needs_linux
@pytest.mark.usefixtures("writable_again")
@pytest.mark.parametrize("command", [["ls"], ["verify"], ["show", "0"], ["gc"]])
def test_an_unreadable_store_is_one_line_exit_5(
    store: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    make_store(store)
    (store / "commits").chmod(0)
    code, out, err = run_cli(capsys, command[0], str(store), *command[1:], unprivileged=True)
    assert code == 5 and out == ""
    assert "commits" in one_line(err, command[0]) and str(store) in err and "Permission denied" in err


def test_plot_into_a_missing_folder_is_one_line_exit_5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    make_store(store)
    target = tmp_path / "no-such-folder" / "run.html"
    code, out, err = run_cli(capsys, "ls", "--plot", str(target), str(store))
    assert code == 5 and out == ""
    assert str(target) in one_line(err, "ls")
