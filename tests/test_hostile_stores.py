"""Hostile and broken stores: every input ends in a clear error or a fallback, nothing outside is touched.

A manifest's checksum proves integrity, not authorship: anyone who can
write a row can edit its manifest and sign it again. Each test here builds a
real store of three rows, breaks the newest one the way a person or an
attacker would (re-signing edited manifests), and asserts that a checkpoint
falls back to the newest good row with a :class:`CheckpointFallbackWarning`,
that ``restartable verify`` names the fault and exits 1, and that no file
outside the store is read as state, written or deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from restartable import (
    Checkpoint,
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    CheckpointWriteError,
    bind_checkpoint_state,
)
from restartable.cli import main as cli_main
from restartable.store import LocalRowStore, open_row, scan_rows, verify_row
from restartable.store.manifest import MANIFEST_NAME, dump_manifest

# This module damages and inspects named .npy payload files (see conftest.one_file_per_array).
pytestmark = pytest.mark.usefixtures("one_file_per_array")

NAME = "hostile"
ROWS = 3


@dataclass
class Model:
    step: int = 0
    weights: np.ndarray = field(default_factory=lambda: np.zeros(8))


def weights_for(k: int) -> np.ndarray:
    return np.arange(8, dtype=np.float64) + 100.0 * k


def make_store(store: Path, rows: int = ROWS) -> list[Path]:
    """Rows 1..rows, each a bound ``Model`` with step k; returns the row directories, oldest first."""
    with Checkpoint(NAME, path=store, mode="append") as session:
        model = bind_checkpoint_state(Model())
        for k in range(1, rows + 1):
            model.step, model.weights = k, weights_for(k)
            session.write(lead_time=k)
    return sorted((store / "commits").iterdir())


def body_of(row: Path) -> dict[str, Any]:
    return json.loads((row / MANIFEST_NAME).read_bytes())["manifest"]


def resign(row: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Edit a row's manifest body and sign it again, as anyone who can write the store can."""
    body = body_of(row)
    edit(body)
    (row / MANIFEST_NAME).unlink()
    (row / MANIFEST_NAME).write_bytes(dump_manifest(body))


def resumed_step(store: Path) -> tuple[int, list[str]]:
    """The step a fresh run resumes from, and the fallback warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Checkpoint(NAME, path=store, mode="append"):
            model = bind_checkpoint_state(Model())
            step = model.step
            np.testing.assert_array_equal(model.weights, weights_for(step))
    return step, [str(w.message) for w in caught if issubclass(w.category, CheckpointFallbackWarning)]


def assert_falls_back(store: Path, expected: str) -> None:
    step, fallbacks = resumed_step(store)
    assert step == ROWS - 1, "the newest good row is the one before the broken one"
    assert fallbacks, "the fallback must be reported"
    assert any(expected in message for message in fallbacks), fallbacks


def verify_cli(store: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli_main(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "Traceback" not in out
    return out


# --------------------------------------------------------------------------- manifest entries


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda b: b.update(files="p000000.npy"), "'files' is a str"),
        (lambda b: b["files"].__setitem__(0, ["p000000.npy", 64, "0" * 16]), "files[0] is a list"),
        (lambda b: b["files"][0].pop("name"), "files[0] has name None"),
        (lambda b: b["files"][0].pop("size"), "has size None"),
        (lambda b: b["files"][0].pop("checksum"), "has checksum None"),
        (lambda b: b["files"][0].update(size="64"), "has size '64'"),
        (lambda b: b["files"][0].update(size=True), "has size True"),
        (lambda b: b["files"][0].update(size=-1), "has size -1"),
        (lambda b: b["files"][0].update(checksum=12), "has checksum 12"),
        (lambda b: b["files"][0].update(name="sub/p000000.npy"), "not a plain file name"),
        (lambda b: b["files"][0].update(name="./p000000.npy"), "not a plain file name"),
        (lambda b: b["files"][0].update(name="../../x.npy"), "not a plain file name"),
        (lambda b: b["files"][0].update(name="/etc/passwd"), "not a plain file name"),
        (lambda b: b["files"][0].update(name="manifest.json"), "not a plain file name"),
        (lambda b: b["files"].append(dict(b["files"][0])), "a second time"),
        (lambda b: b.update(format_version="1"), "format_version '1' is not a positive integer"),
        (lambda b: b.update(format_version=1.5), "format_version 1.5"),
        (lambda b: b.update(format_version=None), "format_version None"),
        (lambda b: b.update(sequence="3"), "belongs to row"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformed_manifest_entries_are_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[dict[str, Any]], Any], expected: str
) -> None:
    rows = make_store(tmp_path)
    resign(rows[-1], edit)
    assert_falls_back(tmp_path, expected)
    assert expected in verify_cli(tmp_path, capsys)
    with pytest.raises(CheckpointCorruptError, match=r"manifest\.json"):
        open_row(rows[-1])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda b: b["states"][0].update(id=7), "has id 7"),
        (lambda b: b["states"][0].pop("value"), "has no value"),
        (lambda b: b["states"].__setitem__(0, ["id", "value"]), "states[0] is a list"),
        (lambda b: b.update(states={"a": 1}), "'states' is not a list"),
        (lambda b: b["states"].append(dict(b["states"][0])), "repeats the id"),
        (lambda b: b["states"][0].update(level="2"), "level that is not an integer"),
        (lambda b: b.update(write_count="3"), "'write_count' is '3'"),
        (lambda b: b.update(rank=None), "'rank' is None"),
        (lambda b: b.pop("metadata"), "'metadata' is missing"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformed_state_records_are_damage(
    tmp_path: Path, edit: Callable[[dict[str, Any]], Any], expected: str
) -> None:
    rows = make_store(tmp_path)
    resign(rows[-1], edit)
    assert_falls_back(tmp_path, expected)


def test_json_nested_a_thousand_deep_is_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_store(tmp_path)
    body = body_of(rows[-1])
    raw = dump_manifest(body)
    # Sign a body whose metadata is 100,000 nested lists: json.loads hits the recursion limit.
    deep = "[" * 100_000 + "]" * 100_000
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).replace('"metadata":', f'"deep":{deep},"metadata":')
    from restartable.store.files import checksum_bytes

    raw = b'{"checksum":"' + checksum_bytes(data.encode()).encode() + b'","manifest":' + data.encode() + b"}\n"
    (rows[-1] / MANIFEST_NAME).write_bytes(raw)
    assert_falls_back(tmp_path, "unparsable JSON (RecursionError")
    verify_cli(tmp_path, capsys)


# --------------------------------------------------------------------------- links and special files


def test_payload_linked_to_itself_is_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_store(tmp_path)
    payload = rows[-1] / "p000000.npy"
    payload.unlink()
    os.symlink("p000000.npy", payload)
    assert_falls_back(tmp_path, "is a symbolic link")
    assert "is a symbolic link" in verify_cli(tmp_path, capsys)


def test_payload_linked_out_of_the_store_is_never_read(tmp_path: Path) -> None:
    store, outside = tmp_path / "store", tmp_path / "outside"
    rows = make_store(store)
    outside.mkdir()
    # A well-formed payload outside, holding what an attacker wants restored,
    # with the manifest re-signed to its exact size and checksum.
    secret = outside / "secret.npy"
    np.save(secret, np.full(8, -1.0))
    from restartable.store.files import hash_file

    size, digest = hash_file(secret)
    payload = rows[-1] / "p000000.npy"
    payload.unlink()
    os.symlink(secret, payload)
    resign(rows[-1], lambda b: b["files"][0].update(size=size, checksum=digest))
    assert_falls_back(store, "is a symbolic link")
    assert verify_row(rows[-1])


def test_fifo_payload_is_refused_without_waiting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_store(tmp_path)
    payload = rows[-1] / "p000000.npy"
    size = payload.stat().st_size
    payload.unlink()
    os.mkfifo(payload)  # opening it for reading would wait for a writer forever
    assert_falls_back(tmp_path, "is a FIFO, not a regular file")
    assert "FIFO" in verify_cli(tmp_path, capsys)
    assert size > 0


def test_payload_linked_to_dev_zero_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_store(tmp_path)
    payload = rows[-1] / "p000000.npy"
    payload.unlink()
    os.symlink("/dev/zero", payload)
    problems = verify_row(rows[-1])  # would read forever if it followed the link
    assert problems and "symbolic link" in problems[0].reason
    assert_falls_back(tmp_path, "is a symbolic link")


def test_row_directory_linked_out_of_the_store_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    rows = make_store(store)
    # A copy of a good row outside, linked in under a newer row name.
    shutil.copytree(rows[-1], elsewhere)
    newer = store / "commits" / ("9" * 11 + "0" + rows[-1].name[12:])
    os.symlink(elsewhere, newer)
    resign(elsewhere, lambda b: b.update(sequence=int(newer.name[:12]), commit_id=newer.name))
    step, fallbacks = resumed_step(store)
    assert step == ROWS and any("symbolic link" in m for m in fallbacks)
    assert "symbolic link" in verify_cli(store, capsys)
    before = sorted(os.listdir(elsewhere))
    (elsewhere / "stray.txt").write_text("not in any manifest")
    assert cli_main(["gc", str(store)]) == 0
    assert sorted(os.listdir(elsewhere)) == sorted([*before, "stray.txt"]), "gc followed the link"


def test_commits_linked_out_of_the_store_is_refused(tmp_path: Path) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    make_store(elsewhere)
    store.mkdir()
    os.symlink(elsewhere / "commits", store / "commits")
    with pytest.raises(CheckpointCorruptError, match="commits is a symbolic link"):
        scan_rows(store)
    with (
        pytest.raises(CheckpointCorruptError, match="commits is a symbolic link"),
        Checkpoint(NAME, path=store, mode="append") as session,
    ):
        session.write(lead_time=0)
    assert len(os.listdir(elsewhere / "commits")) == ROWS


def test_gc_does_not_follow_a_rank_folder_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    make_store(store / "rank_000000")
    elsewhere.mkdir()
    staging_like = elsewhere / ".staging-0123"
    staging_like.mkdir()
    (staging_like / "data").write_text("someone else's")
    (elsewhere / "commits").mkdir()
    os.symlink(elsewhere, store / "rank_000001")
    assert cli_main(["gc", str(store)]) == 0
    assert (staging_like / "data").read_text() == "someone else's"
    assert not (elsewhere / ".lock").exists()
    assert LocalRowStore(store).rank_folders() == ["rank_000000"]
    with pytest.raises(CheckpointCorruptError, match="rank_000001 is a symbolic link"):
        LocalRowStore(store).child("rank_000001").list_rows()


@pytest.mark.parametrize("name", ["./p000000.npy", "sub/p000000.npy"])
def test_gc_never_deletes_a_payload_a_row_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    rows = make_store(tmp_path)
    if "/" in name.strip("./"):
        (rows[-1] / "sub").mkdir()
        shutil.copy(rows[-1] / "p000000.npy", rows[-1] / "sub" / "p000000.npy")
    resign(rows[-1], lambda b: b["files"][0].update(name=name))
    assert cli_main(["gc", str(tmp_path)]) == 0
    for row in rows:
        assert (row / "p000000.npy").is_file()
    rows[-1].joinpath(MANIFEST_NAME).unlink()
    shutil.rmtree(rows[-1])
    assert resumed_step(tmp_path)[0] == ROWS - 1


def test_lock_linked_out_of_the_store_is_not_written(tmp_path: Path) -> None:
    store, victim = tmp_path / "store", tmp_path / "victim.txt"
    make_store(store)
    victim.write_text("precious\n")
    (store / ".lock").unlink()
    os.symlink(victim, store / ".lock")
    with (
        pytest.raises(CheckpointWriteError, match="is a symbolic link"),
        Checkpoint(NAME, path=store, mode="append") as session,
    ):
        session.write(lead_time=0)
    assert victim.read_text() == "precious\n"


def test_head_linked_to_dev_zero_is_ignored(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_store(store)
    os.symlink("/dev/zero", store / "HEAD")
    assert LocalRowStore(store).read_head() is None
    fifo = tmp_path / "other"
    make_store(fifo)
    os.mkfifo(fifo / "HEAD")
    assert LocalRowStore(fifo).read_head() is None


# --------------------------------------------------------------------------- row numbers


def test_an_empty_last_numbered_row_stops_the_writer_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = make_store(tmp_path)
    (tmp_path / "commits" / ("9" * 12 + "-" + "a" * 32)).mkdir()
    for mode in ("append", "overwrite"):
        with (
            pytest.warns(CheckpointFallbackWarning, match=r"manifest\.json is missing"),
            pytest.raises(CheckpointWriteError, match="largest a row name can hold"),
            Checkpoint(NAME, path=tmp_path, mode=mode) as session,
        ):
            bind_checkpoint_state(Model())
            session.write(lead_time=99)
        assert sorted((tmp_path / "commits").iterdir())[: len(rows)] == rows, "no good row may be lost"
    assert all(len(p.name) == 45 for p in (tmp_path / "commits").iterdir()), "no 13-digit row name"
    assert resumed_step(tmp_path)[0] == ROWS


# --------------------------------------------------------------------------- printing


def test_printing_a_catalog_escapes_control_characters_and_keeps_rows_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = {
        "title\x1b[2J": "x\x07y",
        "grid": np.arange(6).reshape(2, 3),
        "record": np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")])[0],
        "half": np.float16(1.5),
        "raw": b"\xff\x00",
    }
    with Checkpoint(NAME, path=tmp_path, mode="append") as session:
        session.write(lead_time=1, **odd)
    text = str(Checkpoint(NAME, path=tmp_path, mode="append"))
    assert "\x1b" not in text and "\x07" not in text
    assert "title\\x1b[2J" in text and "x\\x07y" in text
    table = text.split("\n\n", 1)[1].splitlines()
    assert len(table) == 2, "a header and one line per row"
    assert "[[0 1 2] [3 4 5]]" in table[1]
    for command in (["ls", str(tmp_path)], ["show", str(tmp_path), "0"]):
        assert cli_main(command) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out
