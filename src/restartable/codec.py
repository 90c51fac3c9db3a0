"""Pickle-free encoding of checkpoint values.

A value is encoded to a JSON-compatible *document* plus a list of array
*payloads*. JSON scalars and lists stand for themselves; every other value is
a JSON object with a ``"__t"`` type tag. Arrays and tensors are not inlined:
their document holds the index of a payload, which the store writes as an
``.npy`` file and reads back with ``allow_pickle=False``.

The codec knows nothing about files. Decoding never imports a module, calls a
constructor named in the document or unpickles anything: dataclasses are
rebuilt only from types the caller already has (the bound instance, the
resolved type hints of its fields, or modules already imported).

Example::

    >>> import numpy as np
    >>> from restartable.codec import encode, decode
    >>> enc = encode({"step": 3, "x": np.arange(4)})
    >>> enc.document["__t"], len(enc.payloads)
    ('dict', 1)
    >>> out = decode(enc.document, enc.payloads.__getitem__)
    >>> out["step"], out["x"].tolist()
    (3, [0, 1, 2, 3])
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import numpy as np

from .errors import CheckpointCorruptError, CheckpointSerializationError, CheckpointStateSchemaError

__all__ = [
    "Encoded",
    "decode",
    "dtype_from_json",
    "dtype_to_json",
    "encode",
    "schema_hash",
    "type_name",
]

TAG = "__t"
# Integers outside this range are stored as strings: JSON readers in other
# languages silently lose precision beyond 2**53.
_JSON_SAFE_INT = 2**53

# torch dtypes numpy cannot represent are stored as raw bits of an integer
# dtype of the same width and viewed back on restore.
_BITS_DTYPE_BY_ITEMSIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64", 16: None}


@dataclasses.dataclass
class Encoded:
    """Result of :func:`encode`: a JSON document and its array payloads.

    ``payloads[i]`` is a host numpy array referenced from the document as
    ``{"__t": "ndarray" | "tensor", "i": i}``.
    """

    document: Any
    payloads: list[np.ndarray]


def type_name(cls: type) -> str:
    """Fully qualified name of a class: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------- schema


def _canonical_type(hint: Any) -> str:
    """Stable text for a resolved type hint.

    ``Optional[int]``, ``Union[int, None]`` and ``int | None`` all give the
    same text, and so do ``List[int]`` and ``list[int]``.
    """
    if hint is type(None) or hint is None:
        return "None"
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        members = sorted(_canonical_type(arg) for arg in typing.get_args(hint))
        return "Union[" + ", ".join(members) + "]"
    if origin is typing.Annotated:
        return _canonical_type(typing.get_args(hint)[0])
    if origin is not None:
        args = typing.get_args(hint)
        head = _canonical_type(origin)
        if not args:
            return head
        return head + "[" + ", ".join(_canonical_type(a) for a in args) + "]"
    if hint is Ellipsis:
        return "..."
    if isinstance(hint, type):
        return type_name(hint)
    if isinstance(hint, typing.TypeVar):
        return f"~{hint.__name__}"
    if isinstance(hint, (str, typing.ForwardRef)):
        text = hint if isinstance(hint, str) else hint.__forward_arg__
        return f"'{text}'"
    if isinstance(hint, list):  # Callable[[args], ret]
        return "[" + ", ".join(_canonical_type(a) for a in hint) + "]"
    # typing.Any and other special forms
    return repr(hint).replace("typing.", "")


def _resolved_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=False)
    except Exception:  # unresolvable forward references
        # A hint that cannot be resolved (a name imported only under
        # TYPE_CHECKING) keeps its text; the hash is then stable as long as
        # the text is.
        return {f.name: f.type for f in dataclasses.fields(cls)}


def schema_hash(cls: type) -> str:
    """Hash of a dataclass schema: field names and resolved type hints.

    Hints are resolved with :func:`typing.get_type_hints`, so the hash is the
    same with and without ``from __future__ import annotations``.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"schema_hash needs a dataclass type, got {cls!r}")
    hints = _resolved_hints(cls)
    parts = [f"{f.name}:{_canonical_type(hints.get(f.name, f.type))}" for f in dataclasses.fields(cls)]
    text = type_name(cls) + "(" + ";".join(parts) + ")"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _dataclasses_in_hint(hint: Any, found: dict[str, type]) -> None:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        name = type_name(hint)
        if name not in found:
            found[name] = hint
            for sub in _resolved_hints(hint).values():
                _dataclasses_in_hint(sub, found)
        return
    for arg in typing.get_args(hint):
        _dataclasses_in_hint(arg, found)


def known_dataclasses(cls: type) -> dict[str, type]:
    """Every dataclass type reachable from ``cls`` through its type hints."""
    found: dict[str, type] = {}
    _dataclasses_in_hint(cls, found)
    return found


# --------------------------------------------------------------------------- dtypes


def _as_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_as_lists(item) for item in value]
    return value


def dtype_to_json(dtype: np.dtype) -> Any:
    """JSON form of a numpy dtype, as the ``.npy`` header describes it.

    A sub-array dtype such as ``np.dtype(("<i4", (2, 3)))`` becomes
    ``{"base": ..., "shape": [2, 3]}``. Raises ``ValueError`` for a dtype the
    description cannot express exactly (overlapping fields).
    """
    dtype = np.dtype(dtype)
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return {"base": dtype_to_json(base), "shape": list(shape)}
    descr = _as_lists(np.lib.format.dtype_to_descr(dtype))
    if dtype_from_json(descr) != dtype:
        raise ValueError(f"dtype {dtype} has no exact description (overlapping or unusual fields)")
    return descr


def _descr_from_json(descr: Any) -> Any:
    if isinstance(descr, str):
        return descr
    if not isinstance(descr, list):
        raise ValueError(f"invalid dtype description {descr!r}")
    fields = []
    for item in descr:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise ValueError(f"invalid dtype field {item!r}")
        name = tuple(item[0]) if isinstance(item[0], list) else item[0]
        entry: tuple[Any, ...] = (name, _descr_from_json(item[1]))
        if len(item) == 3:
            entry += (tuple(item[2]),)
        fields.append(entry)
    return fields


def dtype_from_json(descr: Any) -> np.dtype:
    """Inverse of :func:`dtype_to_json`."""
    if isinstance(descr, dict):
        return np.dtype((dtype_from_json(descr["base"]), tuple(int(n) for n in descr["shape"])))
    return np.lib.format.descr_to_dtype(_descr_from_json(descr))


# --------------------------------------------------------------------------- encode


def _torch() -> Any:
    # Only a value created by torch can be a tensor, so torch need not be
    # imported unless the caller already did.
    return sys.modules.get("torch")


def _fmt_key(key: Any) -> str:
    return f"[{key!r}]"


class ArrayCopier(Protocol):
    """Where a snapshot's copies go (see ``copy`` of :func:`encode`).

    ``copy(array)`` returns a private copy of a host array. The optional
    ``copy_from_device(tensor)`` starts copying a CUDA tensor to a host
    tensor and may return before the copy is done; the optional ``finish()``
    is called once, at the end of the encoding, and waits for those copies.
    """

    def copy(self, array: np.ndarray) -> np.ndarray: ...


class _CopyWith:
    def __init__(self, copy: Callable[[np.ndarray], np.ndarray]) -> None:
        self.copy = copy


class _Encoder:
    def __init__(self, copy: bool | Callable[[np.ndarray], np.ndarray] | ArrayCopier, int_keys: bool = True) -> None:
        self.int_keys = int_keys
        copier: Any
        if copy is True:
            copier = _CopyWith(_private_copy)
        elif not copy:
            copier = None
        elif callable(copy):
            copier = _CopyWith(copy)
        else:
            copier = copy
        self.copier = copier
        self.copy_array: Callable[[np.ndarray], np.ndarray] | None = copier.copy if copier is not None else None
        self.copy_from_device: Callable[[Any], Any] | None = getattr(copier, "copy_from_device", None)
        self.payloads: list[np.ndarray] = []

    def fail(self, path: str, value: Any, why: str = "") -> CheckpointSerializationError:
        kind = type_name(type(value))
        detail = f": {why}" if why else ""
        return CheckpointSerializationError(
            f"cannot checkpoint {path} of type {kind}{detail}. Supported values are None, bool, int, "
            "float, str, bytes, list, tuple, dict, dataclasses, datetime/date/time/timedelta, numpy "
            "scalars, dtypes and non-object arrays, torch tensors, devices and dtypes.",
            path=path,
        )

    def add_payload(self, array: np.ndarray) -> int:
        if self.copy_array is not None:
            array = self.copy_array(array)
        self.payloads.append(array)
        return len(self.payloads) - 1

    def encode(self, value: Any, path: str) -> Any:
        # Exact type checks: a subclass (an IntEnum, a namedtuple, a numpy
        # matrix) would come back as its base and silently change meaning.
        t = type(value)
        if value is None or t is bool or t is str:
            return value
        if t is int:
            if -_JSON_SAFE_INT <= value <= _JSON_SAFE_INT:
                return value
            return {TAG: "int", "v": str(value)}
        if t is float:
            if math.isfinite(value):
                return value
            return {TAG: "float", "v": repr(value)}
        if t is list:
            return [self.encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if t is tuple:
            return {TAG: "tuple", "v": [self.encode(item, f"{path}[{i}]") for i, item in enumerate(value)]}
        if t is dict:
            return self.encode_dict(value, path)
        if t is bytes:
            return {TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self.encode_dataclass(value, path)
        if t is _dt.datetime:
            return self.encode_datetime(value, path)
        if t is _dt.date:
            return {TAG: "date", "v": value.isoformat()}
        if t is _dt.time:
            if value.tzinfo is not None:
                raise self.fail(path, value, "times with a time zone are not supported")
            return {TAG: "time", "v": value.isoformat(), "fold": value.fold}
        if t is _dt.timedelta:
            return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
        if isinstance(value, np.generic):
            return self.encode_numpy_scalar(value, path)
        if isinstance(value, np.dtype):
            return {TAG: "np.dtype", "v": self.dtype_json(value, path)}
        if isinstance(value, np.ndarray):
            return self.encode_ndarray(value, path)
        torch = _torch()
        if torch is not None:
            if isinstance(value, torch.Tensor):
                return self.encode_tensor(value, path, torch)
            if t is torch.device:
                return {TAG: "torch.device", "v": str(value)}
            if t is torch.dtype:
                return {TAG: "torch.dtype", "v": str(value).removeprefix("torch.")}
            if t is torch.Size:
                return {TAG: "torch.Size", "v": list(value)}
        raise self.fail(path, value)

    def encode_dict(self, value: dict[Any, Any], path: str) -> Any:
        keys = list(value)
        # The JSON-object form reads best, but manifests are written with
        # sorted keys, so it is used only where that keeps the order.
        if all(type(k) is str for k in keys) and keys == sorted(keys):
            return {TAG: "dict", "v": {k: self.encode(v, f"{path}{_fmt_key(k)}") for k, v in value.items()}}
        items = []
        allowed = (str, int) if self.int_keys else (str,)
        for k, v in value.items():
            if type(k) not in allowed:
                raise self.fail(
                    f"{path}{_fmt_key(k)}", k, f"dictionary keys must be {' or '.join(t.__name__ for t in allowed)}"
                )
            items.append([self.encode(k, path), self.encode(v, f"{path}{_fmt_key(k)}")])
        return {TAG: "dict", "items": items}

    def encode_dataclass(self, value: Any, path: str) -> Any:
        cls = type(value)
        fields = {f.name: self.encode(getattr(value, f.name), f"{path}.{f.name}") for f in dataclasses.fields(value)}
        return {TAG: "dataclass", "type": type_name(cls), "schema": schema_hash(cls), "v": fields}

    def encode_datetime(self, value: _dt.datetime, path: str) -> Any:
        doc: dict[str, Any] = {TAG: "datetime", "fold": value.fold}
        tz = value.tzinfo
        if tz is None or isinstance(tz, _dt.timezone):
            doc["v"] = value.isoformat()
            if tz is not None and tz != _dt.timezone.utc:
                name = tz.tzname(None)
                if name != _dt.timezone(tz.utcoffset(None)).tzname(None):
                    doc["tzname"] = name
            return doc
        key = getattr(tz, "key", None)  # zoneinfo.ZoneInfo
        if isinstance(key, str) and type(tz).__module__ == "zoneinfo":
            doc["v"] = value.replace(tzinfo=None).isoformat()
            doc["zone"] = key
            return doc
        raise self.fail(path, value, f"time zone {tz!r} is neither a fixed offset nor a zoneinfo zone")

    def dtype_json(self, dtype: np.dtype, path: str) -> Any:
        try:
            return dtype_to_json(dtype)
        except ValueError as exc:
            raise self.fail(path, dtype, str(exc)) from None

    def encode_numpy_scalar(self, value: np.generic, path: str) -> Any:
        if value.dtype.hasobject:
            raise self.fail(path, value, "object scalars cannot be stored without pickle")
        # Raw bytes keep every dtype exact (float16, longdouble, datetime64
        # with NaT, structured voids); "repr" is for people reading the file.
        return {
            TAG: "np.scalar",
            "dtype": self.dtype_json(value.dtype, path),
            "hex": value.tobytes().hex(),
            "repr": str(value),
        }

    def encode_ndarray(self, value: np.ndarray, path: str) -> Any:
        if type(value) not in (np.ndarray, np.memmap):
            raise self.fail(path, value, "numpy array subclasses would lose their meaning")
        if value.dtype.hasobject:
            raise self.fail(path, value, "arrays with object dtype cannot be stored without pickle")
        self.dtype_json(value.dtype, path)
        descr = repr(np.lib.format.dtype_to_descr(value.dtype))
        if len(descr) > MAX_DTYPE_DESCR_CHARS:
            # Refused here, at the commit, rather than written and then
            # refused as implausible by the reader.
            raise self.fail(
                path,
                value,
                f"its dtype's description is {len(descr)} characters; at most {MAX_DTYPE_DESCR_CHARS} can be stored "
                "(split a structured dtype with this many fields into several arrays)",
            )
        return {TAG: "ndarray", "i": self.add_payload(value)}

    def encode_tensor(self, value: Any, path: str, torch: Any) -> Any:
        if value.layout != torch.strided:
            raise self.fail(path, value, f"only dense (strided) tensors are supported, not {value.layout}")
        if value.is_quantized or value.device.type == "meta":
            raise self.fail(path, value, "quantized and meta tensors are not supported")
        tensor = value.detach().resolve_conj().resolve_neg()
        if tensor.device.type == "cuda" and self.copy_from_device is not None:
            tensor = self.copy_from_device(tensor)  # a host tensor, filled by the time encode() returns
            copy_needed = False
        elif tensor.device.type != "cpu":
            tensor = tensor.cpu()  # already a private copy
            copy_needed = False
        else:
            copy_needed = self.copy_array is not None
        doc: dict[str, Any] = {TAG: "tensor", "dtype": str(tensor.dtype).removeprefix("torch.")}
        try:
            array = tensor.numpy()
        except TypeError:
            bits = _BITS_DTYPE_BY_ITEMSIZE.get(tensor.element_size())
            if bits is None:
                raise self.fail(path, value, f"dtype {tensor.dtype} has no numpy equivalent") from None
            array = tensor.contiguous().view(getattr(torch, bits)).numpy()
        if value.requires_grad:
            doc["requires_grad"] = True
        if copy_needed:
            array = self.copy_array(array)  # type: ignore[misc]
        self.payloads.append(array)
        doc["i"] = len(self.payloads) - 1
        return doc


# The reader's bound on an ``.npy`` header is 1 MiB (restartable.store.files):
# the description of a dtype must leave room for the shape and padding.
MAX_DTYPE_DESCR_CHARS = 1 << 19


def _private_copy(array: np.ndarray) -> np.ndarray:
    return np.array(array, copy=True, order="K")


def encode(
    value: Any,
    root: str = "value",
    *,
    copy: bool | Callable[[np.ndarray], np.ndarray] | ArrayCopier = False,
    int_keys: bool = True,
) -> Encoded:
    """Encode ``value`` without pickle.

    Parameters
    ----------
    value:
        The value to encode.
    root:
        Name of the value in error messages, e.g. ``"state"`` gives paths
        such as ``state.history[3].rng``.
    copy:
        Copy arrays and CPU tensors so that the caller may mutate them right
        after this returns (the *snapshot* half of a commit). Without it,
        payloads may share memory with the caller's values. A callable is
        used to make each copy, and an :class:`ArrayCopier` (a pool of reused,
        page-aligned and pinned buffers) also copies CUDA tensors to the host
        asynchronously, waiting once at the end.
    int_keys:
        Accept dictionaries with ``int`` keys (tagged in the document).
        ``False`` refuses them, as earth2studio does.

    Raises
    ------
    CheckpointSerializationError
        If any nested value has an unsupported type; the message and the
        exception's ``path`` name it.
    """
    encoder = _Encoder(copy, int_keys)
    try:
        document = encoder.encode(value, root)
    finally:
        # Device copies still in flight must land before anyone reads the
        # payloads or reuses their buffers, whether or not encoding failed.
        finish = getattr(encoder.copier, "finish", None)
        if finish is not None:
            finish()
    return Encoded(document, encoder.payloads)


# --------------------------------------------------------------------------- decode


class _Decoder:
    def __init__(
        self,
        load_payload: Callable[[int], np.ndarray],
        device: Any,
        known_types: Mapping[str, type],
        dataclasses_in_place: bool = False,
    ) -> None:
        self.dataclasses_in_place = dataclasses_in_place
        self.load_payload = load_payload
        self.device = device
        self.known_types = dict(known_types)

    def corrupt(self, path: str, why: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"cannot decode {path}: {why}")

    def decode(self, doc: Any, path: str, current: Any = None) -> Any:
        if doc is None or isinstance(doc, (bool, int, float, str)):
            return doc
        if isinstance(doc, list):
            return [self.decode(item, f"{path}[{i}]") for i, item in enumerate(doc)]
        if not isinstance(doc, dict) or TAG not in doc:
            raise self.corrupt(path, f"untagged object {str(doc)[:80]!r}")
        tag = doc[TAG]
        handler = getattr(self, "decode_" + str(tag).replace(".", "_"), None)
        if handler is None:
            raise self.corrupt(path, f"unknown type tag {tag!r} (written by a newer restartable?)")
        try:
            return handler(doc, path, current)
        except (CheckpointCorruptError, CheckpointStateSchemaError, CheckpointSerializationError):
            raise
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError) as exc:
            raise self.corrupt(path, f"malformed {tag!r} record ({exc})") from exc

    def decode_int(self, doc: dict[str, Any], path: str, current: Any) -> int:
        return int(doc["v"])

    def decode_float(self, doc: dict[str, Any], path: str, current: Any) -> float:
        if doc["v"] not in ("nan", "inf", "-inf"):
            raise ValueError(f"unexpected float text {doc['v']!r}")
        return float(doc["v"])

    def decode_tuple(self, doc: dict[str, Any], path: str, current: Any) -> tuple[Any, ...]:
        return tuple(self.decode(item, f"{path}[{i}]") for i, item in enumerate(doc["v"]))

    def decode_bytes(self, doc: dict[str, Any], path: str, current: Any) -> bytes:
        return base64.b64decode(doc["v"], validate=True)

    def decode_dict(self, doc: dict[str, Any], path: str, current: Any) -> dict[Any, Any]:
        if "v" in doc:
            sub = current if isinstance(current, dict) else {}
            return {k: self.decode(v, f"{path}{_fmt_key(k)}", sub.get(k)) for k, v in doc["v"].items()}
        out: dict[Any, Any] = {}
        for key_doc, value_doc in doc["items"]:
            key = self.decode(key_doc, path)
            if type(key) not in (str, int):
                raise ValueError(f"dictionary key {key!r} is not str or int")
            out[key] = self.decode(value_doc, f"{path}{_fmt_key(key)}")
        return out

    def resolve_dataclass(self, name: str, current: Any) -> type | None:
        if dataclasses.is_dataclass(current) and not isinstance(current, type) and type_name(type(current)) == name:
            return type(current)
        if name in self.known_types:
            return self.known_types[name]
        # A module that is already imported can be searched without running
        # any code; a module that is not imported is never imported here.
        module_name, _, qualname = name.rpartition(".")
        while module_name:
            module = sys.modules.get(module_name)
            if module is not None:
                obj: Any = module
                for part in qualname.split("."):
                    obj = getattr(obj, part, None)
                if isinstance(obj, type) and dataclasses.is_dataclass(obj) and type_name(obj) == name:
                    return obj
                return None
            module_name, _, head = module_name.rpartition(".")
            qualname = f"{head}.{qualname}"
        return None

    def decode_dataclass(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        name = doc["type"]
        if self.dataclasses_in_place and not (dataclasses.is_dataclass(current) and not isinstance(current, type)):
            return {field: self.decode(value, f"{path}.{field}") for field, value in doc["v"].items()}
        cls = self.resolve_dataclass(name, current)
        if cls is None:
            raise CheckpointStateSchemaError(
                f"{path} holds a saved {name}, but no such dataclass is known here: declare it in the "
                "type hints of the bound state or import its module before restoring"
            )
        self.known_types.update(known_dataclasses(cls))
        expected = schema_hash(cls)
        # None: a row migrated from earth2studio, whose schema hashes are not
        # comparable; restore_dataclass still checks the field names.
        if doc["schema"] is not None and doc["schema"] != expected:
            raise CheckpointStateSchemaError(
                f"{path}: the saved {name} has a different schema than the current class "
                f"(saved {doc['schema']}, current {expected}); its fields or their types changed"
            )
        return restore_dataclass(cls, doc["v"], self, path, current)

    def decode_datetime(self, doc: dict[str, Any], path: str, current: Any) -> _dt.datetime:
        value = _dt.datetime.fromisoformat(doc["v"])
        if "tzname" in doc:
            offset = value.utcoffset()
            if offset is None:
                raise ValueError(f"datetime {doc['v']!r} has a tzname but no UTC offset")
            value = value.replace(tzinfo=_dt.timezone(offset, str(doc["tzname"])))
        if "zone" in doc:
            import zoneinfo

            value = value.replace(tzinfo=zoneinfo.ZoneInfo(doc["zone"]))
        return value.replace(fold=int(doc.get("fold", 0)))

    def decode_date(self, doc: dict[str, Any], path: str, current: Any) -> _dt.date:
        return _dt.date.fromisoformat(doc["v"])

    def decode_time(self, doc: dict[str, Any], path: str, current: Any) -> _dt.time:
        return _dt.time.fromisoformat(doc["v"]).replace(fold=int(doc.get("fold", 0)))

    def decode_timedelta(self, doc: dict[str, Any], path: str, current: Any) -> _dt.timedelta:
        days, seconds, micros = doc["v"]
        return _dt.timedelta(days=days, seconds=seconds, microseconds=micros)

    def decode_np_scalar(self, doc: dict[str, Any], path: str, current: Any) -> np.generic:
        dtype = dtype_from_json(doc["dtype"])
        if dtype.hasobject:
            raise ValueError("object dtype refused")
        raw = bytes.fromhex(doc["hex"])
        if dtype.itemsize == 0 and dtype.kind in "SU":
            # An empty np.bytes_/np.str_ has a zero-size dtype but tobytes()
            # gives one padding element.
            return typing.cast(np.generic, dtype.type(b"" if dtype.kind == "S" else ""))
        if len(raw) != dtype.itemsize:
            raise ValueError(f"{len(raw)} bytes for a {dtype} scalar of {dtype.itemsize} bytes")
        return typing.cast(np.generic, np.frombuffer(raw, dtype=dtype)[0])

    def decode_np_dtype(self, doc: dict[str, Any], path: str, current: Any) -> np.dtype:
        return dtype_from_json(doc["v"])

    def decode_ndarray(self, doc: dict[str, Any], path: str, current: Any) -> np.ndarray:
        return self.load_payload(int(doc["i"]))

    def decode_tensor(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        torch = _import_torch(path)
        array = self.load_payload(int(doc["i"]))
        dtype = getattr(torch, doc["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown torch dtype {doc['dtype']!r}")
        if not array.flags.writeable:
            array = array.copy()
        tensor = torch.from_numpy(array)
        if tensor.dtype != dtype:
            tensor = tensor.view(dtype)
        if self.device is not None:
            tensor = tensor.to(self.device)
        if doc.get("requires_grad"):
            tensor.requires_grad_(True)
        return tensor

    def decode_torch_device(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        return _import_torch(path).device(doc["v"])

    def decode_torch_dtype(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        torch = _import_torch(path)
        dtype = getattr(torch, doc["v"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown torch dtype {doc['v']!r}")
        return dtype

    def decode_torch_Size(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        return _import_torch(path).Size(int(n) for n in doc["v"])


def _import_torch(path: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise CheckpointSerializationError(
            f"{path} holds a torch value but torch is not installed (pip install 'restartable[torch]')",
            path=path,
        ) from exc
    return torch


def restore_dataclass(
    cls: type, field_docs: Mapping[str, Any], decoder: _Decoder, path: str, current: Any = None
) -> Any:
    """Fill a dataclass instance from its saved fields, without calling ``__init__``.

    When ``current`` is an instance of ``cls`` it is updated in place, so that
    references the caller already holds see the restored values.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    if set(names) != set(field_docs):
        raise CheckpointStateSchemaError(
            f"{path}: saved fields {sorted(field_docs)} do not match the fields of {type_name(cls)} {sorted(names)}"
        )
    # Through Any: mypy would check the call against type.__new__ (the
    # metaclass), while at run time it is the dataclass's own __new__.
    target = current if type(current) is cls else typing.cast(Any, cls).__new__(cls)
    values = {
        name: decoder.decode(
            field_docs[name], f"{path}.{name}", getattr(current, name, None) if target is current else None
        )
        for name in names
    }
    for name, value in values.items():
        # object.__setattr__ also works for frozen and slotted dataclasses.
        object.__setattr__(target, name, value)
    return target


def decode(
    document: Any,
    load_payload: Callable[[int], np.ndarray],
    *,
    root: str = "value",
    device: Any = None,
    known_types: Mapping[str, type] | None = None,
    into: Any = None,
    nested_dataclasses: Literal["resolve", "in_place"] = "resolve",
) -> Any:
    """Decode a document made by :func:`encode`.

    Parameters
    ----------
    document:
        The JSON document.
    load_payload:
        Returns the array payload of a given index.
    root:
        Name of the value in error messages.
    device:
        Device on which tensors are restored (``None`` leaves them on the CPU).
    known_types:
        Dataclass types the document may name, by qualified name.
    into:
        A dataclass instance to restore in place when the document is a
        dataclass of the same type.
    nested_dataclasses:
        ``"resolve"`` restores every saved dataclass as its class (found in
        ``known_types``, the type hints of ``into``, or a module already
        imported). ``"in_place"`` restores one only into a dataclass the
        current value already holds, and gives a ``dict`` of its fields
        elsewhere (an untyped field, a list item), as earth2studio does.

    Raises
    ------
    CheckpointStateSchemaError
        A saved dataclass does not match its current definition.
    CheckpointCorruptError
        The document is malformed.
    """
    if nested_dataclasses not in ("resolve", "in_place"):
        raise ValueError(f"nested_dataclasses must be 'resolve' or 'in_place', got {nested_dataclasses!r}")
    decoder = _Decoder(load_payload, device, known_types or {}, dataclasses_in_place=nested_dataclasses == "in_place")
    if into is not None:
        decoder.known_types.update(known_dataclasses(type(into)))
    return decoder.decode(document, root, into)


def describe(document: Any) -> Any:
    """A readable, JSON-compatible rendering of a document (for ``restartable show``).

    Arrays become ``"<ndarray #i>"``; no payload is read.
    """
    if isinstance(document, list):
        return [describe(item) for item in document]
    if not isinstance(document, dict):
        return document
    tag = document.get(TAG)
    if tag == "dict":
        if "v" in document:
            return {k: describe(v) for k, v in document["v"].items()}
        return {str(describe(k)): describe(v) for k, v in document["items"]}
    if tag in ("tuple", "torch.Size"):
        return [describe(item) for item in document["v"]]
    if tag == "dataclass":
        return {"__dataclass__": document["type"], **{k: describe(v) for k, v in document["v"].items()}}
    if tag in ("ndarray", "tensor"):
        kind = "tensor " + document.get("dtype", "") if tag == "tensor" else "ndarray"
        return f"<{kind.strip()} payload #{document['i']}>"
    if tag == "np.scalar":
        return document.get("repr")
    if tag in ("int", "float", "date", "time", "torch.device", "torch.dtype", "bytes"):
        return document.get("v")
    if tag == "datetime":
        return document["v"] + (f" [{document['zone']}]" if "zone" in document else "")
    if tag == "timedelta":
        days, seconds, micros = document["v"]
        return str(_dt.timedelta(days=days, seconds=seconds, microseconds=micros))
    if tag == "np.dtype":
        return str(dtype_from_json(document["v"]))
    return document
