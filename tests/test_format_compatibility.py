"""Rows written by restartable 0.1.0 (row format version 1) stay readable, bit for bit.

``tests/data/format1/`` is a store committed by restartable 0.1.0 and kept
in the repository as it was written: a later change of the row format (the
packed payloads of issue 19, say) must still restore it exactly, and
``restartable verify`` must still check it. Regenerate it only on purpose,
with the version that defines the format:
``python tests/test_format_compatibility.py tests/data/format1``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from restartable import Checkpoint, bind_checkpoint_state
from restartable.cli import main as cli_main

FIXTURE = Path(__file__).resolve().parent / "data" / "format1"
NAME = "format1"
ROWS = 3


@dataclass
class Format1State:
    step: int = 0
    floats: np.ndarray = field(default_factory=lambda: np.zeros(0))
    arrays: dict[str, Any] = field(default_factory=dict)
    tensor: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    when: dt.datetime = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


def arrays_for(k: int) -> dict[str, Any]:
    """Every kind of array a row holds: dtypes, 0-d, empty, Fortran order, structured, text, times."""
    grid = np.arange(12, dtype=np.float32).reshape(3, 4) + k
    return {
        "fortran": np.asfortranarray(grid),
        "zero_d": np.array(k, dtype=np.int16),
        "empty": np.empty((0, 3), dtype=np.complex64),
        "bools": np.arange(5) % (k + 1) == 0,
        "big_endian": np.arange(4, dtype=">u4") * k,
        "structured": np.array([(k, 1.5 * k, b"ab")], dtype=[("i", "<i8"), ("x", "<f8"), ("s", "S2")]),
        "text": np.array(["é", "row", str(k)], dtype="<U3"),
        "times": np.array(["2020-01-01T00", "NaT"], dtype="datetime64[h]") + np.timedelta64(k, "h"),
        "scalar": np.float16(0.5 * k),
    }


def state_for(k: int) -> Format1State:
    return Format1State(
        step=k,
        floats=np.linspace(0.0, 1.0, 7) * k,
        arrays=arrays_for(k),
        tensor=torch.arange(6, dtype=torch.bfloat16).reshape(2, 3) * k,
        when=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=6 * k),
    )


def write_fixture(path: Path) -> None:
    with Checkpoint(NAME, path=path, mode="append") as session:
        state = bind_checkpoint_state(Format1State())
        for k in range(1, ROWS + 1):
            fresh = state_for(k)
            state.step, state.floats, state.arrays = fresh.step, fresh.floats, fresh.arrays
            state.tensor, state.when = fresh.tensor, fresh.when
            session.write(lead_time=np.timedelta64(6 * k, "h"), member=k)


def assert_equal_bitwise(actual: Any, expected: Any) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys()
        for key in expected:
            assert_equal_bitwise(actual[key], expected[key])
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected)
    elif isinstance(expected, (np.ndarray, np.generic)):
        assert type(actual) is type(expected) and actual.dtype == expected.dtype
        assert np.shape(actual) == np.shape(expected)
        assert np.asarray(actual).tobytes() == np.asarray(expected).tobytes()
        if isinstance(expected, np.ndarray) and expected.ndim > 1:
            assert actual.flags.f_contiguous == expected.flags.f_contiguous
    else:
        assert type(actual) is type(expected) and actual == expected


@pytest.fixture
def store(tmp_path: Path) -> Path:
    copy = tmp_path / "format1"
    shutil.copytree(FIXTURE, copy)
    return copy


def test_the_fixture_is_a_format_1_store() -> None:
    rows = sorted((FIXTURE / "commits").iterdir())
    assert len(rows) == ROWS
    for row in rows:
        body = json.loads((row / "manifest.json").read_bytes())["manifest"]
        assert body["format_version"] == 1 and body["library_version"] == "0.1.0"


@pytest.mark.parametrize("row", range(ROWS))
def test_every_row_restores_bit_for_bit(store: Path, row: int) -> None:
    session = Checkpoint(NAME, path=store, mode="append").select(row)
    state = session.bind(Format1State())
    assert state.checkpoint_state_loaded
    restored = state.checkpoint_dataclass
    expected = state_for(row + 1)
    assert restored.step == expected.step and restored.when == expected.when
    assert_equal_bitwise(restored.floats, expected.floats)
    assert_equal_bitwise(restored.arrays, expected.arrays)
    assert_equal_bitwise(restored.tensor, expected.tensor)


def test_the_catalog_and_verify_read_it(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = Checkpoint(NAME, path=store, mode="append").catalog
    assert [entry.metadata["member"] for entry in entries] == [1, 2, 3]
    assert [entry.lead_time for entry in entries] == [np.timedelta64(6 * k, "h") for k in (1, 2, 3)]
    assert cli_main(["verify", str(store)]) == 0
    assert "3 row(s) checked, 0 damaged" in capsys.readouterr().out


def test_a_new_run_resumes_from_it_and_appends(store: Path) -> None:
    with Checkpoint(NAME, path=store, mode="append") as session:
        state = bind_checkpoint_state(Format1State())
        assert state.step == ROWS
        assert_equal_bitwise(state.arrays, arrays_for(ROWS))
        state.step += 1
        session.write(lead_time=np.timedelta64(6 * (ROWS + 1), "h"), member=ROWS + 1)
    assert len(Checkpoint(NAME, path=store, mode="append").catalog) == ROWS + 1


if __name__ == "__main__":  # regenerate the fixture (see the module docstring)
    target = Path(sys.argv[1])
    if target.exists():
        sys.exit(f"{target} exists; remove it first")
    # Through the module's own name: the state's id in the rows is its qualified type name.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_format_compatibility

    test_format_compatibility.write_fixture(target)
    for lock in target.rglob(".lock"):
        lock.unlink()
    print(f"wrote {target}")
