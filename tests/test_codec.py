"""The pickle-free codec: exact round trips, refusals with exact paths, schema hashes.

Every round trip is checked twice: decoding the in-memory document that
``encode`` returned (what ``decode``'s docstring shows), and decoding the
document after a strict JSON round trip (what the store writes to disk).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import importlib.util
import json
import math
import sys
import typing
import uuid
import warnings
import zlib
import zoneinfo
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import run_python
from restartable import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointSerializationError,
    CheckpointStateSchemaError,
)
from restartable.codec import decode, encode, schema_hash
from support import NUMPY_INTEGER_EXTREMES, assert_same, tensor_bytes

# --------------------------------------------------------------------------- helpers


def _via_memory(document: Any) -> Any:
    return document


def _via_json(document: Any) -> Any:
    # The store writes documents as strict JSON; NaN or a tuple must not leak in.
    return json.loads(json.dumps(document, allow_nan=False))


VIAS = [pytest.param(_via_memory, id="memory"), pytest.param(_via_json, id="json")]


def roundtrip(value: Any, via: Any = _via_json, **kwargs: Any) -> Any:
    enc = encode(value, **kwargs)
    return decode(via(enc.document), enc.payloads.__getitem__)


def assert_roundtrips_exactly(value: Any, via: Any) -> None:
    assert_same(roundtrip(value, via), value)


def each_sample_via(samples: dict[str, Any]) -> Any:
    """Parametrize a test by ``name`` (each key of ``samples``) and by ``via`` (VIAS): ids ``<name>-<via>``."""

    def parametrize(test: Any) -> Any:
        return pytest.mark.parametrize("via", VIAS)(pytest.mark.parametrize("name", list(samples))(test))

    return parametrize


# --------------------------------------------------------------------------- dataclasses


@dataclasses.dataclass
class Point:
    x: float
    y: float


@dataclasses.dataclass(frozen=True)
class FrozenPoint:
    x: int
    label: str = "p"


@dataclasses.dataclass(slots=True)
class SlottedPoint:
    x: int
    values: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class FrozenSlotted:
    a: Any
    b: Any = None


@dataclasses.dataclass
class Nested:
    name: str
    origin: Point
    frozen: FrozenPoint
    slotted: SlottedPoint
    both: FrozenSlotted
    points: list[Point]
    optional: Point | None = None
    by_id: dict[int, Point] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class S:
    history: list
    step: int = 0


@dataclasses.dataclass
class Wrapper:
    inner: S


@dataclasses.dataclass
class WithInitFalse:
    x: int = 0
    derived: list = dataclasses.field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.derived = [self.x] * 2


@dataclasses.dataclass
class Child(Point):
    z: float = 0.0


@dataclasses.dataclass
class Counted:
    x: int = 0
    created: typing.ClassVar[int] = 0

    def __post_init__(self) -> None:
        type(self).created += 1


# --------------------------------------------------------------------------- scalars and containers


SCALARS = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int": 12345,
    "neg_int": -7,
    "2**53": 2**53,
    "2**53+1": 2**53 + 1,
    "-2**53-1": -(2**53) - 1,
    "2**80": 2**80,
    "-2**80": -(2**80),
    "huge": 3**500,
    "float": 0.1,
    "tiny": 5e-324,
    "max": sys.float_info.max,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "-0.0": -0.0,
    "empty_str": "",
    "unicode": "héllo wörld ✓ 日本語 🚀 \x00 \ud7ff",
    "bytes": bytes(range(256)),
    "empty_bytes": b"",
}


@each_sample_via(SCALARS)
def test_python_scalars_roundtrip_exactly(name: str, via: Any) -> None:
    assert_roundtrips_exactly(SCALARS[name], via)


@pytest.mark.parametrize("via", VIAS)
def test_negative_zero_keeps_its_sign(via: Any) -> None:
    out = roundtrip(-0.0, via)
    assert math.copysign(1.0, out) == -1.0


@pytest.mark.parametrize("via", VIAS)
def test_big_ints_are_not_json_numbers(via: Any) -> None:
    # JSON readers in other languages lose precision beyond 2**53.
    enc = encode([2**53, 2**53 + 1, -(2**80)])
    assert enc.document[0] == 2**53
    assert not isinstance(enc.document[1], int)
    assert not isinstance(enc.document[2], int)
    assert roundtrip([2**53, 2**53 + 1, -(2**80)], via) == [2**53, 2**53 + 1, -(2**80)]


CONTAINERS = {
    "empty_list": [],
    "empty_tuple": (),
    "empty_dict": {},
    "list": [1, "a", None, 2.5, [b"x", (1,)]],
    "tuple": (1, (2, (3, [4, ()])), "t"),
    "dict_str": {"b": 1, "a": [1, 2], "": None, "__t": "not a tag", "nested": {"k": (1, 2)}},
    "dict_int": {3: "c", 1: "a", -2: "b", 2**80: "big", 0: None},
    "dict_mixed": {1: "one", "1": "string one", 2: {"x": 1}, "z": {5: 6}},
    "tuple_in_dict_in_list": [{"k": (math.nan, -0.0, math.inf)}],
}


@each_sample_via(CONTAINERS)
def test_containers_roundtrip_exactly(name: str, via: Any) -> None:
    assert_roundtrips_exactly(CONTAINERS[name], via)


@pytest.mark.parametrize("via", VIAS)
def test_dict_key_order_is_kept(via: Any) -> None:
    value = {5: 0, 1: 1, "b": 2, "a": 3, 3: 4}
    assert list(roundtrip(value, via)) == [5, 1, "b", "a", 3]


# --------------------------------------------------------------------------- dataclasses


def _with_init_false() -> WithInitFalse:
    value = WithInitFalse(3)
    value.derived = ["changed after init"]  # the saved value, not __post_init__'s, must come back
    return value


def _nested() -> Nested:
    return Nested(
        name="n",
        origin=Point(math.nan, -0.0),
        frozen=FrozenPoint(3, "three"),
        slotted=SlottedPoint(4, [Point(1.0, 2.0)]),
        both=FrozenSlotted(np.arange(3, dtype=">i2"), (1, {"a": torch.ones(2)})),
        points=[Point(1.5, 2.5), Point(math.inf, 0.0)],
        optional=Point(0.0, 1.0),
        by_id={7: Point(7.0, 7.0), 2**60: Point(-1.0, -2.0)},
    )


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(
    "factory",
    [
        lambda: Point(1.0, -0.0),
        lambda: FrozenPoint(1),
        lambda: SlottedPoint(2, [1, (2,)]),
        lambda: FrozenSlotted(a=[1], b=FrozenPoint(2)),
        _nested,
        lambda: _with_init_false(),
        lambda: Child(1.0, 2.0, -0.0),
    ],
    ids=["plain", "frozen", "slots", "frozen_slots", "nested", "init_false", "inherited"],
)
def test_dataclasses_roundtrip_exactly(factory: Any, via: Any) -> None:
    value = factory()
    out = roundtrip(value, via)
    assert out is not value
    assert_same(out, value)


def test_decode_does_not_call_init_or_post_init() -> None:
    before = Counted.created
    enc = encode(Counted(5))
    assert Counted.created == before + 1
    out = decode(_via_json(enc.document), enc.payloads.__getitem__)
    assert out == Counted(5) and type(out) is Counted
    assert Counted.created == before + 2  # only the two explicit constructions above


def test_decode_into_restores_in_place_including_nested_dataclasses() -> None:
    saved = _nested()
    enc = encode(saved)
    target = Nested(
        name="fresh",
        origin=Point(0.0, 0.0),
        frozen=FrozenPoint(0),
        slotted=SlottedPoint(0),
        both=FrozenSlotted(None),
        points=[],
    )
    origin, slotted = target.origin, target.slotted
    out = decode(_via_json(enc.document), enc.payloads.__getitem__, into=target)
    assert out is target
    assert target.origin is origin  # references the caller holds see the restored values
    assert target.slotted is slotted
    assert_same(target, saved)


def test_local_dataclass_needs_known_types() -> None:
    @dataclasses.dataclass
    class Local:
        v: int

    enc = encode([Local(3)])
    with pytest.raises(CheckpointStateSchemaError):
        decode(enc.document, enc.payloads.__getitem__)
    name = f"{Local.__module__}.{Local.__qualname__}"
    out = decode(enc.document, enc.payloads.__getitem__, known_types={name: Local})
    assert out == [Local(3)] and type(out[0]) is Local


def test_local_dataclass_found_through_type_hints_of_into() -> None:
    @dataclasses.dataclass
    class Item:
        v: int

    # Real (not string) annotations, although this module uses postponed evaluation.
    Holder = dataclasses.make_dataclass("Holder", [("items", list[Item], dataclasses.field(default_factory=list))])

    enc = encode(Holder([Item(1), Item(2)]))
    target = Holder()
    decode(_via_json(enc.document), enc.payloads.__getitem__, into=target)
    assert target.items == [Item(1), Item(2)]
    assert all(type(i) is Item for i in target.items)


# --------------------------------------------------------------------------- datetimes


NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
DATETIMES = {
    "naive": dt.datetime(2024, 2, 29, 23, 59, 58, 123456),
    "naive_fold": dt.datetime(2024, 1, 1, 0, 0, fold=1),
    "min": dt.datetime.min,
    "max": dt.datetime.max,
    "utc": dt.datetime(2020, 1, 1, 12, tzinfo=dt.timezone.utc),
    "fixed_offset": dt.datetime(2020, 1, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    "negative_offset": dt.datetime(1999, 12, 31, 23, tzinfo=dt.timezone(-dt.timedelta(hours=9, minutes=15))),
    "seconds_offset": dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(seconds=17, microseconds=3))),
    "zoneinfo": dt.datetime(2021, 7, 4, 12, 0, tzinfo=NEW_YORK),
    "zoneinfo_fold0": dt.datetime(2021, 11, 7, 1, 30, fold=0, tzinfo=NEW_YORK),
    "zoneinfo_fold1": dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=NEW_YORK),
    "zoneinfo_utc": dt.datetime(2021, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
}


@each_sample_via(DATETIMES)
def test_datetimes_roundtrip_exactly(name: str, via: Any) -> None:
    value = DATETIMES[name]
    out = roundtrip(value, via)
    assert_same(out, value)
    assert out == value


@pytest.mark.parametrize("via", VIAS)
def test_zoneinfo_fold_selects_the_repeated_hour(via: Any) -> None:
    first = roundtrip(DATETIMES["zoneinfo_fold0"], via)
    second = roundtrip(DATETIMES["zoneinfo_fold1"], via)
    assert first.utcoffset() == dt.timedelta(hours=-4)
    assert second.utcoffset() == dt.timedelta(hours=-5)
    assert isinstance(second.tzinfo, zoneinfo.ZoneInfo) and second.tzinfo.key == "America/New_York"


@pytest.mark.parametrize("via", VIAS)
def test_named_fixed_offset_keeps_its_name(via: Any) -> None:
    value = dt.datetime(2020, 6, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30), "IST"))
    out = roundtrip(value, via)
    assert out == value
    assert out.tzname() == "IST"


OTHER_TIMES = {
    "date": dt.date(2024, 2, 29),
    "date_min": dt.date.min,
    "time": dt.time(23, 59, 59, 999999),
    "time_fold": dt.time(1, 30, fold=1),
    "time_midnight": dt.time(0),
    "timedelta": dt.timedelta(days=-3, seconds=5, microseconds=7),
    "timedelta_max": dt.timedelta.max,
    "timedelta_min": dt.timedelta.min,
    "timedelta_zero": dt.timedelta(0),
}


@each_sample_via(OTHER_TIMES)
def test_dates_times_timedeltas_roundtrip_exactly(name: str, via: Any) -> None:
    assert_roundtrips_exactly(OTHER_TIMES[name], via)


# --------------------------------------------------------------------------- numpy


STRUCT = np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "S3"), ("d", [("e", "<u2"), ("f", "?")], (2,))])

NUMPY_SCALARS = {
    "float16": np.float16(-1.0009765625),
    "float16_nan": np.frombuffer(b"\x01\x7e", dtype=np.float16)[0],  # NaN with a payload
    "float32": np.float32(1e-40),
    "float64": np.float64(-0.0),
    "longdouble": np.longdouble(1) / np.longdouble(3),
    "complex64": np.complex64(1.5 - 2j),
    "complex128": np.complex128(complex(math.inf, math.nan)),
    "clongdouble": np.clongdouble(1) / np.clongdouble(3j),
    **NUMPY_INTEGER_EXTREMES,
    "bool_true": np.bool_(True),
    "bool_false": np.bool_(False),
    "datetime64_ns": np.datetime64("2020-01-01T00:00:00.123456789", "ns"),
    "datetime64_day": np.datetime64("1969-07-20", "D"),
    "datetime64_nat": np.datetime64("NaT"),
    "datetime64_nat_s": np.datetime64("NaT", "s"),
    "timedelta64": np.timedelta64(-5, "h"),
    "timedelta64_nat": np.timedelta64("NaT", "ms"),
    "str_": np.str_("héllo ✓"),
    "bytes_": np.bytes_(b"ab\x00c"),
    "bytes_empty": np.bytes_(b""),
    "str_empty": np.str_(""),
    "void_struct": np.array([(1, 2.5, b"xyz", [(3, True), (4, False)])], dtype=STRUCT)[0],
    "void_raw": np.void(b"\x00\x01\x02"),
    "int64_be": np.array([7], dtype=">i8")[0],
}


@each_sample_via(NUMPY_SCALARS)
def test_numpy_scalars_roundtrip_bitwise(name: str, via: Any) -> None:
    value = NUMPY_SCALARS[name]
    out = roundtrip(value, via)
    assert type(out) is type(value)
    assert out.dtype == value.dtype
    assert out.tobytes() == value.tobytes()


NUMPY_DTYPES = {
    "f8": np.dtype("f8"),
    ">f8": np.dtype(">f8"),
    "<i2": np.dtype("<i2"),
    "?": np.dtype("?"),
    "f2": np.dtype("f2"),
    "c8": np.dtype(">c8"),
    "U7": np.dtype("U7"),
    ">U3": np.dtype(">U3"),
    "S5": np.dtype("S5"),
    "V4": np.dtype("V4"),
    "M8[ns]": np.dtype("M8[ns]"),
    ">m8[s]": np.dtype(">m8[s]"),
    "M8": np.dtype("M8"),
    "longdouble": np.dtype(np.longdouble),
    "struct": STRUCT,
    "struct_aligned": np.dtype({"names": ["a", "b"], "formats": ["u1", "<i8"]}, align=True),
    "struct_titles": np.dtype([(("Title of a", "a"), "<i4"), ("b", ">u2", (2, 2))]),
}


@each_sample_via(NUMPY_DTYPES)
def test_numpy_dtypes_roundtrip(name: str, via: Any) -> None:
    value = NUMPY_DTYPES[name]
    out = roundtrip(value, via)
    assert isinstance(out, np.dtype)
    assert out == value
    assert out.str == value.str
    assert out.itemsize == value.itemsize
    assert out.names == value.names


@pytest.mark.parametrize("via", VIAS)
def test_subarray_dtype_is_not_silently_changed(via: Any) -> None:
    # np.dtype(("<i4", (2, 3))) must come back as itself, or be refused.
    value = np.dtype(("<i4", (2, 3)))
    try:
        enc = encode(value)
    except CheckpointSerializationError:
        return
    out = decode(via(enc.document), enc.payloads.__getitem__)
    assert out == value, f"{value!r} came back as {out!r}"


def test_unrepresentable_dtype_raises_serialization_error_with_path() -> None:
    overlapping = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i4"], "offsets": [0, 0]})
    with pytest.raises(CheckpointSerializationError) as info:
        encode({"dt": overlapping}, root="state")
    assert info.value.path == "state['dt']"


def _arrays() -> dict[str, np.ndarray]:
    base = np.arange(24, dtype=np.float64).reshape(4, 6) * 1.5
    rng = np.random.default_rng(1234)
    return {
        "0d": np.array(3.25),
        "0d_int": np.array(-5, dtype=np.int16),
        "empty_0x3": np.zeros((0, 3)),
        "empty_3x0x2": np.zeros((3, 0, 2), dtype=">i4"),
        "1d": np.arange(10, dtype=np.int64),
        "slice_step": base[::2, 1::3],
        "slice_negative": base[::-1, ::-2],
        "transpose": base.T,
        "fortran": np.asfortranarray(base),
        "big_endian": np.arange(12, dtype=">f8").reshape(3, 4),
        "big_endian_noncontig": np.arange(30, dtype=">i4").reshape(5, 6)[1::2, ::-1],
        "float16": rng.standard_normal(7).astype(np.float16),
        "nan_inf": np.array([math.nan, -0.0, math.inf, -math.inf, 5e-324]),
        "nan_payload": np.frombuffer(b"\x01\x00\x00\x00\x00\x00\xf8\x7f", dtype="<f8").copy(),
        "longdouble": np.arange(5, dtype=np.longdouble) / 3,
        "complex64": (rng.standard_normal(6) + 1j * rng.standard_normal(6)).astype(np.complex64),
        "complex128_be": np.array([1 + 2j, math.nan - 1j], dtype=">c16"),
        "bool": np.array([[True, False], [False, True]]),
        "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
        "int8": np.array([-128, 0, 127], dtype=np.int8),
        "datetime64": np.array(["2020-01-01T00:00", "NaT", "1969-12-31T23:59"], dtype="M8[m]"),
        "datetime64_ns": np.array([0, -1, np.iinfo(np.int64).min], dtype="M8[ns]"),
        "timedelta64": np.array([1, -2, np.iinfo(np.int64).min], dtype=">m8[us]"),
        "unicode": np.array(["a", "héllo", ""], dtype="<U5"),
        "unicode_be": np.array([["✓", "zz"]], dtype=">U2"),
        "bytes": np.array([b"ab", b"\x00\x01", b""], dtype="S2"),
        "void": np.frombuffer(b"abcdefgh", dtype="V4").copy(),
        "structured": np.array(
            [(1, 2.5, b"xyz", [(3, True), (4, False)]), (-1, math.nan, b"", [(0, False), (65535, True)])], dtype=STRUCT
        ),
        "structured_slice": np.zeros(6, dtype=STRUCT)[::2],
        "structured_aligned": np.zeros(3, dtype=np.dtype({"names": ["a", "b"], "formats": ["u1", "<i8"]}, align=True)),
        "3d_fortran_be": np.asfortranarray(np.arange(24, dtype=">u2").reshape(2, 3, 4)),
    }


ARRAY_NAMES = list(_arrays())


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("name", ARRAY_NAMES)
@pytest.mark.parametrize("copy", [False, True], ids=["nocopy", "copy"])
def test_numpy_arrays_roundtrip_bitwise(name: str, copy: bool, via: Any) -> None:
    value = _arrays()[name]
    out = roundtrip({"a": value}, via, copy=copy)["a"]
    assert type(out) is np.ndarray
    assert_same(out, value)
    if value.size and value.dtype.names is None and value.dtype.kind not in "SUV":
        # nan-aware element-wise check as well, independent of tobytes
        np.testing.assert_array_equal(out, value)


def test_array_payload_is_a_host_numpy_array_referenced_by_index() -> None:
    a, b = np.arange(3), np.ones((2, 2), dtype=">f4")
    enc = encode({"first": a, "second": [b, a]})
    assert len(enc.payloads) == 3
    assert all(type(p) is np.ndarray for p in enc.payloads)
    assert enc.payloads[1].dtype == np.dtype(">f4")
    out = decode(_via_json(enc.document), enc.payloads.__getitem__)
    assert_same(out, {"first": a, "second": [b, a]})


# --------------------------------------------------------------------------- torch


def _tensor_dtypes() -> list[torch.dtype]:
    wanted = [
        "float32", "float64", "float16", "bfloat16", "complex32", "complex64", "complex128",
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    ]  # fmt: skip
    return [getattr(torch, name) for name in wanted if isinstance(getattr(torch, name, None), torch.dtype)]


def _random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A tensor with arbitrary bit patterns (NaN payloads, subnormals) of the given dtype."""
    rng = np.random.default_rng(seed)
    itemsize = dtype.itemsize
    count = int(np.prod(shape)) if shape else 1
    if count == 0:
        return torch.zeros((*shape[:-1], shape[-1] * itemsize), dtype=torch.uint8).view(dtype)
    high = 2 if dtype == torch.bool else 256
    raw = rng.integers(0, high, size=count * itemsize, dtype=np.uint8)
    flat = torch.from_numpy(raw).view(dtype)
    return flat.reshape(shape)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("dtype", _tensor_dtypes(), ids=str)
@pytest.mark.parametrize(
    "layout",
    ["contiguous", "0d", "empty", "transpose", "step", "offset"],
)
def test_tensors_roundtrip_bitwise(dtype: torch.dtype, layout: str, via: Any) -> None:
    seed = zlib.crc32(f"{dtype}-{layout}".encode())
    if layout == "contiguous":
        value = _random_tensor(dtype, (3, 5), seed)
    elif layout == "0d":
        value = _random_tensor(dtype, (), seed)
    elif layout == "empty":
        value = _random_tensor(dtype, (0, 3), seed)
    elif layout == "transpose":
        value = _random_tensor(dtype, (3, 4), seed).T
        assert not value.is_contiguous()
    elif layout == "step":
        value = _random_tensor(dtype, (10, 3), seed)[::2, ::2]
        assert not value.is_contiguous()
    else:
        value = _random_tensor(dtype, (5,), seed)[1:4]
        assert value.storage_offset() == 1
    for copy in (False, True):
        out = roundtrip(value, via, copy=copy)
        assert type(out) is torch.Tensor
        assert_same(out, value)


@pytest.mark.parametrize("via", VIAS)
def test_tensor_requires_grad_is_kept(via: Any) -> None:
    leaf = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    computed = leaf * 2
    out = roundtrip({"leaf": leaf, "computed": computed, "plain": torch.ones(2)}, via)
    assert out["leaf"].requires_grad and out["leaf"].is_leaf
    assert out["computed"].requires_grad and out["computed"].is_leaf  # history is not saved
    assert not out["plain"].requires_grad
    assert tensor_bytes(out["computed"]) == tensor_bytes(computed)


@pytest.mark.parametrize("via", VIAS)
def test_conjugate_and_negative_views_are_resolved(via: Any) -> None:
    z = torch.tensor([1 + 2j, -3 - 4j], dtype=torch.complex64)
    conj = z.conj()
    assert conj.is_conj()
    out = roundtrip(conj, via)
    assert not out.is_conj()
    assert torch.equal(out, torch.tensor([1 - 2j, -3 + 4j], dtype=torch.complex64))


@pytest.mark.parametrize("via", VIAS)
def test_torch_device_dtype_size_roundtrip(via: Any) -> None:
    devices = [torch.device("cpu"), torch.device("cuda", 1), torch.device("cuda"), torch.device("meta")]
    for device in devices:
        out = roundtrip(device, via)
        assert type(out) is torch.device and out == device
    dtypes = sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str)
    assert torch.bfloat16 in dtypes
    for dtype in dtypes:
        assert roundtrip(dtype, via) is dtype
    for size in [torch.Size([]), torch.Size([0]), torch.Size([2, 3, 4])]:
        out = roundtrip(size, via)
        assert type(out) is torch.Size and out == size


# --------------------------------------------------------------------------- copy semantics


def test_copy_true_snapshots_numpy_arrays() -> None:
    value = np.arange(6.0).reshape(2, 3)
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    enc = encode({"a": value, "f": fortran}, copy=True)
    value[:] = -1
    fortran[:] = -1
    out = decode(enc.document, enc.payloads.__getitem__)
    assert out["a"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert out["f"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert not np.shares_memory(enc.payloads[0], value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_copy_true_snapshots_tensors(dtype: torch.dtype) -> None:
    value = torch.arange(6).to(dtype)
    strided = torch.arange(12).to(dtype).reshape(3, 4).T
    enc = encode([value, strided], copy=True)
    with torch.no_grad():
        value.fill_(9)
        strided.fill_(9)
    out = decode(enc.document, enc.payloads.__getitem__)
    assert out[0].tolist() == torch.arange(6).to(dtype).tolist()
    assert out[1].tolist() == torch.arange(12).to(dtype).reshape(3, 4).T.tolist()


def test_copy_false_shares_memory_with_cpu_numpy_arrays() -> None:
    # Documented: without copy=True payloads may share memory with the caller's values,
    # so mutating the value after encode changes what would be written.
    value = np.arange(5.0)
    enc = encode(value, copy=False)
    assert enc.payloads[0] is value or np.shares_memory(enc.payloads[0], value)
    value[0] = 42.0
    assert enc.payloads[0][0] == 42.0


def test_copy_false_shares_memory_with_cpu_float_tensors() -> None:
    value = torch.arange(5.0)
    enc = encode(value, copy=False)
    assert np.shares_memory(enc.payloads[0], value.numpy())
    assert not np.shares_memory(encode(value, copy=True).payloads[0], value.numpy())


# --------------------------------------------------------------------------- refusals


def test_unsupported_value_names_exact_path() -> None:
    value = S(history=[1, 2, 3, {"rng": object()}])
    with pytest.raises(CheckpointSerializationError) as info:
        encode(value, root="state")
    err = info.value
    assert isinstance(err, TypeError)
    assert isinstance(err, CheckpointError)
    assert err.path == "state.history[3]['rng']"
    assert "state.history[3]['rng']" in str(err)
    assert "builtins.object" in str(err)


@pytest.mark.parametrize(
    "value, root, path",
    [
        (Wrapper(S(history=[(1, {5: {"deep": [set()]}})])), "state", "state.inner.history[0][1][5]['deep'][0]"),
        ({"a": [1, (2, object())]}, "value", "value['a'][1][1]"),
        ([Point(1.0, object())], "metadata", "metadata[0].y"),
        ({1: {"x": lambda: 0}}, "value", "value[1]['x']"),
        (object(), "root", "root"),
        (FrozenSlotted(a=1, b=[frozenset()]), "s", "s.b[0]"),
    ],
)
def test_unsupported_nested_values_name_their_path(value: Any, root: str, path: str) -> None:
    with pytest.raises(CheckpointSerializationError) as info:
        encode(value, root=root)
    assert info.value.path == path
    assert path in str(info.value)


_P = collections.namedtuple("_P", "a b")


class _Color(enum.IntEnum):
    RED = 1


class _MyInt(int):
    pass


class _MyDict(dict):
    pass


class _FixedTZ(dt.tzinfo):
    def utcoffset(self, when: Any) -> dt.timedelta:
        return dt.timedelta(hours=1)

    def dst(self, when: Any) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, when: Any) -> str:
        return "CUSTOM"


class _MyDatetime(dt.datetime):
    pass


def _matrix() -> np.matrix:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.matrix([[1, 2]])


REFUSED = {
    "set": {1, 2},
    "frozenset": frozenset({1}),
    "namedtuple": _P(1, 2),
    "intenum": _Color.RED,
    "int_subclass": _MyInt(3),
    "dict_subclass": _MyDict(a=1),
    "ordered_dict": collections.OrderedDict(a=1),
    "bytearray": bytearray(b"x"),
    "lambda": lambda: 0,
    "object": object(),
    "type": Point,
    "matrix": _matrix(),
    "masked": np.ma.array([1, 2], mask=[0, 1]),
    "object_array": np.array([1, None], dtype=object),
    "object_array_0d": np.array(None, dtype=object),
    "struct_with_object": np.zeros(2, dtype=[("a", "<i4"), ("o", "O")]),
    "aware_time": dt.time(1, tzinfo=dt.timezone.utc),
    "custom_tzinfo": dt.datetime(2020, 1, 1, tzinfo=_FixedTZ()),
    "datetime_subclass": _MyDatetime(2020, 1, 1),
    "sparse_tensor": torch.tensor([[0.0, 1.0]]).to_sparse(),
    "meta_tensor": torch.empty(2, device="meta"),
    "complex_number": 1 + 2j,
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_types_are_refused(name: str) -> None:
    value = REFUSED[name]
    with pytest.raises(CheckpointSerializationError) as info:
        encode({"x": [value]}, root="state")
    assert isinstance(info.value, TypeError)
    assert info.value.path == "state['x'][0]"
    assert "state['x'][0]" in str(info.value)


@pytest.mark.parametrize(
    "key, path",
    [
        (1.5, "value[1.5]"),
        (True, "value[True]"),
        ((1, 2), "value[(1, 2)]"),
        (None, "value[None]"),
        (b"k", "value[b'k']"),
    ],
)
def test_dict_with_unsupported_keys_is_refused(key: Any, path: str) -> None:
    with pytest.raises(CheckpointSerializationError) as info:
        encode({"ok": 1, key: 2})
    assert info.value.path == path


def test_float_keys_in_a_nested_int_key_dict_are_refused() -> None:
    with pytest.raises(CheckpointSerializationError) as info:
        encode(S(history=[{1: "a", 2.0: "b"}]), root="state")
    assert info.value.path == "state.history[0][2.0]"


# --------------------------------------------------------------------------- schema hash


def _load_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture
def load_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Load source text as module ``name`` (the same name each time) and return its class ``State``."""
    name = f"restartable_schema_probe_{uuid.uuid4().hex}"
    counter = iter(range(1000))

    def load(source: str) -> type:
        path = tmp_path / f"variant_{next(counter)}" / f"{name}.py"
        path.parent.mkdir()
        path.write_text(source)
        module = _load_module(path, name)
        return module.State

    yield load
    sys.modules.pop(name, None)


_HEADER_PLAIN = "import dataclasses\nimport typing\nfrom typing import Any, Dict, List, Optional, Tuple, Union\n"
_HEADER_FUTURE = "from __future__ import annotations\n" + _HEADER_PLAIN

_BODY = """
@dataclasses.dataclass
class Inner:
    v: float = 0.0

@dataclasses.dataclass
class State:
    step: int = 0
    maybe: {maybe} = None
    values: {values} = dataclasses.field(default_factory=list)
    table: {table} = dataclasses.field(default_factory=dict)
    inner: Inner = dataclasses.field(default_factory=Inner)
    pair: {pair} = (0, 0.0)
    anything: Any = None
"""

_MODERN = dict(maybe="int | None", values="list[float]", table="dict[str, Inner]", pair="tuple[int, float]")
_LEGACY = dict(maybe="Optional[int]", values="List[float]", table="Dict[str, Inner]", pair="Tuple[int, float]")


def test_schema_hash_is_the_same_with_and_without_future_annotations(load_variant: Any) -> None:
    plain = load_variant(_HEADER_PLAIN + _BODY.format(**_MODERN))
    future = load_variant(_HEADER_FUTURE + _BODY.format(**_MODERN))
    assert plain is not future
    assert isinstance(future.__annotations__["step"], str)
    assert not isinstance(plain.__annotations__["step"], str)
    assert plain.__module__ == future.__module__ and plain.__qualname__ == future.__qualname__
    assert schema_hash(plain) == schema_hash(future)


def test_schema_hash_optional_equals_pipe_none_and_typing_aliases(load_variant: Any) -> None:
    modern = load_variant(_HEADER_PLAIN + _BODY.format(**_MODERN))
    legacy = load_variant(_HEADER_PLAIN + _BODY.format(**_LEGACY))
    union = load_variant(_HEADER_PLAIN + _BODY.format(**dict(_LEGACY, maybe="Union[None, int]")))
    assert schema_hash(modern) == schema_hash(legacy) == schema_hash(union)


@pytest.mark.parametrize(
    "change",
    [
        dict(_MODERN, maybe="float | None"),
        dict(_MODERN, values="list[int]"),
        dict(_MODERN, table="dict[int, Inner]"),
        dict(_MODERN, pair="tuple[int, int]"),
        dict(_MODERN, maybe="int"),
    ],
    ids=["optional_type", "list_item", "dict_key", "tuple_item", "optional_dropped"],
)
def test_schema_hash_changes_when_a_field_type_changes(load_variant: Any, change: dict) -> None:
    base = load_variant(_HEADER_PLAIN + _BODY.format(**_MODERN))
    changed = load_variant(_HEADER_PLAIN + _BODY.format(**change))
    assert schema_hash(base) != schema_hash(changed)


def test_schema_hash_changes_when_a_field_is_renamed_added_or_removed(load_variant: Any) -> None:
    source = _HEADER_PLAIN + _BODY.format(**_MODERN)
    base = load_variant(source)
    renamed = load_variant(source.replace("    step: int = 0", "    steps: int = 0"))
    added = load_variant(source.replace("    step: int = 0", "    step: int = 0\n    extra: int = 0"))
    removed = load_variant(source.replace("    step: int = 0\n", ""))
    hashes = {schema_hash(base), schema_hash(renamed), schema_hash(added), schema_hash(removed)}
    assert len(hashes) == 4


def test_schema_hash_depends_on_qualified_name() -> None:
    @dataclasses.dataclass
    class A:
        x: int

    @dataclasses.dataclass
    class B:
        x: int

    assert schema_hash(A) != schema_hash(B)


def test_schema_hash_is_stable_across_processes(load_variant: Any, tmp_path: Path) -> None:
    # No per-process randomness (hash() of str) may leak into the hash.
    source = _HEADER_FUTURE + _BODY.format(**_MODERN)
    cls = load_variant(source)
    path = tmp_path / "other" / f"{cls.__module__}.py"
    path.parent.mkdir()
    path.write_text(source)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
        "from restartable.codec import schema_hash; "
        "print(schema_hash(importlib.import_module(sys.argv[2]).State))"
    )
    result = run_python(code, str(path.parent), cls.__module__)
    assert result.stdout.strip() == schema_hash(cls)


def test_schema_hash_refuses_non_dataclasses() -> None:
    with pytest.raises(TypeError):
        schema_hash(int)
    with pytest.raises(TypeError):
        schema_hash(Point(1.0, 2.0))


# --------------------------------------------------------------------------- decode errors


def test_decoding_a_changed_dataclass_raises_schema_error(load_variant: Any) -> None:
    old = load_variant(_HEADER_PLAIN + _BODY.format(**_MODERN))
    enc = encode([old(step=3)])
    document = _via_json(enc.document)
    new = load_variant(_HEADER_PLAIN + _BODY.format(**dict(_MODERN, values="list[int]")))
    assert new is not old
    with pytest.raises(CheckpointStateSchemaError) as info:
        decode(document, enc.payloads.__getitem__, root="state")
    assert "state[0]" in str(info.value)
    # into= a current instance: also refused, and the instance is untouched
    target = new(step=-1)
    with pytest.raises(CheckpointStateSchemaError):
        decode(_via_json(encode(old(step=3)).document), enc.payloads.__getitem__, into=target)
    assert target.step == -1


def test_decoding_a_nested_dataclass_with_changed_schema_raises(load_variant: Any) -> None:
    source = _HEADER_PLAIN + _BODY.format(**_MODERN)
    old = load_variant(source)
    enc = encode(old())
    document = _via_json(enc.document)
    new = load_variant(source.replace("    v: float = 0.0", "    v: int = 0"))
    assert schema_hash(new) == schema_hash(old)  # the outer schema names Inner, not its fields
    with pytest.raises(CheckpointStateSchemaError):
        decode(document, enc.payloads.__getitem__, into=new())


def test_field_set_mismatch_with_a_forged_schema_is_refused() -> None:
    enc = encode(Point(1.0, 2.0))
    document = _via_json(enc.document)
    del document["v"]["y"]
    with pytest.raises(CheckpointStateSchemaError):
        decode(document, enc.payloads.__getitem__)
    document = _via_json(enc.document)
    document["v"]["z"] = 3
    with pytest.raises(CheckpointStateSchemaError):
        decode(document, enc.payloads.__getitem__)


def _no_payload(index: int) -> np.ndarray:
    raise IndexError(index)


MALFORMED = {
    "unknown_tag": {"__t": "pickle", "v": "gASVAAAAAAAAAACMBGV2aWyULg=="},
    "untagged_dict": {"a": 1},
    "nested_untagged": [1, {"__t": "dict", "v": {"k": {"x": 2}}}],
    "tag_not_string": {"__t": 5},
    "int_not_digits": {"__t": "int", "v": "12a"},
    "float_text": {"__t": "float", "v": "1.5"},
    "float_missing": {"__t": "float"},
    "bytes_not_base64": {"__t": "bytes", "v": "!!!"},
    "tuple_not_list": {"__t": "tuple", "v": 3},
    "dict_float_key": {"__t": "dict", "items": [[1.5, 1]]},
    "dict_bad_items": {"__t": "dict", "items": [[1]]},
    "datetime_text": {"__t": "datetime", "v": "yesterday", "fold": 0},
    "zone_unknown": {"__t": "datetime", "v": "2020-01-01T00:00:00", "zone": "Not/AZone", "fold": 0},
    "timedelta_short": {"__t": "timedelta", "v": [1, 2]},
    "scalar_wrong_length": {"__t": "np.scalar", "dtype": "<f8", "hex": "00", "repr": "0"},
    "scalar_object": {"__t": "np.scalar", "dtype": "|O", "hex": "00" * 8, "repr": "x"},
    "scalar_bad_hex": {"__t": "np.scalar", "dtype": "<i2", "hex": "zzzz", "repr": "x"},
    "dtype_garbage": {"__t": "np.dtype", "v": 17},
    "payload_missing": {"__t": "ndarray", "i": 3},
    "tensor_dtype_not_dtype": {"__t": "tensor", "dtype": "nn", "i": 0},
    "tensor_payload_mismatch": {"__t": "tensor", "dtype": "float64", "i": 0},
    "torch_dtype_not_dtype": {"__t": "torch.dtype", "v": "Tensor"},
    "torch_device_bad": {"__t": "torch.device", "v": "warp-drive:9"},
    "dataclass_missing_type": {"__t": "dataclass", "schema": "x", "v": {}},
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_documents_raise_corrupt_error(name: str) -> None:
    payloads = [np.zeros(3, dtype=np.float32)]  # 12 bytes: not a whole number of float64

    def load(index: int) -> np.ndarray:
        return payloads[index]

    with pytest.raises(CheckpointCorruptError):
        decode(MALFORMED[name], load)


def test_corrupt_error_names_the_path() -> None:
    document = {"__t": "dict", "v": {"steps": [0, {"__t": "nope"}]}}
    with pytest.raises(CheckpointCorruptError) as info:
        decode(document, _no_payload, root="state")
    assert "state['steps'][1]" in str(info.value)
    assert "'nope'" in str(info.value)


def test_decode_does_not_import_unimported_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = uuid.uuid4().hex
    marker = tmp_path / "imported.marker"
    side_effect = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
    dataclass_source = "import dataclasses\n@dataclasses.dataclass\nclass Foo:\n    x: int = 0\n"
    module = f"restartable_probe_{token}"
    package = f"restartable_probe_pkg_{token}"
    (tmp_path / f"{module}.py").write_text(side_effect + dataclass_source)
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "sub.py").write_text(side_effect + dataclass_source)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module(package)  # the package is imported, its submodule is not
    try:
        names = [f"{module}.Foo", f"{package}.sub.Foo", f"no_such_module_{token}.Foo", "json.tool.Foo"]
        json_tool_was_loaded = "json.tool" in sys.modules
        for name in names:
            document = {"__t": "dataclass", "type": name, "schema": "0" * 32, "v": {"x": 1}}
            with pytest.raises(CheckpointStateSchemaError) as info:
                decode(document, _no_payload)
            assert name in str(info.value)
            # also nested, and through into= of an unrelated dataclass
            with pytest.raises(CheckpointStateSchemaError):
                decode({"__t": "dataclass", "type": type(S([])).__module__ + ".S", "schema": schema_hash(S),
                        "v": {"history": [document], "step": 0}}, _no_payload)  # fmt: skip
        assert module not in sys.modules
        assert f"{package}.sub" not in sys.modules
        assert not hasattr(sys.modules[package], "sub")
        assert f"no_such_module_{token}" not in sys.modules
        assert ("json.tool" in sys.modules) == json_tool_was_loaded
        assert not marker.exists()
    finally:
        sys.modules.pop(package, None)


def test_decode_refuses_a_non_dataclass_named_as_dataclass() -> None:
    for name in ["builtins.object", "os.system", "subprocess.Popen", f"{__name__}.assert_same"]:
        document = {"__t": "dataclass", "type": name, "schema": "0" * 32, "v": {}}
        with pytest.raises(CheckpointStateSchemaError):
            decode(document, _no_payload)


def test_document_is_strict_json_and_contains_no_pickle() -> None:
    value = {
        "n": [math.nan, math.inf, -math.inf, -0.0, 2**80],
        "t": (1, b"\x80\x04"),
        "d": {1: np.float16(1.5), "dt": DATETIMES["zoneinfo_fold1"]},
        "p": _nested(),
        "a": _arrays()["structured"],
        "x": torch.ones(2, dtype=torch.bfloat16),
        "dtypes": [NUMPY_DTYPES["struct"], torch.float8_e4m3fn],
    }
    enc = encode(value)
    text = json.dumps(enc.document, allow_nan=False)
    assert "pickle" not in text
    assert_same(decode(json.loads(text), enc.payloads.__getitem__), value)
