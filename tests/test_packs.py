"""Packed payloads (row format 2): the small arrays of a row share one file.

Round trips of thousands of arrays of every kind through every writer
(the engine on each store, sync and async ``Checkpoint``, S3, iterator
checkpoints), damage named down to the array, hostile ``arrays`` entries
refused, a kill mid-commit, linking of unchanged packs, and the documented
way to read a pack with numpy alone.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from restartable import Checkpoint, bind_checkpoint_state
from restartable.cli import main as cli_main
from restartable.errors import CheckpointCorruptError, CheckpointFallbackWarning
from restartable.iterators import IteratorCheckpoint
from restartable.store import FaultyRowStore, RowWriter, Snapshot, open_store, packs, scan_rows, verify_row
from restartable.store.manifest import MANIFEST_NAME, ManifestError, dump_manifest, load_manifest

STRUCTURED = np.dtype([("i", "<i8"), ("x", "<f4", (2,)), ("s", "S3")])


def mixed_arrays(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` small arrays cycling through every kind a state holds."""
    rng = np.random.default_rng(seed)
    makers = [
        lambda: rng.standard_normal((3, 5)).astype(np.float32),
        lambda: np.array(rng.integers(-9, 9), dtype=np.int16),  # 0-d
        lambda: np.empty((0, 4), dtype=np.complex64),  # empty
        lambda: rng.standard_normal((9, 8))[::2, ::3],  # not contiguous
        lambda: np.asfortranarray(rng.standard_normal((4, 3))),
        lambda: rng.integers(0, 2, 7).astype(bool),
        lambda: np.arange(5, dtype=">u4") * int(rng.integers(1, 9)),  # big-endian
        lambda: np.array([(int(rng.integers(9)), (1.5, -2.0), b"ab")], dtype=STRUCTURED),
        lambda: np.array(["é", "row", str(rng.integers(9))], dtype="<U3"),
        lambda: np.array(["2020-01-01T00", "NaT"], dtype="datetime64[h]"),
        lambda: (rng.standard_normal(6) + 1j * rng.standard_normal(6)).astype(np.complex128),
        lambda: rng.standard_normal(1).astype(np.float16),
        lambda: np.array(7, dtype=np.uint8),  # a single byte: aligned without padding
    ]
    return {f"a{i:05d}": makers[i % len(makers)]() for i in range(count)}


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))


# ------------------------------------------------------------------ the engine


def test_thousands_of_mixed_arrays_round_trip_through_one_pack(tmp_path: Path) -> None:
    arrays = list(mixed_arrays(3000).values())
    large = np.arange(packs.PACK_BELOW_BYTES // 8 + 1, dtype=np.float64)  # just over: a file of its own
    payloads = [*arrays[:1500], large, *arrays[1500:]]
    with_writer = RowWriter(tmp_path / "store")
    try:
        with_writer.persist(Snapshot(body={}, payloads=payloads))
    finally:
        with_writer.close()
    row = scan_rows(tmp_path / "store").rows[-1]
    assert row.body["format_version"] == 2
    assert [entry["name"] for entry in row.files] == ["p001500.npy", "pack000000.bin"]
    assert [index for index, entry in enumerate(row.arrays.entries) if entry is None] == [1500]
    loaded = row.load_all_payloads()
    for index, expected in enumerate(payloads):
        assert_same(loaded(index), expected)
    assert verify_row(tmp_path / "store", row.name) == []
    # Every packed array starts aligned for its dtype, and a view of the pack is what comes back.
    for index, entry in enumerate(row.arrays.entries):
        if entry is not None:
            assert entry["offset"] % packs.member_align(entry["size"]) == 0
            array = loaded(index)
            if array.size:
                assert array.flags.aligned and array.base is not None


def test_a_row_without_small_arrays_stays_in_format_1(tmp_path: Path) -> None:
    writer = RowWriter(tmp_path / "store", pack_below=0)
    try:
        writer.persist(Snapshot(body={}, payloads=list(mixed_arrays(20).values())))
    finally:
        writer.close()
    row = scan_rows(tmp_path / "store").rows[-1]
    assert row.body["format_version"] == 1 and "arrays" not in row.body
    assert [entry["name"] for entry in row.files] == [f"p{i:06d}.npy" for i in range(20)]


def test_packs_close_at_their_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packs, "PACK_BYTES", 4096)
    payloads = [np.full(96, i, dtype=np.float64) for i in range(40)]  # 768 bytes each: 5 per pack
    writer = RowWriter(tmp_path / "store")
    try:
        writer.persist(Snapshot(body={}, payloads=payloads))
    finally:
        writer.close()
    row = scan_rows(tmp_path / "store").rows[-1]
    assert [entry["name"] for entry in row.files] == [f"pack{k:06d}.bin" for k in range(8)]
    assert all(entry["size"] <= 4096 for entry in row.files)
    loaded = row.load_all_payloads()
    for index, expected in enumerate(payloads):
        assert_same(loaded(index), expected)


def test_the_documented_numpy_recipe_reads_a_packed_array(tmp_path: Path) -> None:
    """``restartable.store.packs`` shows how to read a pack without restartable: it must work as written."""
    payloads = [np.arange(12, dtype=np.float32).reshape(3, 4) * k for k in range(10)]
    writer = RowWriter(tmp_path / "store")
    try:
        writer.persist(Snapshot(body={}, payloads=payloads))
    finally:
        writer.close()
    row = Path(scan_rows(tmp_path / "store").rows[-1].path)
    body = json.loads((row / "manifest.json").read_text())["manifest"]
    entry = body["arrays"][7]
    raw = np.fromfile(row / entry["file"], np.uint8, entry["size"], offset=entry["offset"])
    array = raw.view(entry["descr"]).reshape(entry["shape"])
    assert_same(array, payloads[7])


def test_an_unchanged_pack_is_linked_and_a_changed_one_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packs, "PACK_BYTES", 4096)
    payloads = [np.full(96, i, dtype=np.float64) for i in range(10)]  # two packs of 5
    writer = RowWriter(tmp_path / "store", link_unchanged=True)
    try:
        writer.persist(Snapshot(body={}, payloads=payloads))
        payloads[7] += 1  # in the second pack
        writer.persist(Snapshot(body={}, payloads=payloads))
    finally:
        writer.close()
    first, second = (Path(row.path) for row in scan_rows(tmp_path / "store").rows)
    inode = lambda row, name: os.stat(row / name).st_ino  # noqa: E731
    assert inode(first, "pack000000.bin") == inode(second, "pack000000.bin")
    assert inode(first, "pack000001.bin") != inode(second, "pack000001.bin")
    assert_same(scan_rows(tmp_path / "store").rows[-1].read_payload(7), payloads[7])


def test_padding_between_arrays_is_zero(tmp_path: Path) -> None:
    """A pack's bytes depend on its arrays only (no stale memory reaches the disk, and unchanged packs link)."""
    writer = RowWriter(tmp_path / "store")
    try:
        writer.persist(Snapshot(body={}, payloads=[np.full(3, 0xFF, np.uint8) for _ in range(5)]))
        writer.persist(Snapshot(body={}, payloads=[np.full(3, 0xFF, np.uint8) for _ in range(5)]))
    finally:
        writer.close()
    for row in scan_rows(tmp_path / "store").rows:
        data = (Path(row.path) / "pack000000.bin").read_bytes()
        assert data == b"".join(b"\xff\xff\xff\x00" for _ in range(4)) + b"\xff\xff\xff"


def test_a_pack_is_read_once_while_its_arrays_live_and_never_held_after(tmp_path: Path) -> None:
    payloads = [np.arange(50, dtype=np.int32) + k for k in range(20)]
    writer = RowWriter(tmp_path / "store")
    try:
        writer.persist(Snapshot(body={}, payloads=payloads))
    finally:
        writer.close()
    counting = FaultyRowStore(open_store(tmp_path / "store"), operations=frozenset({"read_file"}))
    row = scan_rows(counting).rows[-1]
    reads = lambda: counting.log.count("read_file")  # noqa: E731
    first = row.read_payload(3)
    second = row.read_payload(4)  # lazily, one at a time, as a session restores a component
    assert reads() == 1 and np.shares_memory(first, second) is False
    again = row.read_payload(3)  # a second reader of the same array gets its own memory
    assert reads() == 1 and not np.shares_memory(first, again)
    first += 1
    assert_same(again, payloads[3])
    assert_same(second, payloads[4])
    del first, second, again
    gc.collect()
    assert_same(row.read_payload(5), payloads[5])
    assert reads() == 2  # the row kept no memory once its arrays were gone


# ------------------------------------------------------------------ every writer


@dataclass
class ModelState:
    arrays: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0


def model_state(count: int, step: int) -> ModelState:
    generator = torch.Generator().manual_seed(step)
    tensors = {
        f"layer{i}.weight": torch.randn(4, 4, generator=generator).to(
            [torch.float32, torch.bfloat16, torch.float16, torch.int64][i % 4]
        )
        for i in range(count // 2)
    }
    return ModelState(arrays=mixed_arrays(count // 2, seed=step), tensors=tensors, step=step)


def assert_same_state(actual: ModelState, expected: ModelState) -> None:
    assert actual.step == expected.step
    assert actual.arrays.keys() == expected.arrays.keys()
    for key, array in expected.arrays.items():
        assert_same(actual.arrays[key], array)
    assert actual.tensors.keys() == expected.tensors.keys()
    for key, tensor in expected.tensors.items():
        got = actual.tensors[key]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8))  # bit for bit, NaNs included


@pytest.mark.parametrize("async_commit", [False, True], ids=["sync", "async"])
def test_a_checkpoint_of_thousands_of_arrays_restores_exactly(store: Path, async_commit: bool) -> None:
    expected = [model_state(2000, step) for step in (1, 2)]
    with Checkpoint("model", path=store, async_commit=async_commit) as session:
        state = bind_checkpoint_state(ModelState())
        for fresh in expected:
            state.arrays, state.tensors, state.step = fresh.arrays, fresh.tensors, fresh.step
            session.write(lead_time=fresh.step)
        session.flush(wait=True)
    row = scan_rows(Checkpoint("model", path=store).rank_path).rows[-1]
    assert row.body["format_version"] == 2
    assert sum(e is not None for e in row.arrays.entries) == 2000
    with Checkpoint("model", path=store) as session:
        restored = bind_checkpoint_state(ModelState())
        assert_same_state(restored, expected[-1])


def test_a_checkpoint_on_s3_packs_its_arrays(s3_bucket: str) -> None:
    url = f"{s3_bucket}/packed"
    expected = model_state(600, 3)
    with Checkpoint("model", path=url) as session:
        state = bind_checkpoint_state(ModelState())
        state.arrays, state.tensors, state.step = expected.arrays, expected.tensors, expected.step
        session.write(lead_time=1)
    rows = scan_rows(open_store(Checkpoint("model", path=url).rank_path)).rows
    assert [entry["name"] for entry in rows[-1].files] == ["pack000000.bin"]
    with Checkpoint("model", path=url) as session:
        assert_same_state(bind_checkpoint_state(ModelState()), expected)


def test_an_iterator_checkpoint_of_a_model_packs_its_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(300)]).to(torch.bfloat16)
    IteratorCheckpoint(tmp_path / "iterator").save_to_directory(model, step=5)
    restored = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(300)]).to(torch.bfloat16)
    IteratorCheckpoint(tmp_path / "iterator").restore(restored, step=5)
    for (name, expected), (_, got) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(got, expected), name
    row = scan_rows(tmp_path / "iterator").rows[-1]
    assert row.body["format_version"] == 2 and [e["name"] for e in row.files] == ["pack000000.bin"]


# ------------------------------------------------------------------ damage


def _packed_store(store: Path, count: int = 50) -> list[np.ndarray]:
    payloads = [np.arange(100, dtype=np.float32) + k for k in range(count)]
    writer = RowWriter(store)
    try:
        writer.persist(Snapshot(body={"step": 1}, payloads=payloads))
    finally:
        writer.close()
    return payloads


def test_a_flipped_byte_in_one_packed_array_is_reported_as_that_array(store: Path) -> None:
    _packed_store(store)
    row = scan_rows(store).rows[-1]
    entry = row.arrays.entries[37]
    flip_byte(Path(row.path) / "pack000000.bin", entry["offset"] + 5)
    row = scan_rows(store).rows[-1]  # the sizes still match: listed
    with pytest.raises(CheckpointCorruptError, match=r"pack000000\.bin is damaged: .*damaged: payload #37 \(bytes"):
        row.load_all_payloads()
    with pytest.raises(CheckpointCorruptError, match="payload #37"):
        row.read_payload(2)  # any array of the pack: its bytes cannot be trusted
    problems = verify_row(store, row.name)
    assert len(problems) == 1 and "payload #37" in problems[0].reason and "#36" not in problems[0].reason


def test_verify_on_the_command_line_names_the_damaged_array(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _packed_store(store)
    row = scan_rows(store).rows[-1]
    flip_byte(Path(row.path) / "pack000000.bin", row.arrays.entries[12]["offset"])
    assert cli_main(["verify", str(store)]) == 1
    assert "payload #12" in capsys.readouterr().out


def test_damage_in_the_padding_is_damage_too(store: Path) -> None:
    writer = RowWriter(store)
    try:
        writer.persist(Snapshot(body={}, payloads=[np.arange(3, dtype=np.uint8)] * 4))
    finally:
        writer.close()
    row = scan_rows(store).rows[-1]
    flip_byte(Path(row.path) / "pack000000.bin", 3)  # between the first and the second array
    with pytest.raises(CheckpointCorruptError, match="no array's bytes changed"):
        row.load_all_payloads()


@dataclass
class Small:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_a_checkpoint_falls_back_past_a_damaged_pack(store: Path, how: str) -> None:
    with Checkpoint("small", path=store, mode="append") as session:
        state = bind_checkpoint_state(Small())
        for step in (1, 2):
            state.arrays = {f"a{i}": np.full(10, step * 100 + i) for i in range(30)}
            session.write(lead_time=step)
    newest = scan_rows(store).rows[-1]
    pack = Path(newest.path) / "pack000000.bin"
    if how == "flip":
        flip_byte(pack, newest.arrays.entries[20]["offset"])
        expected = r"pack000000\.bin is damaged: .*damaged: payload #\d+ "
    elif how == "truncate":
        os.truncate(pack, pack.stat().st_size - 1)
        expected = r"pack000000\.bin is \d+ bytes, the manifest says"
    else:
        pack.unlink()
        expected = r"pack000000\.bin is missing"
    with (
        pytest.warns(CheckpointFallbackWarning, match=expected),
        Checkpoint("small", path=store, mode="append"),
    ):
        restored = bind_checkpoint_state(Small())
    assert all(np.array_equal(restored.arrays[f"a{i}"], np.full(10, 100 + i)) for i in range(30))


def _resign(store: Path, edit: Any) -> None:
    row = Path(scan_rows(store).rows[-1].path)
    body = load_manifest((row / MANIFEST_NAME).read_bytes())
    edit(body)
    (row / MANIFEST_NAME).write_bytes(dump_manifest(body))


HOSTILE = {
    "arrays not a list": lambda b: b.update(arrays={"0": 1}),
    "entry not an object": lambda b: b["arrays"].__setitem__(0, "pack000000.bin"),
    "unlisted file": lambda b: b["arrays"][0].update(file="pack000009.bin"),
    "path for a file": lambda b: b["arrays"][0].update(file="../pack000000.bin"),
    "past the end": lambda b: b["arrays"][-1].update(offset=b["files"][0]["size"]),
    "negative offset": lambda b: b["arrays"][0].update(offset=-8),
    "bool offset": lambda b: b["arrays"][0].update(offset=False),
    "size not matching shape": lambda b: b["arrays"][0].update(shape=[101]),
    "overflowing shape": lambda b: b["arrays"][0].update(shape=[2**62, 2**62, 0, 1][:2]),
    "object dtype": lambda b: b["arrays"][0].update(descr="|O"),
    "code in descr": lambda b: b["arrays"][0].update(descr="[__import__('os').system('true')]"),
    "descr not a string": lambda b: b["arrays"][0].update(descr=["<f4"]),
    "fortran false recorded": lambda b: b["arrays"][0].update(fortran_order=False),
    "extra key": lambda b: b["arrays"][0].update(note="x"),
    "missing checksum": lambda b: b["arrays"][0].pop("checksum"),
    "bad checksum": lambda b: b["arrays"][0].update(checksum="XYZ"),
    "overlap": lambda b: b["arrays"][1].update(offset=b["arrays"][0]["offset"] + 4),
    "shape not a list": lambda b: b["arrays"][0].update(shape="(100,)"),
    "arrays in format 1": lambda b: b.update(format_version=1),
    "no arrays in format 2": lambda b: b.pop("arrays"),
}


@pytest.mark.parametrize("edit", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_resigned_manifest_with_hostile_arrays_is_damage(store: Path, edit: Any) -> None:
    _packed_store(store, count=5)
    _resign(store, edit)
    row = scan_rows(store).rows[-1]
    with pytest.raises(CheckpointCorruptError, match=r"manifest\.json is damaged"):
        row.load_all_payloads()
    problems = verify_row(store, row.name)
    assert len(problems) == 1 and "manifest.json" in problems[0].reason


def test_an_own_file_claimed_by_two_payloads_is_damage(store: Path) -> None:
    writer = RowWriter(store, pack_below=64)
    try:
        writer.persist(Snapshot(body={}, payloads=[np.zeros(100), np.zeros(100), np.zeros(2, np.uint8)]))
    finally:
        writer.close()
    _resign(store, lambda b: b["arrays"][1].update(file=b["arrays"][0]["file"]))
    with pytest.raises(CheckpointCorruptError, match="another payload uses too"):
        scan_rows(store).rows[-1].load_all_payloads()


def test_a_format_2_row_tells_an_older_reader_to_upgrade(store: Path) -> None:
    _packed_store(store, count=3)
    raw = (Path(scan_rows(store).rows[-1].path) / MANIFEST_NAME).read_bytes()
    with pytest.raises(ManifestError, match="newer than this restartable understands"):
        load_manifest(raw, version=1)


# ------------------------------------------------------------------ a kill mid-commit

_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from restartable.store import RowWriter, Snapshot

    writer = RowWriter(sys.argv[1], keep=2)
    step = 0
    while True:
        step += 1
        # 4,000 arrays of 4 KiB: a 16 MiB pack, long enough to be killed inside its commit.
        payloads = [np.full(512, step * 10_000 + i, dtype=np.float64) for i in range(4000)]
        writer.persist(Snapshot(body={"step": step}, payloads=payloads))
        print(step, flush=True)
    """
)


def test_a_kill_mid_commit_of_a_packed_row_loses_nothing(store: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        committed = [int(child.stdout.readline()) for _ in range(3)]  # wait for events, not for time
        child.send_signal(signal.SIGKILL)  # inside the fourth commit (or between commits)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    scan = scan_rows(store)
    assert scan.problems == []
    steps = [row.body["step"] for row in scan.rows]
    assert committed[-1] in steps and steps == sorted(steps)
    for row in scan.rows:
        loaded = row.load_all_payloads()
        assert [float(loaded(i)[0]) for i in (0, 3999)] == [row.body["step"] * 10_000, row.body["step"] * 10_000 + 3999]
    # A new writer cleans up what the killed one left and goes on.
    writer = RowWriter(store, keep=2)
    try:
        writer.persist(Snapshot(body={"step": 99}, payloads=[np.zeros(3)]))
    finally:
        writer.close()
    assert [row.body["step"] for row in scan_rows(store).rows][-1] == 99
