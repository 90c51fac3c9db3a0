"""Property-based round trips of the codec, in memory and through a real store."""

from __future__ import annotations

import contextvars
import dataclasses
import json
import math
import shutil
import tempfile
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from restartable import Checkpoint, CheckpointSerializationError, bind_checkpoint_state
from restartable.codec import decode, encode
from support import assert_same

# --------------------------------------------------------------------------- exact equality


def test_assert_same_is_strict() -> None:
    # The comparison helper must itself be able to fail.
    for a, b in [
        (0.0, -0.0),
        (1, True),
        ([1], (1,)),
        ({1: 0}, {"1": 0}),
        (np.zeros(2, "<f8"), np.zeros(2, ">f8")),
        (np.zeros((2, 1)), np.zeros((1, 2))),
        (np.array([np.nan]), np.array([1.0])),
        (torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.float16)),
        (torch.ones(2), torch.ones(2, requires_grad=True)),
        (Pair(1, 2), Pair(1, 3)),
    ]:
        with pytest.raises(AssertionError):
            assert_same(a, b)
    assert_same([math.nan, np.array([np.nan])], [math.nan, np.array([np.nan])])


# --------------------------------------------------------------------------- dataclasses


@dataclasses.dataclass
class Pair:
    left: Any
    right: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    name: str
    values: list
    table: dict


@dataclasses.dataclass
class Holder:
    value: Any = None


# --------------------------------------------------------------------------- strategies


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**130), max_value=2**130),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**80, -(2**80), 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324]),
    st.text(max_size=12),
    st.binary(max_size=12),
)

_BASIC_DTYPES = st.one_of(
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.boolean_dtypes(),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(endianness="?", max_len=4),
    hnp.unicode_string_dtypes(endianness="?", max_len=4),
)

array_dtypes = st.one_of(
    _BASIC_DTYPES,
    hnp.array_dtypes(subtype_strategy=_BASIC_DTYPES, min_size=1, max_size=3),
)

_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def _relayout(array: np.ndarray, how: str) -> np.ndarray:
    """Non-contiguous and Fortran-ordered views of the same data."""
    if array.ndim == 0 or how == "as-is":
        return array
    if how == "transpose":
        return array.T
    if how == "reverse":
        return array[::-1]
    if how == "step":
        return array[::2]
    return np.asfortranarray(array)


arrays = st.builds(
    _relayout,
    hnp.arrays(dtype=array_dtypes, shape=_shapes),
    st.sampled_from(["as-is", "transpose", "reverse", "step", "fortran"]),
)

_TORCH_NATIVE = [
    np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128,
]  # fmt: skip


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(_TORCH_NATIVE))
    array = draw(hnp.arrays(dtype=dtype, shape=_shapes))
    tensor = torch.from_numpy(np.ascontiguousarray(array).copy())
    if tensor.is_floating_point() and draw(st.booleans()):
        tensor = tensor.to(draw(st.sampled_from([torch.bfloat16, torch.float16, torch.float32])))
    layout = draw(st.sampled_from(["as-is", "transpose", "step", "offset"]))
    if tensor.dim() >= 1:
        if layout == "transpose":
            tensor = tensor.permute(*reversed(range(tensor.dim())))
        elif layout == "step":
            tensor = tensor[::2]
        elif layout == "offset":
            tensor = tensor[1:]
    if (tensor.is_floating_point() or tensor.is_complex()) and draw(st.booleans()):
        tensor = tensor.detach().requires_grad_(True)
    return tensor


numpy_scalars = hnp.arrays(dtype=array_dtypes, shape=(1,)).map(lambda a: a[0])

leaves = st.one_of(scalars, arrays, tensors(), numpy_scalars, array_dtypes)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.dictionaries(st.integers(), children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(-5, 5)), children, max_size=4),
        st.builds(Pair, children, children),
        st.builds(
            Record,
            st.text(max_size=4),
            st.lists(children, max_size=3),
            st.dictionaries(st.integers(), children, max_size=3),
        ),
    )


values = st.recursive(leaves, _containers, max_leaves=12)

_SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- properties


@settings(max_examples=100, **_SETTINGS)
@given(value=values, copy=st.booleans())
def test_codec_roundtrip_in_memory(value: Any, copy: bool) -> None:
    enc = encode(value, copy=copy)
    assert all(type(p) is np.ndarray for p in enc.payloads)
    assert_same(decode(enc.document, enc.payloads.__getitem__), value)


@settings(max_examples=100, **_SETTINGS)
@given(value=values)
def test_codec_roundtrip_through_json(value: Any) -> None:
    enc = encode(value, copy=True)
    text = json.dumps(enc.document, allow_nan=False)
    assert_same(decode(json.loads(text), enc.payloads.__getitem__), value)


@settings(max_examples=100, **_SETTINGS)
@given(value=arrays)
def test_array_roundtrip_through_json(value: np.ndarray) -> None:
    enc = encode({"a": value})
    out = decode(json.loads(json.dumps(enc.document, allow_nan=False)), enc.payloads.__getitem__)["a"]
    assert_same(out, value)


@settings(max_examples=60, **_SETTINGS)
@given(value=st.one_of(array_dtypes, st.builds(lambda a: a.dtype, arrays)))
def test_numpy_dtype_values_roundtrip(value: np.dtype) -> None:
    enc = encode([value])
    out = decode(json.loads(json.dumps(enc.document)), enc.payloads.__getitem__)[0]
    assert out == value and out.str == value.str and out.names == value.names


@settings(max_examples=60, **_SETTINGS)
@given(array=hnp.arrays(dtype=array_dtypes, shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3)))
def test_numpy_scalar_values_roundtrip(array: np.ndarray) -> None:
    value = array.reshape(-1)[0]
    assert isinstance(value, np.generic)
    enc = encode({"s": value})
    out = decode(json.loads(json.dumps(enc.document)), enc.payloads.__getitem__)["s"]
    assert type(out) is type(value)
    assert_same(out, value)


@settings(max_examples=25, **_SETTINGS)
@given(value=values)
@example(value={"b": [np.arange(3, dtype=">i2")], "a": (torch.ones(2, dtype=torch.bfloat16), {3: -0.0, 1: math.nan})})
def test_roundtrip_through_the_store(value: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tempfile.mkdtemp(prefix="store-", dir=tmp_path_factory.getbasetemp())
    try:
        # Checkpoint() and bindings set context variables; keep them out of other tests.
        contextvars.copy_context().run(_store_roundtrip, directory, value)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _store_roundtrip(directory: str, value: Any) -> None:
    writer = Checkpoint("properties", path=directory, mode="append")
    with writer as session:
        state = bind_checkpoint_state(Holder(value))
        assert not state.checkpoint_state_loaded
        entry = session.write(step=1)
        assert entry is not None
    writer.close()

    reader = Checkpoint("properties", path=directory, mode="append")
    assert len(reader.catalog) == 1
    selected = reader.select(-1)
    fresh = Holder(value="default")
    restored = selected.bind(fresh)
    assert restored.checkpoint_state_loaded
    assert restored.checkpoint_dataclass is fresh
    assert_same(fresh.value, value)
    reader.close()


def _write_and_restore(directory: str, value: Any) -> Any:
    return contextvars.copy_context().run(_write_and_restore_here, directory, value)


def _write_and_restore_here(directory: str, value: Any) -> Any:
    with Checkpoint("order", path=directory, mode="append") as session:
        bind_checkpoint_state(Holder(value))
        session.write()
    fresh = Holder()
    reader = Checkpoint("order", path=directory, mode="append")
    assert reader.select(-1).bind(fresh).checkpoint_state_loaded
    reader.close()
    return fresh.value


def test_str_key_order_survives_the_store(tmp_path: Any) -> None:
    # Python dicts are ordered; a restored dict must iterate like the saved one.
    value = {"zeta": 1, "alpha": 2, "": 3, "0": 4, "mid": {"b": 1, "a": 2}}
    in_memory = decode(encode(value).document, encode(value).payloads.__getitem__)
    assert list(in_memory) == ["zeta", "alpha", "", "0", "mid"]
    restored = _write_and_restore(str(tmp_path / "store"), value)
    assert restored == value
    assert list(restored) == ["zeta", "alpha", "", "0", "mid"]
    assert list(restored["mid"]) == ["b", "a"]


def test_int_key_order_survives_the_store(tmp_path: Any) -> None:
    value = {5: "five", -1: "minus one", 2**70: "big", 0: "zero", "s": "string"}
    restored = _write_and_restore(str(tmp_path / "store"), value)
    assert list(restored) == [5, -1, 2**70, 0, "s"]
    assert_same(restored, value)


def test_structured_array_with_non_latin1_field_names_through_the_store(tmp_path: Any) -> None:
    # Field names are str; numpy writes such headers as .npy format 3.0 (utf-8).
    # The store must restore the array exactly, or refuse it up front with a
    # CheckpointSerializationError (a TypeError) naming the value.
    value = np.array([(1.5, 2), (-0.0, 3)], dtype=[("温度", "<f4"), ("Ā", ">i2")])

    def body() -> None:
        directory = str(tmp_path / "store")
        with Checkpoint("unicode", path=directory) as session:
            state = bind_checkpoint_state(Holder("first"))
            session.write()
            state.value = {"field": value}
            try:
                session.write()
            except CheckpointSerializationError as exc:
                assert exc.path is not None and "field" in exc.path
                refused = True
            else:
                refused = False
        reader = Checkpoint("unicode", path=directory)
        fresh = Holder()
        assert reader.select(-1).bind(fresh).checkpoint_state_loaded
        reader.close()
        if refused:
            assert fresh.value == "first"
        else:
            assert_same(fresh.value, {"field": value})

    contextvars.copy_context().run(body)
