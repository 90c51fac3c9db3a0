"""Damaged rows on disk: readers fall back, verify names the file, nothing is unpickled.

Every test builds a real append-mode store of several rows, each holding a
bound state with a numpy array and a torch tensor, then damages files of the
newest row the way disks and people do.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from restartable import (
    Checkpoint,
    CheckpointCleanupWarning,
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    bind_checkpoint_state,
)
from restartable.cli import main as cli_main
from restartable.store import verify_row

# This module damages and inspects named .npy payload files (see conftest.one_file_per_array).
pytestmark = pytest.mark.usefixtures("one_file_per_array")

ROWS = 4
NAME = "damage"


def array_for(k: int) -> np.ndarray:
    return np.arange(64 * 32, dtype=np.float64).reshape(64, 32) * 0.25 + 1000.0 * k


def tensor_for(k: int) -> torch.Tensor:
    return torch.arange(16 * 8, dtype=torch.float32).reshape(16, 8) - float(k)


@dataclass
class DamageState:
    step: int = 0
    array: np.ndarray = field(default_factory=lambda: np.zeros((64, 32)))
    tensor: torch.Tensor = field(default_factory=lambda: torch.zeros(16, 8))


def assert_state_is(state: DamageState, k: int) -> None:
    assert state.step == k
    np.testing.assert_array_equal(state.array, array_for(k))
    assert torch.equal(state.tensor, tensor_for(k))


def make_store(store: Path, rows: int = ROWS) -> list:
    with Checkpoint(NAME, path=store, mode="append") as session:
        state = bind_checkpoint_state(DamageState())
        for k in range(1, rows + 1):
            state.step, state.array, state.tensor = k, array_for(k), tensor_for(k)
            session.write(lead_time=k)
    entries = list(Checkpoint(NAME, path=store, mode="append").catalog)
    assert [e.lead_time for e in entries] == list(range(1, rows + 1))
    newest = entries[-1].path
    # The payload layout this module damages: array first, tensor second.
    np.testing.assert_array_equal(np.load(newest / "p000000.npy", allow_pickle=False), array_for(rows))
    np.testing.assert_array_equal(np.load(newest / "p000001.npy", allow_pickle=False), tensor_for(rows).numpy())
    assert sorted(os.listdir(newest)) == ["manifest.json", "p000000.npy", "p000001.npy"]
    return entries


def restore(store: Path, row: int) -> DamageState:
    """State of catalog row ``row``, read by a fresh reader (no lock taken)."""
    session = Checkpoint(NAME, path=store, mode="append").select(row)
    state = session.bind(DamageState())
    assert state.checkpoint_state_loaded
    return state.checkpoint_dataclass


# --------------------------------------------------------------------------- damage

FILES = {"manifest": "manifest.json", "array": "p000000.npy", "tensor": "p000001.npy"}
DAMAGES = ["truncate", "delete", "flip_middle", "flip_header"]


def _xor_byte(path: Path, offset: int, mask: int) -> None:
    with open(path, "r+b") as fh:  # in place: same inode, same size
        fh.seek(offset)
        old = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([old ^ mask]))


def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "truncate":
        os.truncate(path, size // 2)
    elif how == "delete":
        path.unlink()
    elif how == "flip_middle":
        _xor_byte(path, size // 2, 0x01)  # one bit: a digit stays a digit, a float stays a float
    elif how == "flip_header":
        data = path.read_bytes()
        if path.suffix == ".npy":
            # The dtype kind: '<f8' becomes '<i8' (same size, a valid header,
            # different meaning). Only the checksum can catch it.
            offset = data.index(b"'descr': '") + len(b"'descr': '") + 1
            assert data[offset : offset + 1] == b"f"
            _xor_byte(path, offset, ord("f") ^ ord("i"))
        else:
            # One hex digit of the manifest's own checksum field: framing
            # stays valid, the body is untouched.
            offset = len(b'{"checksum":"') + 5
            old = data[offset]
            new = ord("0") if old != ord("0") else ord("1")
            _xor_byte(path, offset, old ^ new)
    else:  # pragma: no cover
        raise ValueError(how)


def verify_report(store: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, int, dict]:
    code = cli_main(["verify", str(store)])
    text = capsys.readouterr().out
    json_code = cli_main(["verify", str(store), "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, text, json_code, report


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", list(FILES))
def test_damaged_newest_row(store: Path, kind: str, how: str, capsys: pytest.CaptureFixture) -> None:
    entries = make_store(store)
    newest, previous = entries[-1], entries[-2]
    target = newest.path / FILES[kind]
    damage(target, how)
    # A byte flip in a payload keeps every size right: the catalog (which
    # checks manifests and sizes) still lists the row; only reading its
    # payloads finds the damage.
    listed_until_read = kind != "manifest" and how.startswith("flip")

    # (a) the catalog
    reader = Checkpoint(NAME, path=store, mode="append")
    if listed_until_read:
        listed = reader.catalog
        assert [e.commit_id for e in listed] == [e.commit_id for e in entries]
    else:
        with pytest.warns(CheckpointFallbackWarning, match=re.escape(newest.commit_id)):
            listed = reader.catalog
        assert [e.commit_id for e in listed] == [e.commit_id for e in entries[:-1]]
        # and the newest whole row is the previous one (this reader warned once already)
        restored = reader.select(-1).bind(DamageState())
        assert restored.checkpoint_state_loaded
        assert_state_is(restored.checkpoint_dataclass, ROWS - 1)

    # (a) a session falls back to the previous row and restores its values
    with pytest.warns(CheckpointFallbackWarning, match=re.escape(newest.commit_id)):
        with Checkpoint(NAME, path=store, mode="append") as session:
            assert session.commit_id == previous.commit_id
            assert session.lead_time == previous.lead_time == ROWS - 1
            state = bind_checkpoint_state(DamageState())
            assert state.checkpoint_state_loaded
            assert_state_is(state.checkpoint_dataclass, ROWS - 1)

    # (b) verify exits 1 and names exactly the damaged file
    code, text, json_code, report = verify_report(store, capsys)
    assert code == 1 and json_code == 1, text
    assert f"DAMAGED {newest.path}" in text
    problem_lines = [line for line in text.splitlines() if line.startswith("  ")]
    assert problem_lines, text
    assert all(line.startswith(f"  {target}: ") for line in problem_lines), text
    for name in FILES.values():
        if name != FILES[kind]:
            assert str(newest.path / name) not in text, text
    for entry in entries[:-1]:
        assert f"ok      {entry.path}" in text
    assert report["checked"] == ROWS
    assert report["damaged"] == 1
    bad = [row for row in report["rows"] if not row["ok"]]
    assert [row["row"] for row in bad] == [str(newest.path)]
    assert {p["file"] for p in bad[0]["problems"]} == {str(target)}

    # (c) selecting the damaged row names the file
    if listed_until_read:
        with pytest.raises(CheckpointCorruptError) as info:
            Checkpoint(NAME, path=store, mode="append").select(-1)
        assert str(target) in str(info.value)
        assert info.value.file == str(target)
        assert info.value.row == str(newest.path)

    # No committed row was lost: every older row still verifies and restores.
    for index, entry in enumerate(entries[:-1]):
        assert verify_row(entry.path) == []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointFallbackWarning)
            assert_state_is(restore(store, index), index + 1)

    # The next writer continues from the previous row and keeps every row.
    with pytest.warns(CheckpointFallbackWarning):
        with Checkpoint(NAME, path=store, mode="append") as session:
            state = bind_checkpoint_state(DamageState())
            assert_state_is(state.checkpoint_dataclass, ROWS - 1)
            state.step, state.array, state.tensor = 99, array_for(99), tensor_for(99)
            written = session.write(lead_time=99)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointFallbackWarning)
        after = Checkpoint(NAME, path=store, mode="append").catalog
        ids = [e.commit_id for e in after]
        for entry in entries[:-1]:
            assert entry.commit_id in ids
        assert ids[-1] == written.commit_id
        assert_state_is(restore(store, -1), 99)
    assert verify_row(written.path) == []


def test_damage_in_an_older_row_does_not_hide_newer_rows(store: Path, capsys: pytest.CaptureFixture) -> None:
    entries = make_store(store)
    target = entries[1].path / "p000000.npy"
    damage(target, "flip_middle")
    with Checkpoint(NAME, path=store, mode="append") as session:  # no warning: the newest row is whole
        assert session.commit_id == entries[-1].commit_id
        assert_state_is(bind_checkpoint_state(DamageState()).checkpoint_dataclass, ROWS)
    with pytest.raises(CheckpointCorruptError, match=re.escape(str(target))):
        Checkpoint(NAME, path=store, mode="append").select(1)
    code, _text, _, report = verify_report(store, capsys)
    assert code == 1 and report["damaged"] == 1
    assert [r["row"] for r in report["rows"] if not r["ok"]] == [str(entries[1].path)]


# --------------------------------------------------------------------------- pickle


class Evil:
    """Unpickling this runs code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def evil_npy(marker: Path, size: int | None = None) -> bytes:
    """An ``.npy`` file of a pickled object array, padded to ``size`` bytes if given."""

    def build(pad: int) -> bytes:
        array = np.empty(2, dtype=object)
        array[0] = Evil(marker)
        array[1] = b"\0" * pad
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=True)
        return buffer.getvalue()

    data = build(0)
    if size is None:
        return data
    pad = size - len(data)
    for _ in range(10):
        data = build(max(pad, 0))
        if len(data) == size:
            return data
        pad += size - len(data)
    raise AssertionError(f"could not pad the pickle to {size} bytes")


@pytest.mark.parametrize("same_size", [True, False], ids=["same-size", "other-size"])
def test_pickled_object_payload_is_refused_and_never_unpickled(
    store: Path, tmp_path: Path, same_size: bool, capsys: pytest.CaptureFixture
) -> None:
    entries = make_store(store)
    newest = entries[-1]
    target = newest.path / "p000000.npy"
    marker = tmp_path / "unpickled-marker"
    payload = evil_npy(marker, target.stat().st_size if same_size else None)
    # The payload is live: unpickling a copy of it creates its marker.
    control_marker = tmp_path / "control-marker"
    control = tmp_path / "control.npy"
    control.write_bytes(evil_npy(control_marker))
    np.load(control, allow_pickle=True)
    assert control_marker.exists()

    with open(target, "r+b") as fh:  # replace the bytes, update nothing else
        fh.truncate(0)
        fh.write(payload)

    if same_size:
        # Sizes match the manifest: the row is listed, reading it is refused.
        assert len(Checkpoint(NAME, path=store, mode="append").catalog) == ROWS
        with pytest.raises(CheckpointCorruptError) as info:
            Checkpoint(NAME, path=store, mode="append").select(-1)
        assert str(target) in str(info.value)
        assert info.value.file == str(target)
    else:
        with pytest.warns(CheckpointFallbackWarning, match=re.escape(newest.commit_id)):
            assert len(Checkpoint(NAME, path=store, mode="append").catalog) == ROWS - 1
    assert not marker.exists()

    with pytest.warns(CheckpointFallbackWarning):
        with Checkpoint(NAME, path=store, mode="append") as session:
            assert session.commit_id == entries[-2].commit_id
            assert_state_is(bind_checkpoint_state(DamageState()).checkpoint_dataclass, ROWS - 1)
    assert not marker.exists()

    code, _text, _, report = verify_report(store, capsys)
    assert code == 1
    assert report["damaged"] == 1
    (bad,) = [r for r in report["rows"] if not r["ok"]]
    assert {p["file"] for p in bad["problems"]} == {str(target)}
    # show reads the manifest only; with the wrong size it reports the damage.
    assert cli_main(["show", str(store), newest.commit_id]) == (0 if same_size else 1)
    capsys.readouterr()
    assert not marker.exists()


# --------------------------------------------------------------------------- leftovers


def test_leftover_staging_and_trash_dirs(store: Path, capsys: pytest.CaptureFixture) -> None:
    entries = make_store(store)
    newest = entries[-1].path
    # A staging dir that even holds a complete-looking row, and a trash dir
    # that holds a copy of a real row: readers must ignore both.
    staging = store / ".staging-x"
    shutil.copytree(newest, staging)
    (staging / "p000002.npy").write_bytes(b"half a payload")
    trash = store / ".trash-y"
    shutil.copytree(entries[0].path, trash)

    listed = Checkpoint(NAME, path=store, mode="append").catalog  # no warning
    assert [e.commit_id for e in listed] == [e.commit_id for e in entries]
    assert_state_is(restore(store, -1), ROWS)
    code, text, _, report = verify_report(store, capsys)
    assert code == 0 and report["checked"] == ROWS, text

    with pytest.warns(CheckpointCleanupWarning, match="staging-x"):
        with Checkpoint(NAME, path=store, mode="append") as session:
            assert not staging.exists()
            assert not trash.exists()
            state = bind_checkpoint_state(DamageState())
            assert_state_is(state.checkpoint_dataclass, ROWS)
            state.step, state.array, state.tensor = ROWS + 1, array_for(ROWS + 1), tensor_for(ROWS + 1)
            session.write(lead_time=ROWS + 1)
    after = Checkpoint(NAME, path=store, mode="append").catalog
    assert [e.commit_id for e in after[:-1]] == [e.commit_id for e in entries]
    assert after[-1].lead_time == ROWS + 1
    assert sorted(n for n in os.listdir(store) if n.startswith(".")) == [".lock"]
    for entry in after:
        assert verify_row(entry.path) == []


def test_incomplete_row_without_manifest(store: Path, capsys: pytest.CaptureFixture) -> None:
    entries = make_store(store)
    incomplete = store / "commits" / f"{entries[-1].sequence + 1:012d}-{'ab' * 16}"
    incomplete.mkdir()
    shutil.copy(entries[-1].path / "p000000.npy", incomplete / "p000000.npy")
    manifest = incomplete / "manifest.json"

    reader = Checkpoint(NAME, path=store, mode="append")
    with pytest.warns(CheckpointFallbackWarning, match=re.escape(incomplete.name)):
        listed = reader.catalog
    assert [e.commit_id for e in listed] == [e.commit_id for e in entries]
    session = reader.select(-1)  # warned once per reader: no second warning
    assert session.commit_id == entries[-1].commit_id
    assert_state_is(session.bind(DamageState()).checkpoint_dataclass, ROWS)

    code, _text, _, report = verify_report(store, capsys)
    assert code == 1
    (bad,) = [r for r in report["rows"] if not r["ok"]]
    assert bad["row"] == str(incomplete)
    assert {p["file"] for p in bad["problems"]} == {str(manifest)}

    with pytest.warns(CheckpointFallbackWarning, match=re.escape(incomplete.name)):
        with Checkpoint(NAME, path=store, mode="append") as session:
            assert session.commit_id == entries[-1].commit_id
            state = bind_checkpoint_state(DamageState())
            assert_state_is(state.checkpoint_dataclass, ROWS)
            state.step, state.array, state.tensor = ROWS + 1, array_for(ROWS + 1), tensor_for(ROWS + 1)
            written = session.write(lead_time=ROWS + 1)
    with pytest.warns(CheckpointFallbackWarning, match=re.escape(incomplete.name)):
        after = Checkpoint(NAME, path=store, mode="append").catalog
    assert [e.commit_id for e in after] == [e.commit_id for e in entries] + [written.commit_id]
    assert written.sequence > entries[-1].sequence
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointFallbackWarning)
        assert_state_is(restore(store, -1), ROWS + 1)
    for entry in after:
        assert verify_row(entry.path) == []
