"""The ``restartable`` command line: ls, show, verify, gc, --json, --version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import restartable
from restartable import Checkpoint, bind_checkpoint_state
from restartable.cli import main


@dataclass
class CliState:
    field: torch.Tensor | None = None
    counter: int = 0


def make_store(path: Path, rows: int = 3, **kwargs) -> Checkpoint:
    """A store with ``rows`` rows, each holding a distinct tensor payload."""
    kwargs.setdefault("mode", "append")
    checkpoint = Checkpoint("cli", path=path, **kwargs)
    with checkpoint as session:
        state = bind_checkpoint_state(CliState())
        for step in range(rows):
            state.field = torch.arange(8, dtype=torch.float32) + 100 * step
            state.counter = step
            session.write(lead_time=np.timedelta64(6 * step, "h"), member=step)
    return checkpoint


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def payload_files(row: Path) -> list[Path]:
    return sorted(p for p in row.iterdir() if p.name != "manifest.json")


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def console_script() -> str | None:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("restartable", path=search)


# --------------------------------------------------------------------------- ls


def test_ls_lists_rows(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=3)
    code, out, err = run_cli(capsys, "ls", str(store))
    assert code == 0, err
    assert "3 row(s)" in out
    lines = out.splitlines()
    header = [i for i, line in enumerate(lines) if "lead_time" in line]
    assert len(header) == 1
    body = [line for line in lines[header[0] + 1 :] if line.strip()]
    assert len(body) == 3
    for index, (line, entry) in enumerate(zip(body, checkpoint.catalog, strict=True)):
        cells = line.split()
        assert cells[0] == str(index)
        assert cells[1] == str(entry.sequence)


def test_ls_json(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=2)
    code, out, _ = run_cli(capsys, "ls", "--json", str(store))
    assert code == 0
    report = json.loads(out)
    assert isinstance(report, list) and len(report) == 1
    block = report[0]
    assert Path(block["path"]) == store
    assert block["damaged"] == []
    rows = block["rows"]
    assert [r["row"] for r in rows] == [0, 1]
    assert [r["commit_id"] for r in rows] == [e.commit_id for e in checkpoint.catalog]
    assert [r["sequence"] for r in rows] == [e.sequence for e in checkpoint.catalog]
    assert [r["write_count"] for r in rows] == [1, 2]
    assert [r["metadata"]["member"] for r in rows] == [0, 1]
    assert rows[1]["lead_time"] == rows[1]["metadata"]["lead_time"]
    assert "6" in str(rows[1]["lead_time"])
    for row in rows:
        assert row["level"] == 2
        assert row["states"] == [f"{CliState.__module__}.CliState"]
        assert row["bytes"] > 0
        assert row["lead_time"] is not None
        assert row["saved_at"]


def test_ls_empty_store(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Checkpoint("empty", path=store) as session:
        assert session.flush() is None  # a writer ran, nothing was committed
    code, out, _ = run_cli(capsys, "ls", "--json", str(store))
    assert code == 0
    assert json.loads(out)[0]["rows"] == []


def test_ls_per_rank_stores(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for rank in (0, 1):
        checkpoint = Checkpoint("ranks", path=store, rank=rank, world_size=2, mode="append")
        with checkpoint as session:
            for step in range(rank + 1):
                session.write(lead_time=step, rank_tag=rank)
    code, out, _ = run_cli(capsys, "ls", str(store))
    assert code == 0
    assert "rank_000000" in out and "rank_000001" in out
    code, out, _ = run_cli(capsys, "ls", "--json", str(store))
    assert code == 0
    report = json.loads(out)
    assert [Path(block["path"]).name for block in report] == ["rank_000000", "rank_000001"]
    assert [len(block["rows"]) for block in report] == [1, 2]
    # show reads the rank folder asked for.
    code, out, _ = run_cli(capsys, "show", "--json", "--rank", "1", str(store), "-1")
    assert code == 0
    shown = json.loads(out)
    assert shown["metadata"]["rank_tag"] == 1
    assert shown["metadata"]["lead_time"] == 1
    assert Path(shown["path"]).parent.parent.name == "rank_000001"


# --------------------------------------------------------------------------- show


def test_show_by_index_negative_index_and_commit_id(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=3)
    catalog = checkpoint.catalog
    for selector, expected in [("0", catalog[0]), ("2", catalog[2]), ("-1", catalog[2]), ("-3", catalog[0])]:
        code, out, err = run_cli(capsys, "show", str(store), selector)
        assert code == 0, err
        assert expected.commit_id in out
        others = [e.commit_id for e in catalog if e.commit_id != expected.commit_id]
        assert not any(other in out for other in others)
    code, out, _ = run_cli(capsys, "show", str(store), catalog[1].commit_id)
    assert code == 0
    assert catalog[1].commit_id in out
    assert "CliState" in out
    assert "pack000000.bin" in out and "(pack of 1 array)" in out


def test_show_json(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=2)
    entry = checkpoint.catalog[-1]
    code, out, _ = run_cli(capsys, "show", "--json", str(store), "-1")
    assert code == 0
    shown = json.loads(out)
    assert shown["commit_id"] == entry.commit_id
    assert shown["sequence"] == entry.sequence
    assert shown["write_count"] == 2
    assert shown["level"] == 2
    assert Path(shown["path"]) == entry.path
    assert "member" in shown["metadata"]
    assert [s["id"] for s in shown["states"]] == [f"{CliState.__module__}.CliState"]
    assert all(s["schema"] for s in shown["states"])
    names = [f["name"] for f in shown["files"]]
    assert names and all((entry.path / name).is_file() for name in names)
    for f in shown["files"]:
        assert f["size"] == (entry.path / f["name"]).stat().st_size
        assert f["checksum"]
    assert shown["library_version"] == restartable.__version__


@pytest.mark.parametrize("selector", ["3", "-4", "not-a-row"])
def test_show_unknown_row_is_a_usage_error(store: Path, capsys: pytest.CaptureFixture[str], selector: str) -> None:
    make_store(store, rows=3)
    code, _out, err = run_cli(capsys, "show", str(store), selector)
    assert code == 2
    assert selector in err


# --------------------------------------------------------------------------- verify


def test_verify_good_store(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(store, rows=3)
    code, out, _ = run_cli(capsys, "verify", str(store))
    assert code == 0
    assert "3 row(s) checked, 0 damaged" in out
    code, out, _ = run_cli(capsys, "verify", "--json", str(store))
    assert code == 0
    report = json.loads(out)
    assert report["checked"] == 3
    assert report["damaged"] == 0
    assert all(r["ok"] and r["problems"] == [] for r in report["rows"])


def test_verify_detects_flipped_byte(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=3)
    row = checkpoint.catalog[1].path
    damaged = payload_files(row)[0]
    size = damaged.stat().st_size
    flip_last_byte(damaged)
    assert damaged.stat().st_size == size
    code, out, _ = run_cli(capsys, "verify", str(store))
    assert code == 1
    assert str(damaged) in out
    assert "1 damaged" in out
    code, out, _ = run_cli(capsys, "verify", "--json", str(store))
    assert code == 1
    report = json.loads(out)
    assert report["damaged"] == 1
    bad = [r for r in report["rows"] if not r["ok"]]
    assert [Path(r["row"]) for r in bad] == [row]
    assert [Path(p["file"]) for p in bad[0]["problems"]] == [damaged]
    # Quiet mode prints the damaged row only.
    code, out, _ = run_cli(capsys, "verify", "-q", str(store))
    assert code == 1
    assert str(row) in out
    assert str(checkpoint.catalog[0].path) not in out


def test_verify_detects_damaged_manifest(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=2)
    row = checkpoint.catalog[0].path
    flip_last_byte(row / "manifest.json")
    code, out, _ = run_cli(capsys, "verify", str(store))
    assert code == 1
    assert str(row / "manifest.json") in out
    assert "1 damaged" in out


# --------------------------------------------------------------------------- gc


def _litter(store: Path, checkpoint: Checkpoint) -> tuple[Path, Path]:
    staging = store / ".staging-0123456789abcdef0123456789abcdef"
    staging.mkdir()
    (staging / "p000000.npy").write_bytes(b"half-written")
    stray = checkpoint.catalog[0].path / "stray.bin"
    stray.write_bytes(b"not listed in any manifest")
    return staging, stray


def test_gc_dry_run_removes_nothing(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=2)
    staging, stray = _litter(store, checkpoint)
    code, out, _ = run_cli(capsys, "gc", "--dry-run", str(store))
    assert code == 0
    assert str(staging) in out and str(stray) in out
    assert staging.exists() and stray.exists()
    code, out, _ = run_cli(capsys, "gc", "-n", "--json", str(store))
    assert code == 0
    report = json.loads(out)
    assert report["dry_run"] is True
    assert {Path(p) for p in report["removed"]} == {staging, stray}
    assert staging.exists() and stray.exists()


def test_gc_removes_leftovers_and_unreferenced_files(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=2)
    before = [e.commit_id for e in checkpoint.catalog]
    staging, stray = _litter(store, checkpoint)
    code, out, _ = run_cli(capsys, "verify", str(store))
    assert code == 1  # the stray file is reported as not listed
    code, out, _ = run_cli(capsys, "gc", "--json", str(store))
    assert code == 0
    report = json.loads(out)
    assert report["dry_run"] is False
    assert {Path(p) for p in report["removed"]} == {staging, stray}
    assert not staging.exists()
    assert not stray.exists()
    # Committed rows are untouched and whole.
    assert [e.commit_id for e in Checkpoint("cli", path=store).catalog] == before
    code, _, _ = run_cli(capsys, "verify", str(store))
    assert code == 0
    with Checkpoint("cli", path=store).select(0):
        assert bind_checkpoint_state(CliState()).counter == 0
    # Nothing is left to collect.
    code, out, _ = run_cli(capsys, "gc", "--json", str(store))
    assert json.loads(out)["removed"] == []


def test_gc_text_output(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=1)
    staging, stray = _litter(store, checkpoint)
    code, out, _ = run_cli(capsys, "gc", str(store))
    assert code == 0
    assert str(staging) in out and str(stray) in out
    assert "2 item(s)" in out


def test_gc_refuses_while_a_writer_holds_the_store(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_store(store, rows=1)
    staging = store / ".staging-ffffffffffffffffffffffffffffffff"
    with checkpoint:
        staging.mkdir()
        code, _, err = run_cli(capsys, "gc", str(store))
        assert code == 3
        assert err.strip()
        assert staging.exists()


# --------------------------------------------------------------------------- errors


def test_ls_exits_1_and_lists_the_good_rows_when_a_row_is_damaged(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = make_store(store)
    newest = checkpoint.catalog[-1].path / "manifest.json"
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated
    code, out, err = run_cli(capsys, "ls", str(store))
    assert code == 1 and err == ""
    assert "3 row(s)" not in out and "2 row(s)" in out and "DAMAGED" in out
    code, out, _ = run_cli(capsys, "ls", "--json", str(store))
    assert code == 1
    (block,) = json.loads(out)
    assert len(block["rows"]) == 2 and len(block["damaged"]) == 1


def test_a_file_system_refusal_is_one_line_and_exit_5(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(store)
    (store / ".lock").unlink()
    (store / ".lock").mkdir()  # the lock cannot be opened for writing, whoever runs the test
    code, out, err = run_cli(capsys, "gc", str(store))
    assert code == 5 and out == ""
    assert err.startswith("restartable gc: error: ") and len(err.strip().splitlines()) == 1
    assert ".lock" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["ls"], ["verify"], ["gc"], ["show", "-1"]])
def test_non_checkpoint_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    plain = tmp_path / "plain-folder"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    missing = tmp_path / "does-not-exist"
    for target in (plain, missing):
        argv = [command[0], str(target), *command[1:]]
        code, out, err = run_cli(capsys, *argv)
        assert code == 2
        assert str(target) in err
        assert out == ""
    # Nothing was created by looking.
    assert sorted(os.listdir(plain)) == ["notes.txt"]
    assert not missing.exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert restartable.__version__ in capsys.readouterr().out


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# --------------------------------------------------------------------------- real processes


def test_module_help_in_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "restartable.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for command in ("ls", "show", "verify", "gc"):
        assert command in result.stdout


def test_console_script(store: Path) -> None:
    script = console_script()
    if script is None:
        pytest.skip("the restartable console script is not installed")
    make_store(store, rows=2)
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0
    assert restartable.__version__ in version.stdout
    listed = subprocess.run([script, "ls", "--json", str(store)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)[0]["rows"]) == 2
    bad = subprocess.run([script, "verify", str(store / "nope")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert str(store / "nope") in bad.stderr
