"""What a row's metadata may hold, and what a refused value does to the session."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import torch

from restartable import Checkpoint, CheckpointSerializationError
from restartable.earth2studio import checkpoint as e2c
from restartable.store import verify_row


@dataclass
class Info:
    value: int = 3


def test_metadata_may_not_hold_dataclasses(store: Path) -> None:
    with Checkpoint("meta", path=store) as session:
        session.write(lead_time=1)
        with pytest.raises(CheckpointSerializationError, match="Info"):
            session.write(lead_time=2, info=Info())
        # The failed boundary is not recorded: the session goes on cleanly.
        assert session.write_count == 1
        entry = session.write(lead_time=3)
        assert entry is not None and "info" not in entry.metadata and entry.write_count == 2
    entries = Checkpoint("meta", path=store).catalog
    assert [e.lead_time for e in entries] == [3]


# --------------------------------------------------------------------------- what metadata keeps
#
# The table in docs/adding-checkpoint-support.md ("What metadata keeps"):
# every value below comes back from the catalog as it was given (type, dtype,
# shape, bits), or is refused at write() with nothing committed.


class Colour(IntEnum):
    RED = 1


def _identical(given: Any, got: Any) -> bool:
    """Whether ``got`` is ``given``, down to type, dtype, shape and bits (NaN equal to NaN)."""
    if type(got) is not type(given):
        return False
    if isinstance(given, np.ndarray):
        return given.dtype == got.dtype and given.shape == got.shape and given.tobytes() == got.tobytes()
    if isinstance(given, torch.Tensor):
        return (
            given.dtype == got.dtype
            and given.shape == got.shape
            and given.requires_grad == got.requires_grad
            and given.device == got.device
            and torch.equal(given.detach(), got.detach())
        )
    if isinstance(given, np.generic):
        return given.dtype == got.dtype and given.tobytes() == got.tobytes()
    if isinstance(given, (list, tuple)):
        return len(given) == len(got) and all(_identical(a, b) for a, b in zip(given, got, strict=True))
    if isinstance(given, dict):
        return list(given) == list(got) and all(_identical(given[k], got[k]) for k in given)
    if isinstance(given, float):
        if math.isnan(given):
            return math.isnan(got)
        return given == got and math.copysign(1, given) == math.copysign(1, got)
    if isinstance(given, dt.datetime):
        return given == got and given.tzinfo == got.tzinfo and given.fold == got.fold
    return bool(given == got)


KEPT: dict[str, Any] = {
    "none": None,
    "bool": True,
    "int": 5,
    "big_int": 2**70,
    "float": 0.1,
    "nan": float("nan"),
    "negative_zero": -0.0,
    "infinity": float("inf"),
    "str": "ten days",
    "bytes": b"\x00\xff",
    "list": [1, "a", None],
    "tuple": (1, (2, 3)),
    "dict": {"a": 1, "b": [2.5]},
    "int_keys": {1: "one", 2: "two"},
    "empty": [[], (), {}],
    "datetime": dt.datetime(2024, 1, 1, 6),
    "datetime_utc": dt.datetime(2024, 1, 1, 6, tzinfo=dt.timezone.utc),
    "datetime_offset": dt.datetime(2024, 1, 1, 6, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    "datetime_zoneinfo": dt.datetime(2024, 11, 3, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=1),
    "date": dt.date(2024, 1, 1),
    "time": dt.time(1, 2, 3, 4, fold=1),
    "timedelta": dt.timedelta(hours=2, microseconds=1),
    "np_int64": np.int64(5),
    "np_float32": np.float32(1.5),
    "np_float16": np.float16(1.5),
    "np_longdouble": np.longdouble(1) / 3,
    "np_complex64": np.complex64(1 + 2j),
    "np_bool": np.bool_(True),
    "np_str": np.str_("ab"),
    "np_bytes": np.bytes_(b"ab"),
    "np_datetime64": np.datetime64("2024-01-01T00", "h"),
    "np_timedelta64": np.timedelta64(6, "h"),
    "np_dtype": np.dtype("float32"),
    "np_structured_dtype": np.dtype([("a", "<i4"), ("b", "<f8")]),
    # Arrays of every size, one element included: kept as arrays.
    "array_0d": np.array(5),
    "array_one_element": np.array([5]),
    "array_one_float32": np.array([1.5], dtype=np.float32),
    "array_one_bool": np.array([True]),
    "array_one_datetime64": np.array(["2024-01-01"], dtype="datetime64[D]"),
    "array_one_timedelta64": np.array([np.timedelta64(12, "h")]),
    "array": np.array([1, 2]),
    "array_2d": np.arange(6).reshape(2, 3),
    "array_fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "array_strided": np.arange(10)[::2],
    "array_big_endian": np.array([1, 2], dtype=">i4"),
    "array_str": np.array(["a", "bc"]),
    "array_structured": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
    "array_empty": np.zeros((0, 3)),
    # Tensors of every size, one element included: kept as tensors (on the CPU).
    "tensor_0d": torch.tensor(3),
    "tensor_one_element": torch.tensor([6]),
    "tensor_one_bfloat16": torch.tensor([1.5], dtype=torch.bfloat16),
    "tensor": torch.tensor([1.0, 2.0]),
    "tensor_requires_grad": torch.tensor([1.0, 2.0], requires_grad=True),
    "tensor_strided": torch.arange(16.0).reshape(4, 4).t(),
    "torch_device": torch.device("cpu"),
    "torch_dtype": torch.bfloat16,
    "torch_size": torch.Size([2, 3]),
}


@pytest.mark.parametrize("key", list(KEPT))
def test_metadata_comes_back_as_it_was_given(store: Path, key: str) -> None:
    given = KEPT[key]
    with Checkpoint("meta", path=store) as session:
        entry = session.write(lead_time=1, **{key: given})
    assert entry is not None and _identical(given, entry.metadata[key])
    (reread,) = Checkpoint("meta", path=store).catalog
    assert _identical(given, reread.metadata[key]), (given, reread.metadata[key])
    with Checkpoint("meta", path=store).select(-1) as session:
        assert _identical(given, session.metadata_value(key))


def test_the_issue_examples_round_trip_or_are_refused(store: Path) -> None:
    with Checkpoint("meta", path=store) as session:
        session.write(lead_time=1, count=np.array([5]))
        with pytest.raises(CheckpointSerializationError) as raised:
            session.write(lead_time=2, note=np.array([None], dtype=object))
    assert str(raised.value) == (
        "Invalid checkpoint metadata 'note': an array of dtype object cannot be stored without pickle; "
        "store a list, or an array of a plain dtype"
    )
    (entry,) = Checkpoint("meta", path=store).catalog
    assert _identical(np.array([5]), entry.metadata["count"])
    assert entry.lead_time == 1 and "note" not in entry.metadata


def test_lead_time_given_as_one_element_is_recorded_as_its_element(store: Path) -> None:
    # Workflows pass coords["lead_time"]; the catalog shows and compares a scalar.
    checkpoint = Checkpoint("meta", path=store, mode="append")
    with checkpoint as session:
        session.write(lead_time=np.array([np.timedelta64(6, "h")]))
        session.write(lead_time=torch.tensor([12]))
        session.write(lead_time=np.array([[18]], dtype=np.int32))
        session.write(lead_time=np.array([1, 2]))  # more than one element: kept whole
    leads = [entry.lead_time for entry in checkpoint.catalog]
    assert _identical(np.timedelta64(6, "h"), leads[0])
    assert _identical(12, leads[1])
    assert _identical(np.int32(18), leads[2])
    assert _identical(np.array([1, 2]), leads[3])


# Key: (value, part of the message, refused by write() even when the commit is deferred).
REFUSED: dict[str, tuple[Any, str, bool]] = {
    "object_array_one_none": (np.array([None], dtype=object), "an array of dtype object cannot be stored", True),
    "object_array_0d": (np.array(None, dtype=object), "an array of dtype object cannot be stored", True),
    "object_array": (np.array([1, "a"], dtype=object), "an array of dtype object cannot be stored", True),
    "object_structured_array": (np.zeros(1, dtype=[("a", object)]), "cannot be stored without pickle", True),
    "object_array_in_a_list": ([np.array([None], dtype=object)], "cannot be stored without pickle", False),
    "time_with_a_zone": (dt.time(1, tzinfo=dt.timezone.utc), "times with a time zone are not supported", False),
    "set": ({1, 2}, "of type builtins.set", False),
    "bytearray": (bytearray(b"a"), "of type builtins.bytearray", False),
    "int_enum": (Colour.RED, "Colour", False),
    "function": (len, "of type builtins.builtin_function_or_method", False),
    "dataclass": (Info(), "Info", False),
}


@pytest.mark.parametrize("key", list(REFUSED))
@pytest.mark.parametrize("flush_interval", [1, None], ids=["committing", "deferred"])
def test_refused_metadata_raises_at_write_and_commits_nothing(
    store: Path, key: str, flush_interval: int | None
) -> None:
    value, why, at_once = REFUSED[key]
    checkpoint = Checkpoint("meta", path=store, mode="append", flush_interval=flush_interval)
    with checkpoint as session:
        session.flush(lead_time=1, step=np.array([1]))
        before = [(entry.commit_id, entry.write_count) for entry in checkpoint.catalog]
        count = session.write_count
        if flush_interval is None and not at_once:
            # A deferred write encodes nothing (as in earth2studio): the value
            # is refused by the flush that would commit it.
            assert session.write(lead_time=2, bad=value) is None
            with pytest.raises(CheckpointSerializationError, match="Invalid checkpoint metadata 'bad'") as raised:
                session.flush()
        else:
            with pytest.raises(CheckpointSerializationError, match="Invalid checkpoint metadata 'bad'") as raised:
                session.write(lead_time=2, bad=value)
            assert session.write_count == count  # the refused write is not counted
        assert why in str(raised.value)
        assert "\n" not in str(raised.value)
    # The previous rows are intact, and nothing was added.
    entries = Checkpoint("meta", path=store).catalog
    assert [(entry.commit_id, entry.write_count) for entry in entries] == before
    assert entries[-1].lead_time == 1 and _identical(np.array([1]), entries[-1].metadata["step"])
    assert all(verify_row(entry.path) == [] for entry in entries)


def test_the_bridge_records_one_element_values_as_their_element_and_refuses_object_arrays(store: Path) -> None:
    # earth2studio unwraps one-element arrays and tensors under every key;
    # an object array is refused there too, rather than stored as its item.
    with e2c.Checkpoint("meta", path=store) as session:
        entry = session.write(lead_time=1, step=np.array([3]), scale=torch.tensor([2.0]))
        with pytest.raises(CheckpointSerializationError, match="Invalid checkpoint metadata 'note'"):
            session.write(lead_time=2, note=np.array([None], dtype=object))
    assert entry is not None
    assert _identical(np.int64(3), entry.metadata["step"]) and _identical(2.0, entry.metadata["scale"])
    assert [e.lead_time for e in e2c.Checkpoint("meta", path=store).catalog] == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_tensor_in_metadata_comes_back_on_the_cpu(store: Path) -> None:
    # Catalog readers (restartable ls) may have no GPU: metadata is read on the CPU.
    given = torch.arange(4, dtype=torch.float16, device="cuda")
    with Checkpoint("meta", path=store, device="cuda") as session:
        session.write(lead_time=1, x=given)
    (entry,) = Checkpoint("meta", path=store, device="cuda").catalog
    assert entry.metadata["x"].device == torch.device("cpu")
    assert _identical(given.cpu(), entry.metadata["x"])
