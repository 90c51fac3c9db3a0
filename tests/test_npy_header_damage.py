"""A damaged ``.npy`` header is damage like any other: reported, and the catalog falls back.

numpy parses the header dictionary with Python's tokenizer, so some flipped
bits (a brace, a quote) raise ``tokenize.TokenError`` rather than
``ValueError``; and a shape whose element count overflows int64 must not wrap
to a size that matches the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from restartable import Checkpoint, CheckpointCorruptError, CheckpointFallbackWarning
from restartable.store import LocalRowStore, RowWriter, Snapshot, open_row, scan_rows

# This module damages and inspects named .npy payload files (see conftest.one_file_per_array).
pytestmark = pytest.mark.usefixtures("one_file_per_array")


def _rows(root: Path) -> list[str]:
    writer = RowWriter(LocalRowStore(root))
    try:
        return [writer.persist(Snapshot(body={}, payloads=[np.arange(4.0) + i])).name for i in range(2)]
    finally:
        writer.close()


def _header_length(data: bytes) -> int:
    return 10 + int.from_bytes(data[8:10], "little")  # version 1.0: magic, version, 2-byte length


def test_every_single_bit_flip_in_a_header_is_reported_as_damage(tmp_path: Path) -> None:
    store = LocalRowStore(tmp_path)
    _, newest = _rows(tmp_path)
    payload = store.commits / newest / "p000000.npy"
    original = payload.read_bytes()
    assert original[:8] == b"\x93NUMPY\x01\x00"
    flips = 0
    for position in range(_header_length(original)):
        for bit in range(8):
            damaged = bytearray(original)
            damaged[position] ^= 1 << bit
            payload.write_bytes(bytes(damaged))
            with pytest.raises(CheckpointCorruptError, match=r"p000000\.npy"):
                open_row(store, newest).read_payload(0)
            flips += 1
    payload.write_bytes(original)
    np.testing.assert_array_equal(open_row(store, newest).read_payload(0), np.arange(4.0) + 1)
    assert flips >= 8 * 64


def test_a_broken_brace_makes_the_checkpoint_fall_back(tmp_path: Path) -> None:
    with Checkpoint("brace", path=tmp_path, mode="append") as session:
        for step in (1, 2):
            session.write(lead_time=step, values=np.arange(4.0) * step)
    newest = Checkpoint("brace", path=tmp_path, mode="append").catalog[-1]
    payload = Path(newest.path) / "p000000.npy"
    data = bytearray(payload.read_bytes())
    assert data[10:11] == b"{"
    data[10] ^= 0x01  # '{' -> 'z': numpy's header parser raises tokenize.TokenError
    payload.write_bytes(bytes(data))
    with pytest.warns(CheckpointFallbackWarning, match=newest.commit_id):
        with Checkpoint("brace", path=tmp_path, mode="append") as session:
            assert session.lead_time == 1


@pytest.mark.parametrize("shape", ["(18446744073709551616,)", "(4294967296, 4294967296)"])
def test_a_shape_that_overflows_is_damage_not_an_allocation(tmp_path: Path, shape: str) -> None:
    store = LocalRowStore(tmp_path)
    _, newest = _rows(tmp_path)
    payload = store.commits / newest / "p000000.npy"
    original = payload.read_bytes()
    length = _header_length(original)
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header = header.ljust(length - 10 - 1) + b"\n"
    payload.write_bytes(original[:10] + header + original[length:])
    assert len(payload.read_bytes()) == len(original)
    with pytest.raises(CheckpointCorruptError, match=r"p000000\.npy"):
        open_row(store, newest).read_payload(0)
    assert [row.name for row in scan_rows(store).rows][-1] == newest  # sizes still match: found on reading
