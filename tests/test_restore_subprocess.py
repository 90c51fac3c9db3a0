"""Write a checkpoint in one process and restore it in another, fresh one.

The dataclasses live in a small module written to ``tmp_path`` and put on
``PYTHONPATH``, so that the writing and the restoring process import the
same class. Each process prints a canonical description of the state (type
names, exact bytes in hex); the test compares them.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import run_python
from restartable import (
    Checkpoint,
    CheckpointStateCollision,
    bind_checkpoint_state,
)
from support import TESTS_DIR

# --------------------------------------------------------------------------- shared module

TYPES_MODULE = "xproc_types"

TYPES_SOURCE = textwrap.dedent(
    '''
    """Dataclasses shared by the writing and the restoring process."""
    from __future__ import annotations

    import dataclasses
    import datetime as dt
    import math
    import zoneinfo
    from typing import Any, Optional

    import numpy as np
    import torch

    from support import NUMPY_INTEGER_EXTREMES, tensor_bytes

    STRUCT = np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "S3"), ("d", [("e", ">u2"), ("f", "?")], (2,))])


    @dataclasses.dataclass
    class Inner:
        label: str = ""
        weights: Any = None
        when: Optional[dt.datetime] = None


    @dataclasses.dataclass(frozen=True, slots=True)
    class FrozenPart:
        a: int = 0
        b: tuple = ()


    @dataclasses.dataclass
    class Everything:
        none: Any = "not none"
        flag: bool = False
        small_int: int = 0
        big_int: int = 0
        neg_big_int: int = 0
        real: float = 0.0
        nan: float = 0.0
        neg_inf: float = 0.0
        neg_zero: float = 0.0
        text: str = ""
        raw: bytes = b""
        items: list = dataclasses.field(default_factory=list)
        pair: tuple = ()
        by_name: dict[str, Any] = dataclasses.field(default_factory=dict)
        by_int: dict[int, Any] = dataclasses.field(default_factory=dict)
        mixed_keys: dict = dataclasses.field(default_factory=dict)
        inner: Inner = dataclasses.field(default_factory=Inner)
        frozen: FrozenPart = dataclasses.field(default_factory=FrozenPart)
        inners: list[Inner] = dataclasses.field(default_factory=list)
        by_id: dict[int, Inner] = dataclasses.field(default_factory=dict)
        when_naive: Any = None
        when_offset: Any = None
        when_utc: Any = None
        when_zone: Any = None
        day: Any = None
        clock: Any = None
        span: Any = None
        np_scalars: dict = dataclasses.field(default_factory=dict)
        np_dtypes: list = dataclasses.field(default_factory=list)
        arrays: dict = dataclasses.field(default_factory=dict)
        tensors: dict = dataclasses.field(default_factory=dict)
        devices: list = dataclasses.field(default_factory=list)
        torch_dtypes: list = dataclasses.field(default_factory=list)
        size: Any = None


    def _bits(dtype, shape, seed):
        rng = np.random.default_rng(seed)
        count = int(np.prod(shape)) if shape else 1
        raw = rng.integers(0, 256, size=count * dtype.itemsize, dtype=np.uint8)
        return torch.from_numpy(raw).view(dtype).reshape(shape)


    def populated() -> Everything:
        rng = np.random.default_rng(7)
        base = np.arange(24, dtype=np.float64).reshape(4, 6) / 7
        ny = zoneinfo.ZoneInfo("America/New_York")
        structured = np.array(
            [(1, 2.5, b"xyz", [(3, True), (4, False)]), (-1, math.nan, b"", [(0, False), (65535, True)])], dtype=STRUCT
        )
        leaf = torch.tensor([1.0, -2.0, 3.5], requires_grad=True)
        return Everything(
            none=None,
            flag=True,
            small_int=-7,
            big_int=2**80 + 1,
            neg_big_int=-(2**100),
            real=0.1,
            nan=math.nan,
            neg_inf=-math.inf,
            neg_zero=-0.0,
            text="héllo ✓ 日本 🚀",
            raw=bytes(range(256)),
            items=[1, "two", [3.0, None, math.inf]],
            pair=(1, (2, "x"), ()),
            by_name={"b": 1, "a": {"nested": (1, b"\\x00")}},
            by_int={3: "c", 2**70: "big", -1: None},
            mixed_keys={1: "one", "1": "string one"},
            inner=Inner("in", torch.arange(6, dtype=torch.float32).reshape(2, 3), '''
    '''dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=ny)),
            frozen=FrozenPart(5, (1, 2.5)),
            inners=[Inner("a", np.arange(3, dtype=">i2")), Inner("b", None, None)],
            by_id={7: Inner("seven", {"w": torch.ones(2, dtype=torch.bfloat16)})},
            when_naive=dt.datetime(2024, 2, 29, 23, 59, 58, 123456),
            when_offset=dt.datetime(2020, 1, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
            when_utc=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
            when_zone=dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=ny),
            day=dt.date(1969, 7, 20),
            clock=dt.time(1, 30, 0, 5, fold=1),
            span=dt.timedelta(days=-3, seconds=5, microseconds=7),
            np_scalars={
                "float16": np.float16(-1.0009765625),
                "float32": np.float32(1e-40),
                "longdouble": np.longdouble(1) / np.longdouble(3),
                "complex64": np.complex64(1.5 - 2j),
                "complex128": np.complex128(complex(math.inf, math.nan)),
                **NUMPY_INTEGER_EXTREMES,
                "bool": np.bool_(True),
                "datetime64": np.datetime64("2020-01-01T00:00:00.123456789", "ns"),
                "nat": np.datetime64("NaT"),
                "timedelta64": np.timedelta64(-5, "h"),
                "str_": np.str_("héllo"),
                "bytes_": np.bytes_(b"ab\\x00c"),
                "void": structured[0],
            },
            np_dtypes=[np.dtype(">f8"), np.dtype("<M8[ns]"), STRUCT, np.dtype("U3")],
            arrays={
                "0d": np.array(3.25),
                "empty": np.zeros((0, 3)),
                "slice": base[::2, 1::3],
                "reversed": base[::-1, ::-2],
                "fortran": np.asfortranarray(base),
                "big_endian": np.arange(12, dtype=">f8").reshape(3, 4),
                "big_endian_slice": np.arange(30, dtype=">i4").reshape(5, 6)[1::2, ::-1],
                "structured": structured,
                "datetime64": np.array(["2020-01-01T00:00", "NaT", "1969-12-31T23:59"], dtype="M8[m]"),
                "timedelta64": np.array([1, -2, np.iinfo(np.int64).min], dtype=">m8[us]"),
                "bool": np.array([[True, False], [False, True]]),
                "complex": (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(">c8"),
                "nan_payload": np.frombuffer(b"\\x01\\x00\\x00\\x00\\x00\\x00\\xf8\\x7f", dtype="<f8").copy(),
                "unicode": np.array(["a", "héllo", ""], dtype=">U5"),
                "bytes": np.array([b"ab", b"\\x00\\x01", b""], dtype="S2"),
                "float16": rng.standard_normal(5).astype(np.float16),
                "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
            },
            tensors={
                "float32_t": torch.arange(12, dtype=torch.float32).reshape(3, 4).T,
                "float64": torch.tensor([math.nan, -0.0, math.inf, 5e-324], dtype=torch.float64),
                "int64": torch.tensor([-(2**63), 2**63 - 1, 0]),
                "bool": torch.tensor([True, False, True]),
                "bfloat16": _bits(torch.bfloat16, (3, 2), 1),
                "bfloat16_strided": _bits(torch.bfloat16, (6, 4), 2)[::2, 1::2],
                "float16": _bits(torch.float16, (5,), 3),
                "complex64": torch.tensor([1 + 2j, -3.5 - 0.5j], dtype=torch.complex64),
                "float8_e4m3fn": _bits(torch.float8_e4m3fn, (4,), 4),
                "uint16": _bits(torch.uint16, (2, 2), 5),
                "0d": torch.tensor(2.5),
                "0d_bfloat16": torch.tensor(-1.5, dtype=torch.bfloat16),
                "empty": torch.zeros(0, 3),
                "step": torch.arange(10)[::2],
                "offset": torch.arange(10.0)[3:7],
                "requires_grad": leaf,
            },
            devices=[torch.device("cpu"), torch.device("cuda", 1)],
            torch_dtypes=[torch.bfloat16, torch.float8_e4m3fn, torch.int64, torch.bool],
            size=torch.Size([2, 0, 3]),
        )


    def _name(value):
        return f"{type(value).__module__}.{type(value).__qualname__}"


    def describe(value):
        """Canonical, JSON-compatible description: type names and exact bytes."""
        t = type(value)
        if value is None or t is bool or t is str:
            return [_name(value), value]
        if t is int:
            return [_name(value), str(value)]
        if t is float:
            return [_name(value), value.hex()]
        if t is bytes:
            return [_name(value), value.hex()]
        if t in (list, tuple):
            return [_name(value), [describe(v) for v in value]]
        if t is dict:
            return [_name(value), [[describe(k), describe(v)] for k, v in value.items()]]
        if dataclasses.is_dataclass(value):
            return [_name(value), [[f.name, describe(getattr(value, f.name))] for f in dataclasses.fields(value)]]
        if t is dt.datetime:
            return [_name(value), value.isoformat(), value.fold, repr(value.tzinfo), '''
    """value.tzname(), str(value.utcoffset())]
        if t in (dt.date, dt.time, dt.timedelta):
            return [_name(value), repr(value), getattr(value, "fold", None)]
        if isinstance(value, (np.ndarray, np.generic)):
            out = [_name(value), value.dtype.str, repr(value.dtype), list(value.shape)]
            if value.dtype.names is not None:
                out.append([[name, describe(np.ascontiguousarray(value[name]))] for name in value.dtype.names])
            else:
                out.append(value.tobytes().hex())
            return out
        if isinstance(value, np.dtype):
            return [_name(value), value.str, repr(value), value.itemsize]
        if isinstance(value, torch.Tensor):
            return [_name(value), str(value.dtype), list(value.shape), value.requires_grad, """
    """str(value.device), tensor_bytes(value).hex()]
        if t in (torch.device, torch.dtype):
            return [_name(value), str(value)]
        if t is torch.Size:
            return [_name(value), list(value)]
        raise TypeError(f"describe: unexpected {t!r}")
    """
)

WRITER = textwrap.dedent(
    """
    import json, sys
    from restartable import Checkpoint, bind_checkpoint_state
    import xproc_types as T

    expected = T.describe(T.populated())
    checkpoint = Checkpoint("xproc", path=sys.argv[1], mode="append")
    with checkpoint as session:
        state = bind_checkpoint_state(T.populated())
        assert not state.checkpoint_state_loaded
        entry = session.write(lead_time=3)
        assert entry is not None
    written = T.describe(state.checkpoint_dataclass)
    assert written == expected, "encoding changed the state"
    print(json.dumps(written))
    """
)

READER = textwrap.dedent(
    """
    import json, sys, warnings
    from restartable import Checkpoint, bind_checkpoint_state
    import xproc_types as T

    checkpoint = Checkpoint("xproc", path=sys.argv[1], mode="append")
    fresh = T.Everything()
    with checkpoint as session:
        state = bind_checkpoint_state(fresh)
        report = {
            "loaded": state.checkpoint_state_loaded,
            "selected": state.checkpoint_selected,
            "lead_time": state.checkpoint_lead_time,
            "same_object": state.checkpoint_dataclass is fresh,
            "modules": sorted(m for m in sys.modules if m.startswith("xproc")),
            "description": T.describe(fresh),
        }
    print(json.dumps(report))
    """
)


def _prepend_pythonpath(monkeypatch: pytest.MonkeyPatch, *directories: Path) -> None:
    """Put ``directories`` first on PYTHONPATH of every subprocess started by ``run_python``."""
    parts = [str(d) for d in directories] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(parts))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")


@pytest.fixture
def shared_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module directory on PYTHONPATH of every subprocess started by ``run_python``."""
    directory = tmp_path / "modules"
    directory.mkdir()
    (directory / f"{TYPES_MODULE}.py").write_text(TYPES_SOURCE, encoding="utf-8")
    _prepend_pythonpath(monkeypatch, directory, TESTS_DIR)  # the shared module imports ``support``
    return directory


def _last_json_line(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- full round trip


def test_every_supported_type_survives_a_fresh_process(shared_module: Path, store: Path) -> None:
    written = _last_json_line(run_python(WRITER, str(store), warm=True).stdout)
    report = _last_json_line(run_python(READER, str(store), warm=True).stdout)

    assert report["loaded"] is True
    assert report["selected"] is True
    assert report["lead_time"] == 3
    assert report["same_object"] is True
    assert report["modules"] == [TYPES_MODULE]

    restored = report["description"]
    assert restored[0] == f"{TYPES_MODULE}.Everything"
    fields_written = dict(written[1])
    fields_restored = dict(restored[1])
    assert list(fields_restored) == list(fields_written)
    assert len(fields_written) == 34
    differing = [name for name, description in fields_written.items() if fields_restored[name] != description]
    assert differing == [], f"fields that differ after restore: {differing}"
    assert restored == written


def test_description_is_discriminating(shared_module: Path) -> None:
    # The comparison above is only as strong as describe(): it must see
    # a flipped bit, a dtype's byte order, a tz name, a fold and -0.0.
    code = textwrap.dedent(
        """
        import dataclasses, datetime as dt, json, numpy as np, torch
        import xproc_types as T
        v = T.populated()
        base = T.describe(v)
        variants = []
        flipped = v.tensors["bfloat16"].clone(); flipped.view(torch.int16)[0, 0] ^= 1
        variants.append(dataclasses.replace(v, tensors=dict(v.tensors, bfloat16=flipped)))
        variants.append(dataclasses.replace(v, arrays=dict(v.arrays, big_endian=v.arrays["big_endian"].astype("<f8"))))
        variants.append(dataclasses.replace(v, when_zone=v.when_zone.replace(fold=0)))
        variants.append(dataclasses.replace(v, neg_zero=0.0))
        variants.append(dataclasses.replace(v, by_int={**v.by_int, 3: b"c"}))
        variants.append(dataclasses.replace(v, tensors=dict(v.tensors, """
        """requires_grad=v.tensors["requires_grad"].detach())))
        variants.append(dataclasses.replace(v, frozen=T.FrozenPart(5, (1, 2.0))))
        variants.append(dataclasses.replace(v, np_scalars=dict(v.np_scalars, int64=np.int32(-1))))
        print(json.dumps([T.describe(x) != base for x in variants]))
        """
    )
    result = _last_json_line(run_python(code, warm=True).stdout)
    assert result == [True] * 8


# --------------------------------------------------------------------------- late bind, schema changes

SMALL_MODULE = "xproc_small"

SMALL_V1 = textwrap.dedent(
    """
    from __future__ import annotations
    import dataclasses
    from typing import Optional

    @dataclasses.dataclass
    class Inner:
        v: int = 0

    @dataclasses.dataclass
    class Counter:
        steps: int = 0
        history: list[float] = dataclasses.field(default_factory=list)
        inner: Inner = dataclasses.field(default_factory=Inner)
        note: Optional[str] = None
    """
)

SMALL_WRITER = textwrap.dedent(
    """
    import sys
    from restartable import Checkpoint, bind_checkpoint_state
    import xproc_small as M

    with Checkpoint("small", path=sys.argv[1]) as session:
        state = bind_checkpoint_state(M.Counter())
        state.steps = 41
        state.history.append(0.5)
        state.inner.v = 9
        state.note = "saved"
        session.write(lead_time=41)
    print("written")
    """
)

SMALL_READER = textwrap.dedent(
    """
    import json, sys, warnings
    from restartable import Checkpoint, bind_checkpoint_state, CheckpointStateSchemaError
    import xproc_small as M

    mode = sys.argv[2]
    checkpoint = Checkpoint("small", path=sys.argv[1])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if mode == "late":
                state = bind_checkpoint_state(M.Counter())  # before the session opens
                before = state.checkpoint_state_loaded
            with checkpoint:
                if mode != "late":
                    state = bind_checkpoint_state(M.Counter())
                    before = None
                print(json.dumps({
                    "outcome": "restored",
                    "before": before,
                    "loaded": state.checkpoint_state_loaded,
                    "steps": state.steps,
                    "history": state.history,
                    "inner": state.inner.v,
                    "note": state.note,
                    "warnings": [w.category.__name__ for w in caught],
                }))
    except CheckpointStateSchemaError as exc:
        print(json.dumps({"outcome": "schema-error", "message": str(exc), "is_value_error": """
    """isinstance(exc, ValueError)}))
    """
)


@pytest.fixture
def small_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "small"
    directory.mkdir()
    path = directory / f"{SMALL_MODULE}.py"
    path.write_text(SMALL_V1, encoding="utf-8")
    _prepend_pythonpath(monkeypatch, directory)
    return path


def test_bound_state_is_restored_in_a_fresh_process(small_module: Path, store: Path) -> None:
    run_python(SMALL_WRITER, str(store), warm=True)
    report = _last_json_line(run_python(SMALL_READER, str(store), "inside", warm=True).stdout)
    assert report == {
        "outcome": "restored",
        "before": None,
        "loaded": True,
        "steps": 41,
        "history": [0.5],
        "inner": 9,
        "note": "saved",
        "warnings": [],
    }


def test_state_bound_before_the_session_is_restored_late_with_a_warning(small_module: Path, store: Path) -> None:
    run_python(SMALL_WRITER, str(store), warm=True)
    report = _last_json_line(run_python(SMALL_READER, str(store), "late", warm=True).stdout)
    assert report["outcome"] == "restored"
    assert report["before"] is False
    assert report["loaded"] is True
    assert (report["steps"], report["history"], report["inner"], report["note"]) == (41, [0.5], 9, "saved")
    assert report["warnings"] == ["CheckpointLateBindWarning"]


@pytest.mark.parametrize(
    "old, new",
    [
        ("    note: Optional[str] = None\n", "    note: Optional[str] = None\n    added: int = 0\n"),
        ("    steps: int = 0\n", "    count: int = 0\n"),
        ("    history: list[float]", "    history: list[int]"),
        ("    v: int = 0\n", "    v: float = 0.0\n"),  # only the nested dataclass changes
        ("    v: int = 0\n", "    v: int = 0\n    w: int = 0\n"),
    ],
    ids=["added_field", "renamed_field", "changed_type", "nested_type_changed", "nested_field_added"],
)
def test_schema_change_between_processes_is_refused(small_module: Path, store: Path, old: str, new: str) -> None:
    run_python(SMALL_WRITER, str(store), warm=True)
    source = small_module.read_text()
    assert old in source
    small_module.write_text(source.replace(old, new))
    report = _last_json_line(run_python(SMALL_READER, str(store), "inside", warm=True).stdout)
    assert report["outcome"] == "schema-error", report
    assert report["is_value_error"] is True
    assert "Counter" in report["message"] or "Inner" in report["message"]


def test_unchanged_schema_with_postponed_annotations_removed_still_restores(small_module: Path, store: Path) -> None:
    # Removing `from __future__ import annotations` between processes is not a schema change.
    run_python(SMALL_WRITER, str(store), warm=True)
    small_module.write_text(small_module.read_text().replace("from __future__ import annotations\n", ""))
    report = _last_json_line(run_python(SMALL_READER, str(store), "inside", warm=True).stdout)
    assert report["outcome"] == "restored"
    assert report["steps"] == 41 and report["inner"] == 9


# --------------------------------------------------------------------------- collisions


@dataclasses.dataclass
class Component:
    value: int = 0


@dataclasses.dataclass
class Other:
    value: int = 0


def _in_fresh_context(func: Any, *args: Any) -> Any:
    # Checkpoint() and bindings set context variables; keep them out of other tests.
    return contextvars.copy_context().run(func, *args)


def test_binding_two_instances_of_one_type_in_a_session_collides(store: Path) -> None:
    def body() -> None:
        with Checkpoint("collide", path=str(store)) as session:
            first = Component(1)
            proxy = bind_checkpoint_state(first)
            assert bind_checkpoint_state(first) is proxy  # the same instance again is fine
            assert bind_checkpoint_state(Other(2)).checkpoint_enabled  # another type is fine
            with pytest.raises(CheckpointStateCollision) as info:
                bind_checkpoint_state(Component(3))
            assert "Component" in str(info.value)
            with pytest.raises(CheckpointStateCollision):
                session.bind(Component(4))
            session.write()
            assert proxy.value == 1

    _in_fresh_context(body)


def test_collision_after_restoring_from_an_existing_row(store: Path) -> None:
    def write() -> None:
        with Checkpoint("collide", path=str(store)) as session:
            bind_checkpoint_state(Component(17))
            session.write()

    def restore() -> None:
        with Checkpoint("collide", path=str(store)):
            first = bind_checkpoint_state(Component())
            assert first.checkpoint_state_loaded and first.value == 17
            with pytest.raises(CheckpointStateCollision):
                bind_checkpoint_state(Component())
            assert first.value == 17

    _in_fresh_context(write)
    _in_fresh_context(restore)
