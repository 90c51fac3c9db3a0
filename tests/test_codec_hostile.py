"""Hostile and broken documents: decoding ends in a CheckpointError, imports nothing, and describe() never raises.

A state or metadata document comes from a checkpoint file, which anyone able
to write the store may have written (a manifest's checksum proves integrity,
not authorship). Issue 18, the decoding part: every malformed document raises
:class:`CheckpointCorruptError` (:class:`CheckpointStateSchemaError` where it
names a dataclass this process lacks), no name in it makes the decoder import
a module, and :func:`restartable.codec.describe` (``restartable show``)
renders anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import sys
import types
import zoneinfo
from typing import Any, Literal

import numpy as np
import pytest
import torch

from conftest import run_python
from restartable import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointRemoteError,
    CheckpointSerializationError,
    CheckpointStateSchemaError,
    codec,
)
from restartable.codec import MAX_NESTING, decode, describe, dtype_from_json, encode, type_name


@dataclasses.dataclass
class Inner:
    x: Any = 0
    when: Any = None


@dataclasses.dataclass
class Outer:
    step: int = 0
    inner: Inner = dataclasses.field(default_factory=Inner)
    history: list[Any] = dataclasses.field(default_factory=list)


KNOWN = {type_name(Inner): Inner, type_name(Outer): Outer}

# Payload 0 is 12 bytes (three float32), payload 1 two float64.
PAYLOADS = [np.zeros(3, dtype=np.float32), np.arange(2, dtype=np.float64)]


def _deep(levels: int, leaf: Any, wrap: Any) -> Any:
    doc = leaf
    for _ in range(levels):
        doc = wrap(doc)
    return doc


def _dataclass_doc(name: Any, v: Any = None, schema: Any = None) -> dict[str, Any]:
    return {"__t": "dataclass", "type": name, "schema": schema, "v": {} if v is None else v}


def _datetime(zone: Any) -> dict[str, Any]:
    return {"__t": "datetime", "v": "2020-01-01T00:00:00", "fold": 0, "zone": zone}


def _scalar(dtype: Any, hex_: Any = "00000000") -> dict[str, Any]:
    return {"__t": "np.scalar", "dtype": dtype, "hex": hex_, "repr": "?"}


def _dtype(descr: Any) -> dict[str, Any]:
    return {"__t": "np.dtype", "v": descr}


INNER = type_name(Inner)

# Each must raise CheckpointCorruptError (not a schema error: each is
# malformed whatever classes the reader has).
MALFORMED: dict[str, Any] = {
    # records of the wrong shape
    "tag_is_a_list": {"__t": ["dict"], "v": {}},
    "tag_is_an_object": {"__t": {"a": 1}},
    "tag_is_a_method_name": {"__t": "torch_dtype", "v": "float32"},
    "int_missing_v": {"__t": "int"},
    "int_v_is_a_float": {"__t": "int", "v": 1.5},
    "int_v_is_a_list": {"__t": "int", "v": [1]},
    "int_too_many_digits": {"__t": "int", "v": "9" * 5000},
    "float_v_is_a_list": {"__t": "float", "v": ["nan"]},
    "dict_v_is_a_list": {"__t": "dict", "v": [1, 2]},
    "dict_without_v_or_items": {"__t": "dict"},
    "dict_items_is_an_object": {"__t": "dict", "items": {"a": 1}},
    "dict_item_of_three": {"__t": "dict", "items": [[1, 2, 3]]},
    "dict_item_is_a_string": {"__t": "dict", "items": ["ab"]},
    "dict_key_is_a_list": {"__t": "dict", "items": [[[1], 2]]},
    "tuple_v_is_an_int": {"__t": "tuple", "v": 3},
    "tuple_v_is_an_object": {"__t": "tuple", "v": {"a": 1}},
    "tuple_missing_v": {"__t": "tuple"},
    "timedelta_short": {"__t": "timedelta", "v": [1, 2]},
    "timedelta_strings": {"__t": "timedelta", "v": ["1", "2", "3"]},
    "timedelta_bools": {"__t": "timedelta", "v": [True, 0, 0]},
    "timedelta_object": {"__t": "timedelta", "v": {"days": 1}},
    "timedelta_overflow": {"__t": "timedelta", "v": [10**12, 0, 0]},
    "bytes_not_base64": {"__t": "bytes", "v": "!!!"},
    "bytes_v_is_an_int": {"__t": "bytes", "v": 5},
    "datetime_unparsable": {"__t": "datetime", "v": "yesterday", "fold": 0},
    "datetime_v_is_an_int": {"__t": "datetime", "v": 20200101, "fold": 0},
    "datetime_fold_2": {"__t": "datetime", "v": "2020-01-01T00:00:00", "fold": 2},
    "datetime_fold_string": {"__t": "datetime", "v": "2020-01-01T00:00:00", "fold": "1"},
    "datetime_tzname_is_a_list": {"__t": "datetime", "v": "2020-01-01T00:00:00+01:00", "tzname": ["X"]},
    "date_unparsable": {"__t": "date", "v": "2020-13-45"},
    "time_v_is_a_list": {"__t": "time", "v": [12, 0]},
    # dataclass records
    "dataclass_type_is_a_number": _dataclass_doc(5),
    "dataclass_type_is_a_list": _dataclass_doc(["builtins", "object"]),
    "dataclass_type_is_empty": _dataclass_doc(""),
    "dataclass_type_has_an_empty_part": _dataclass_doc("numpy..X"),
    "dataclass_type_ends_with_a_dot": _dataclass_doc("numpy."),
    "dataclass_type_is_huge": _dataclass_doc("a." * 50_000 + "B"),
    "dataclass_v_is_a_list": _dataclass_doc(INNER, v=[]),
    "dataclass_v_missing": {"__t": "dataclass", "type": INNER, "schema": None},
    "dataclass_schema_is_a_number": _dataclass_doc(INNER, v={"x": 1, "when": None}, schema=5),
    "dataclass_schema_missing": {"__t": "dataclass", "type": INNER, "v": {"x": 1, "when": None}},
    # payload references
    "index_past_the_payloads": {"__t": "ndarray", "i": 7},
    "index_negative": {"__t": "ndarray", "i": -1},
    "index_bool": {"__t": "ndarray", "i": True},
    "index_float": {"__t": "ndarray", "i": 0.0},
    "index_string": {"__t": "ndarray", "i": "0"},
    "index_huge": {"__t": "ndarray", "i": 2**70},
    "index_missing": {"__t": "ndarray"},
    "tensor_index_negative": {"__t": "tensor", "dtype": "float32", "i": -2},
    "tensor_index_past_the_payloads": {"__t": "tensor", "dtype": "float32", "i": 2},
    # time zones: refused before zoneinfo opens anything
    "zone_path_traversal": _datetime("../../etc/passwd"),
    "zone_traversal_inside": _datetime("Europe/../../../../etc/passwd"),
    "zone_absolute": _datetime("/etc/passwd"),
    "zone_backslashes": _datetime("..\\..\\etc\\passwd"),
    "zone_nul": _datetime("UTC\x00"),
    "zone_huge": _datetime("A" * 10_000),
    "zone_a_directory": _datetime("Europe"),
    "zone_unknown": _datetime("Not/AZone"),
    "zone_is_a_number": _datetime(5),
    "zone_with_an_offset": {"__t": "datetime", "v": "2020-01-01T00:00:00+01:00", "zone": "Europe/Paris"},
    # numpy scalars and dtypes
    "scalar_hex_odd_length": _scalar("<i2", "000"),
    "scalar_hex_not_hex": _scalar("<i2", "zzzz"),
    "scalar_hex_is_a_number": _scalar("<i4", 0),
    "scalar_hex_missing": {"__t": "np.scalar", "dtype": "<i4"},
    "scalar_object_dtype": _scalar("|O", "00" * 8),
    "scalar_structured_object_dtype": _scalar([["o", "|O"]], "00" * 8),
    "scalar_dtype_is_a_number": _scalar(5),
    "dtype_huge_void": _dtype("V99999999999"),
    "dtype_not_understood": _dtype("q9z"),
    "dtype_is_a_number": _dtype(17),
    "dtype_is_null": _dtype(None),
    "dtype_deep_fields": _dtype(_deep(1000, "<i4", lambda d: [["f", d]])),
    "dtype_deep_subarrays": _dtype(_deep(1000, "<i4", lambda d: {"base": d, "shape": [1]})),
    "dtype_subarray_overflow": _dtype({"base": "<f8", "shape": [2**40, 2**40]}),
    "dtype_subarray_itemsize_overflow": _dtype({"base": "V2000000000", "shape": [2000000000]}),
    "dtype_subarray_huge_dimension": _dtype({"base": "<f8", "shape": [2**80]}),
    "dtype_subarray_negative": _dtype({"base": "<f8", "shape": [-1]}),
    "dtype_subarray_bools": _dtype({"base": "<f8", "shape": [True]}),
    "dtype_subarray_strings": _dtype({"base": "<f8", "shape": ["2"]}),
    "dtype_subarray_too_many_dims": _dtype({"base": "<f8", "shape": [1] * 100}),
    "dtype_subarray_extra_key": _dtype({"base": "<f8", "shape": [2], "offset": 3}),
    "dtype_subarray_missing_shape": _dtype({"base": "<f8"}),
    "dtype_field_name_is_a_number": _dtype([[5, "<i4"]]),
    "dtype_field_is_a_string": _dtype(["<i4"]),
    "dtype_field_of_four": _dtype([["a", "<i4", [2], "x"]]),
    "dtype_field_shape_is_a_string": _dtype([["a", "<i4", "2"]]),
    # torch values
    "torch_dtype_is_a_number": {"__t": "torch.dtype", "v": 5},
    "torch_dtype_is_a_class": {"__t": "torch.dtype", "v": "Tensor"},
    "torch_dtype_is_a_submodule": {"__t": "torch.dtype", "v": "nn"},
    "torch_dtype_is_empty": {"__t": "torch.dtype", "v": ""},
    "torch_device_is_a_number": {"__t": "torch.device", "v": 0},
    "torch_size_strings": {"__t": "torch.Size", "v": ["1"]},
    "torch_size_negative": {"__t": "torch.Size", "v": [-1]},
    "torch_size_bools": {"__t": "torch.Size", "v": [True]},
    "tensor_dtype_missing": {"__t": "tensor", "i": 0},
    "tensor_dtype_is_a_class": {"__t": "tensor", "dtype": "Tensor", "i": 0},
    "tensor_requires_grad_is_a_string": {"__t": "tensor", "dtype": "float32", "i": 0, "requires_grad": "yes"},
    # float64 bits viewed as float32 would silently restore other numbers
    "tensor_payload_of_another_dtype": {"__t": "tensor", "dtype": "float32", "i": 1},
    # nesting far beyond MAX_NESTING
    "lists_5000_deep": _deep(5000, 1, lambda d: [d]),
    "lists_100000_deep": _deep(100_000, 1, lambda d: [d]),
    "tuples_1000_deep": _deep(1000, 1, lambda d: {"__t": "tuple", "v": [d]}),
    "dicts_1000_deep": _deep(1000, 1, lambda d: {"__t": "dict", "v": {"k": d}}),
    "dict_keys_1000_deep": _deep(1000, 1, lambda d: {"__t": "dict", "items": [[{"__t": "tuple", "v": [d]}, 0]]}),
    "dataclasses_1000_deep": _deep(1000, 0, lambda d: _dataclass_doc(INNER, v={"x": d, "when": None})),
    "untagged_1000_deep": {"__t": "dict", "v": {"k": _deep(1000, 1, lambda d: {"a": d})}},
}


def _load(index: int) -> np.ndarray:
    return PAYLOADS[index]


@pytest.mark.parametrize("name", list(MALFORMED))
@pytest.mark.parametrize("nested", ["resolve", "in_place"])
def test_malformed_records_raise_corrupt_error(name: str, nested: Literal["resolve", "in_place"]) -> None:
    before = set(sys.modules)
    with pytest.raises(CheckpointCorruptError) as info:
        decode(MALFORMED[name], _load, root="state", known_types=KNOWN, nested_dataclasses=nested)
    assert str(info.value).startswith("cannot decode state"), info.value
    assert len(str(info.value)) < 2000, "messages stay readable whatever the document holds"
    assert set(sys.modules) == before


def test_a_well_formed_unknown_dataclass_is_a_schema_error() -> None:
    # Unchanged contract: a name this process does not have is a schema
    # mismatch (restore into a newer program), not damage.
    for name in ["no_such_module.Foo", "json.NoSuchClass", "builtins.object", f"{__name__}.Inner.x"]:
        with pytest.raises(CheckpointStateSchemaError, match="no such dataclass is known"):
            decode(_dataclass_doc(name, v={"x": 1}), _load)


def test_payload_loader_index_error_names_the_path_in_the_document() -> None:
    def loader(index: int) -> np.ndarray:
        raise IndexError(index)

    document = {"__t": "dict", "v": {"x": [0, {"__t": "ndarray", "i": 7}]}}
    with pytest.raises(CheckpointCorruptError, match=r"state\['x'\]\[1\]: references payload #7") as info:
        decode(document, loader, root="state")
    assert isinstance(info.value.__cause__, IndexError)


def test_errors_of_the_payload_loader_pass_through_unchanged() -> None:
    # An unreachable store is not a damaged row: its error is not turned
    # into CheckpointCorruptError (which would make a catalog skip the row).
    raised = [CheckpointRemoteError("bucket unreachable", url="s3://b/k"), CheckpointCorruptError("x", row="r")]
    for exc in raised:

        def loader(index: int, exc: Exception = exc) -> np.ndarray:
            raise exc

        with pytest.raises(CheckpointError) as info:
            decode({"__t": "dict", "v": {"x": {"__t": "ndarray", "i": 0}}}, loader)
        assert info.value is exc


def test_zone_keys_that_are_paths_are_refused_before_zoneinfo_sees_them(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = zoneinfo.ZoneInfo

    def spy(key: str) -> zoneinfo.ZoneInfo:
        seen.append(key)
        return real(key)

    monkeypatch.setattr(zoneinfo, "ZoneInfo", spy)
    for key in ["../../etc/passwd", "/etc/passwd", "Europe/../../etc/passwd", "..", ".", "UTC\x00", "a\\b", "A" * 300]:
        with pytest.raises(CheckpointCorruptError, match="not a time zone name"):
            decode(_datetime(key), _load)
    assert seen == []
    # A real zone still round-trips.
    value = dt.datetime(2021, 3, 28, 1, 30, tzinfo=real("Europe/Paris"))
    assert decode(encode(value).document, _load) == value
    assert seen == ["Europe/Paris"]


def test_hostile_dtype_descriptions_raise_value_error_only() -> None:
    # The public helper's contract: ValueError for any bad description.
    for name, doc in MALFORMED.items():
        if name.startswith("dtype_"):
            with pytest.raises(ValueError):
                dtype_from_json(doc["v"])
    # Exact descriptions of real dtypes still read back.
    for dtype in [
        np.dtype("<f8"),
        np.dtype(("<i4", (2, 3))),
        np.dtype([(("title", "a"), "<i4"), ("b", "<f8", (2, 3)), ("c", [("d", "S3")])]),
        np.dtype("O"),  # a dtype value is only a description; object scalars and arrays are refused
    ]:
        assert dtype_from_json(json.loads(json.dumps(codec.dtype_to_json(dtype)))) == dtype


def test_torch_dtypes_come_from_an_allow_list_of_real_dtypes() -> None:
    names = codec._torch_dtype_names(torch)
    assert names["float32"] is torch.float32 and names["float"] is torch.float32  # aliases as before
    assert all(type(value) is torch.dtype for value in names.values())
    for name in ["Tensor", "nn", "_C", "__name__", "compiler", "_dynamo", "onnx", "float32 ", "FLOAT32"]:
        with pytest.raises(CheckpointCorruptError, match="unknown torch dtype"):
            decode({"__t": "torch.dtype", "v": name}, _load)


def test_dataclass_resolution_runs_no_attribute_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module-level ``__getattr__`` (a lazy loader) and a metaclass ``__getattr__`` are never called."""
    calls: list[str] = []

    class Hooked(type):
        def __getattr__(cls, name: str) -> Any:
            calls.append(f"class {name}")
            raise AttributeError(name)

    @dataclasses.dataclass
    class Leaf(metaclass=Hooked):
        v: int = 0

    def module_getattr(name: str) -> Any:
        calls.append(f"module {name}")
        raise AttributeError(name)

    module = types.ModuleType("restartable_hooked_probe")
    module.__getattr__ = module_getattr  # type: ignore[method-assign]
    module.Leaf = Leaf  # type: ignore[attr-defined]
    Leaf.__module__, Leaf.__qualname__ = module.__name__, "Leaf"
    monkeypatch.setitem(sys.modules, module.__name__, module)
    calls.clear()  # what the dataclass decorator looked up

    for name in ["sub.Thing", "Leaf.Nested", "Leaf.missing.Deeper", "missing", "Leaf.__class__", "__getattr__"]:
        with pytest.raises(CheckpointStateSchemaError):
            decode(_dataclass_doc(f"{module.__name__}.{name}"), _load)
    assert calls == []
    # The class itself is found, through the module's namespace.
    restored = decode(encode(Leaf(4)).document, _load)
    assert type(restored) is Leaf and restored.v == 4
    assert not [call for call in calls if call.startswith("module")]


IMPORT_PROBE = r"""
import json, sys
import numpy as np
try:
    import torch
except ImportError:
    torch = None
from restartable.codec import decode, describe, encode
from restartable.errors import CheckpointError

payloads = [np.zeros(2, dtype=np.float32)]
def dataclass_doc(name):
    return {"__t": "dataclass", "type": name, "schema": None, "v": {}}

docs = [dataclass_doc(name) for name in [
    "numpy.f2py.Something", "numpy.testing.X", "numpy.typing.X", "numpy.ctypeslib.X", "numpy.f2py.crackfortran.X",
]]
docs.append({"__t": "dict", "v": {"a": [dataclass_doc("numpy.testing.overrides.X")]}})
if torch is not None:
    docs += [dataclass_doc(name) for name in [
        "torch._dynamo.X", "torch.onnx.X", "torch._inductor.config.X", "torch.compiler.X", "torch._dynamo.X.Y",
    ]]
    for name in ["_dynamo", "onnx", "compiler", "_inductor", "testing", "_export", "distributed"]:
        docs.append({"__t": "tensor", "dtype": name, "i": 0})
        docs.append({"__t": "torch.dtype", "v": name})
    # Decoding real values first: what a valid document legitimately needs is loaded.
    warm = encode({"t": torch.ones(2), "d": torch.float32, "b": torch.zeros(2, dtype=torch.bfloat16)})
    decode(warm.document, warm.payloads.__getitem__)

before = set(sys.modules)
results = []
for doc in docs:
    for mode in ("resolve", "in_place"):
        try:
            decode(doc, payloads.__getitem__, nested_dataclasses=mode)
            # A dataclass outside any current one is a dict of its fields in "in_place" mode.
            results.append([mode, "decoded"])
        except CheckpointError as exc:
            results.append([mode, type(exc).__name__])
        except BaseException as exc:
            results.append([mode, f"ESCAPED {type(exc).__name__}: {exc}"])
    describe(doc)
print(json.dumps({"results": results, "imported": sorted(set(sys.modules) - before), "torch": torch is not None}))
"""


def test_decoding_imports_no_module_named_by_the_document() -> None:
    # A fresh interpreter: in this one, other tests may already have imported the modules.
    report = json.loads(run_python(IMPORT_PROBE, timeout=300).stdout.strip().splitlines()[-1])
    assert report["imported"] == [], f"decoding imported {len(report['imported'])} modules: {report['imported'][:20]}"
    assert report["torch"], "torch is a test dependency: the torch part must run"
    outcomes = {outcome for mode, outcome in report["results"] if mode == "resolve"}
    assert outcomes == {"CheckpointStateSchemaError", "CheckpointCorruptError"}, report["results"]
    assert not [outcome for _, outcome in report["results"] if outcome.startswith("ESCAPED")]


# --------------------------------------------------------------------------- nesting


def _nest(levels: int) -> Any:
    """A value of exactly ``levels`` containers, cycling through every kind of container."""
    value: Any = "leaf"
    for i in range(levels):
        value = [value] if i % 4 == 0 else (value,) if i % 4 == 1 else {"k": value} if i % 4 == 2 else Inner(x=value)
    return value


def _at_stack_depth(frames: int, fn: Any) -> Any:
    return fn() if frames <= 0 else _at_stack_depth(frames - 1, fn)


def test_nesting_up_to_the_limit_round_trips_and_beyond_it_is_refused_at_both_ends() -> None:
    value = _nest(MAX_NESTING)
    enc = encode(value)
    document = json.loads(json.dumps(enc.document))
    # Within the default recursion limit even below 150 frames of the caller's own.
    assert _at_stack_depth(150, lambda: decode(document, _load, known_types=KNOWN)) == value
    assert json.dumps(_at_stack_depth(150, lambda: describe(document)))

    with pytest.raises(CheckpointSerializationError, match=f"nested more than {MAX_NESTING}"):
        encode(_nest(MAX_NESTING + 1))
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(CheckpointSerializationError, match="reference cycle"):
        encode(cycle)

    deeper = [document]
    with pytest.raises(CheckpointCorruptError, match=f"nested more than {MAX_NESTING} containers deep"):
        decode(deeper, _load, known_types=KNOWN)


def test_a_caller_deep_in_its_own_stack_gets_corrupt_error_not_recursion_error() -> None:
    document = json.loads(json.dumps(encode(_nest(MAX_NESTING)).document))
    limit = sys.getrecursionlimit()
    with pytest.raises(CheckpointCorruptError, match="nested too deeply"):
        _at_stack_depth(limit - 200, lambda: decode(document, _load, known_types=KNOWN))
    shown = _at_stack_depth(limit - 200, lambda: describe(document))
    assert "<nested too deeply>" in json.dumps(shown) and "malformed" not in json.dumps(shown)


# --------------------------------------------------------------------------- describe

ODD_DOCUMENTS: dict[str, Any] = {
    **MALFORMED,
    "tensor_without_index": {"__t": "tensor", "dtype": "float32"},
    "tensor_dtype_is_a_list": {"__t": "tensor", "dtype": [1], "i": 0},
    "scalar_without_repr": {"__t": "np.scalar", "dtype": "<f8", "hex": "00" * 8},
    "dataclass_without_type": {"__t": "dataclass", "v": {"a": 1}},
    "timedelta_huge": {"__t": "timedelta", "v": [10**20, 0, 0]},
    "not_json": {"__t": "dict", "v": {"x": object()}},
    "set_inside": [{1, 2}],
}


@pytest.mark.parametrize("name", list(ODD_DOCUMENTS))
def test_describe_never_raises(name: str) -> None:
    text = json.dumps(describe(ODD_DOCUMENTS[name]))  # JSON-compatible, as restartable show prints it
    assert len(text) < 10_000_000


def test_describe_marks_malformed_records_and_renders_good_ones() -> None:
    document = {
        "__t": "dict",
        "v": {
            "a": {"__t": "tensor", "dtype": "bfloat16", "i": 3},
            "b": {"__t": "tensor", "dtype": ["x"], "i": 3},
            "c": {"__t": "np.dtype", "v": "V99999999999"},
            "d": {"__t": "dataclass", "type": 5, "v": []},
            "e": {"__t": "timedelta", "v": [1, 2, 3]},
            "f": {"__t": "future-tag", "v": 1},
            "g": _deep(1000, 1, lambda d: [d]),
        },
    }
    shown = describe(document)
    assert shown["a"] == "<tensor bfloat16 payload #3>"
    assert shown["b"] == "<malformed 'tensor' record>"
    assert shown["c"] == "<malformed 'np.dtype' record>"
    assert shown["d"] == "<malformed 'dataclass' record>"
    assert shown["e"] == str(dt.timedelta(1, 2, 3))
    assert shown["f"] == {"__t": "future-tag", "v": 1}
    assert "<nested too deeply>" in json.dumps(shown["g"])


# --------------------------------------------------------------------------- fuzz


def _realistic_states() -> list[Any]:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    return [
        {
            "step": 12,
            "x": np.arange(6, dtype=np.float32).reshape(2, 3),
            "mask": np.array([True, False]),
            "big": 2**70,
            "odd": [float("nan"), float("inf"), -0.0],
            "blob": b"\x00\xff",
            "pair": (1, "a"),
            "by_int": {3: "c", 1: "a"},
            "rec": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8", (2,))]),
        },
        Outer(
            step=3,
            inner=Inner(x=np.ones(2), when=dt.datetime(2024, 10, 27, 2, 30, tzinfo=paris, fold=1)),
            history=[Inner(1), (Inner(2), None)],
        ),
        {
            "naive": dt.datetime(2020, 1, 2, 3, 4, 5, 6),
            "utc": dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc),
            "named": dt.datetime(2020, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=5), "PKT")),
            "date": dt.date(2020, 2, 29),
            "time": dt.time(23, 59, 59, 999999),
            "span": dt.timedelta(days=-1, seconds=5),
            "lead_time": np.timedelta64(6, "h"),
            "scalars": [np.float16(1.5), np.datetime64("NaT"), np.void(b"\x01\x02"), np.str_("")],
            "dtypes": [np.dtype("<f8"), np.dtype(("<i4", (2, 3))), np.dtype([("a", "S3")])],
        },
        {
            "f32": torch.arange(4, dtype=torch.float32),
            "bf16": torch.ones(3, dtype=torch.bfloat16),
            "f8": torch.zeros(2, dtype=torch.float8_e4m3fn),
            "i8": torch.tensor([-1, 2], dtype=torch.int8),
            "b": torch.tensor([True]),
            "c": torch.ones(2, dtype=torch.complex64),
            "grad": torch.ones(2, requires_grad=True),
            "dev": torch.device("cpu"),
            "dt": torch.float16,
            "size": torch.Size([2, 3]),
        },
    ]


HOSTILE_STRINGS = [
    "numpy.f2py.Something",
    "numpy.testing.X",
    "torch._dynamo.X",
    "torch.onnx.X",
    "_dynamo",
    "onnx",
    "compiler",
    "../../etc/passwd",
    "/etc/passwd",
    "V99999999999",
    "|O",
    "",
    ".",
    "a..b",
    "builtins.object",
    "os.system",
    "nan",
    "-inf",
    "\x00",
    "zz",
    "2020-01-01T00:00:00",
    "Europe/Paris",
    "float32",
    "bfloat16",
]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(
            [None, True, False, 0, 1, -1, 2**31, 2**64, -(2**70), 0.5, -1.5, float("nan"), "x", "", *HOSTILE_STRINGS]
        )
    if roll < 0.7:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if roll < 0.85:
        return {rng.choice(["v", "i", "a", "__t", "type"]): _random_json(rng, depth + 1) for _ in range(3)}
    # A record with a real tag and random fields.
    tag = rng.choice(sorted(codec._TAGS))
    fields = ["v", "i", "dtype", "hex", "type", "schema", "items", "zone", "fold", "tzname", "requires_grad"]
    return {"__t": tag, **{rng.choice(fields): _random_json(rng, depth + 1) for _ in range(rng.randrange(1, 4))}}


def _nodes(doc: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) pair under ``doc``: the places a mutation may hit."""
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            out.append((doc, i))
            _nodes(item, out)
    elif isinstance(doc, dict):
        for key, item in doc.items():
            out.append((doc, key))
            _nodes(item, out)
    return out


def _swap_type(rng: random.Random, value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return rng.choice([str(value), float(value), value > 0, -value - 1, value + 2**64, [value]])
    if isinstance(value, float):
        return rng.choice([int(value) if value == value and abs(value) < 1e18 else 0, str(value)])
    if isinstance(value, str):
        return rng.choice([len(value), [value], {"__t": value}, value[::-1], value * 3, rng.choice(HOSTILE_STRINGS)])
    if isinstance(value, list):
        return rng.choice(
            [{str(i): v for i, v in enumerate(value)}, value[:-1], value + value, len(value), tuple(value)]
        )
    if isinstance(value, dict):
        return rng.choice([list(value.values()), list(value.items()), str(value)[:20], None])
    return None


def _mutate(rng: random.Random, doc: Any) -> Any:
    doc = json.loads(json.dumps(doc))  # a private copy
    holder = [doc]
    for _ in range(rng.randrange(1, 4)):
        places = [(holder, 0), *_nodes(holder[0], [])]
        container, key = rng.choice(places)
        kind = rng.randrange(6)
        if kind == 0 and isinstance(container, dict) and container is not holder:
            del container[key]
        elif kind == 1:
            container[key] = _random_json(rng)
        elif kind == 2:
            container[key] = _swap_type(rng, container[key])
        elif kind == 3:
            container[key] = rng.choice(HOSTILE_STRINGS)
        elif kind == 4:
            # A subtree of the document moved elsewhere.
            donor, donor_key = rng.choice(places)
            container[key] = json.loads(json.dumps(donor[donor_key]))
        elif isinstance(container[key], int) and not isinstance(container[key], bool):
            container[key] = rng.choice([-1, 2, 7, 2**63, container[key] + 1])
        else:
            container[key] = _random_json(rng)
    if rng.random() < 0.15:
        # Deep nesting last: the helpers above recurse, and would not survive it.
        container, key = rng.choice([(holder, 0), *_nodes(holder[0], [])])
        levels = rng.choice([MAX_NESTING - 5, MAX_NESTING + 1, 1000, 5000])
        wrap = rng.choice([
            lambda d: [d],
            lambda d: {"__t": "tuple", "v": [d]},
            lambda d: {"__t": "dict", "v": {"k": d}},
            lambda d: {"__t": "dict", "items": [[d, 0]]},
        ])  # fmt: skip
        container[key] = _deep(levels, container[key], wrap)
    return holder[0]


FUZZ_CASES = 3000


# Warnings as errors: numpy warns about some hostile dtype strings, and a run
# with -W error must still see only CheckpointErrors.
@pytest.mark.filterwarnings("error")
def test_fuzzed_documents_raise_only_checkpoint_errors_and_import_nothing() -> None:
    encoded = [encode(state) for state in _realistic_states()]
    originals = [(json.loads(json.dumps(enc.document)), enc.payloads) for enc in encoded]
    # The valid documents first: what decoding them legitimately loads (zoneinfo) is loaded.
    for document, payloads in originals:
        decode(document, payloads.__getitem__, known_types=KNOWN)
        describe(document)
    modules = set(sys.modules)

    rng = random.Random(18)
    failures: list[str] = []
    outcomes = {"decoded": 0, "corrupt": 0, "schema": 0, "other CheckpointError": 0}
    for case in range(FUZZ_CASES):
        document, payloads = originals[case % len(originals)]
        mutated = _mutate(rng, document)
        mode: Literal["resolve", "in_place"] = "in_place" if case % 3 == 2 else "resolve"
        try:
            decode(mutated, payloads.__getitem__, known_types=KNOWN, nested_dataclasses=mode)
            outcomes["decoded"] += 1
        except CheckpointCorruptError:
            outcomes["corrupt"] += 1
        except CheckpointStateSchemaError:
            outcomes["schema"] += 1
        except CheckpointError:
            outcomes["other CheckpointError"] += 1
        except BaseException as exc:  # any escape is the failure under test
            failures.append(f"case {case}: decode raised {type(exc).__name__}: {str(exc)[:200]}")
        try:
            json.dumps(describe(mutated))
        except BaseException as exc:
            failures.append(f"case {case}: describe raised {type(exc).__name__}: {str(exc)[:200]}")
        if len(sys.modules) != len(modules):
            failures.append(f"case {case}: decoding imported {sorted(set(sys.modules) - modules)[:10]}")
            modules = set(sys.modules)
    assert failures == [], f"{len(failures)} of {FUZZ_CASES} cases failed:\n" + "\n".join(failures[:30])
    # The mutations reach both ends: some documents stay decodable, most are refused.
    assert outcomes["decoded"] > FUZZ_CASES // 20 and outcomes["corrupt"] > FUZZ_CASES // 3, outcomes
