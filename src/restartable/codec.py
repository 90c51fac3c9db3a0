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
import functools
import hashlib
import math
import os
import re
import reprlib
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import numpy as np

from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointSerializationError,
    CheckpointStateSchemaError,
)

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
# Containers (lists, tuples, dicts, dataclasses) nested in one value, at most.
# Decoding recurses once per level, and a document from a file must not be
# able to exhaust the stack; encoding refuses what decoding would.
MAX_NESTING = 200
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
    except RecursionError:
        raise  # a caller deep in its stack, not an unresolvable hint: the text would hash differently
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


@functools.lru_cache(maxsize=256)
def _array_dtype_problem(dtype: np.dtype) -> str | None:
    """Why arrays of ``dtype`` cannot be stored, or ``None``; computed once per dtype.

    A state of ten thousand arrays has a handful of dtypes: checking each
    array's own would cost more than copying it.
    """
    try:
        dtype_to_json(dtype)
    except ValueError as exc:
        return str(exc)
    descr = repr(np.lib.format.dtype_to_descr(dtype))
    if len(descr) > MAX_DTYPE_DESCR_CHARS:
        # Refused here, at the commit, rather than written and then refused
        # as implausible by the reader.
        return (
            f"its dtype's description is {len(descr)} characters; at most {MAX_DTYPE_DESCR_CHARS} can be stored "
            "(split a structured dtype with this many fields into several arrays)"
        )
    return None


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


# A dtype description comes from the file: its nesting (structured fields of
# structured fields, sub-arrays) and sub-array rank are bounded before numpy,
# whose parser recurses, sees it. numpy itself refuses more than 64 dimensions.
MAX_DTYPE_NESTING = 32
_MAX_SUBARRAY_DIMS = 64


def _shape_from_json(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > _MAX_SUBARRAY_DIMS:
        raise ValueError(f"invalid sub-array shape {reprlib.repr(shape)}")
    # type() rather than isinstance(): True is not a dimension.
    if not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"invalid sub-array shape {reprlib.repr(shape)}")
    return tuple(shape)


def _descr_from_json(descr: Any, depth: int) -> Any:
    if depth > MAX_DTYPE_NESTING:
        raise ValueError(f"dtype description nested more than {MAX_DTYPE_NESTING} levels deep")
    if isinstance(descr, str):
        return descr
    if isinstance(descr, dict):
        # Not produced inside a field by dtype_to_json, but numpy accepts a
        # sub-array dtype there, and it costs nothing to read it back.
        return _dtype_from_json(descr, depth)
    if not isinstance(descr, list):
        raise ValueError(f"invalid dtype description {reprlib.repr(descr)}")
    fields = []
    for item in descr:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise ValueError(f"invalid dtype field {reprlib.repr(item)}")
        name = item[0]
        if isinstance(name, list) and len(name) == 2 and all(isinstance(part, str) for part in name):
            name = tuple(name)  # (title, name)
        elif not isinstance(name, str):
            raise ValueError(f"invalid dtype field name {reprlib.repr(name)}")
        entry: tuple[Any, ...] = (name, _descr_from_json(item[1], depth + 1))
        if len(item) == 3:
            entry += (_shape_from_json(item[2]),)
        fields.append(entry)
    return fields


def _dtype_from_json(descr: Any, depth: int) -> np.dtype:
    if isinstance(descr, dict):
        if set(descr) != {"base", "shape"}:
            raise ValueError(f"invalid sub-array dtype {reprlib.repr(descr)}")
        return np.dtype((_dtype_from_json(descr["base"], depth + 1), _shape_from_json(descr["shape"])))
    return np.lib.format.descr_to_dtype(_descr_from_json(descr, depth))


def dtype_from_json(descr: Any) -> np.dtype:
    """Inverse of :func:`dtype_to_json`.

    Raises ``ValueError`` for any description that is not one of a numpy
    dtype: wrong types, nesting deeper than :data:`MAX_DTYPE_NESTING`, sizes
    numpy refuses. Object dtypes are accepted (a dtype is only a
    description); what would hold Python objects refuses them.
    """
    try:
        return _dtype_from_json(descr, 0)
    except ValueError:
        raise
    except Exception as exc:
        # numpy's parser refuses a string in many ways: TypeError ("data type
        # not understood"), OverflowError, even SyntaxError from the Python
        # literal parser behind "0600". One exception type lets callers tell
        # a bad description from a bug of theirs.
        raise ValueError(f"invalid dtype description {reprlib.repr(descr)}: {exc}") from None


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
        self.depth = 0  # containers (lists, tuples, dicts, dataclasses) around the value being encoded

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
        is_dataclass = dataclasses.is_dataclass(value) and not isinstance(value, type)
        if t is list or t is tuple or t is dict or is_dataclass:
            return self.encode_container(value, path)
        if t is bytes:
            return {TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
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

    def encode_container(self, value: Any, path: str) -> Any:
        # The decoder refuses documents nested deeper than MAX_NESTING, so a
        # deeper value is refused here, at the commit, rather than written
        # and found unreadable on restore. A reference cycle ends here too.
        if self.depth >= MAX_NESTING:
            raise self.fail(path, value, f"it is nested more than {MAX_NESTING} containers deep (a reference cycle?)")
        self.depth += 1
        try:
            # Loops rather than comprehensions, here and in the methods below:
            # on Python 3.11 a comprehension is one more frame per level.
            t = type(value)
            if t is list or t is tuple:
                items = []
                for i, item in enumerate(value):
                    items.append(self.encode(item, f"{path}[{i}]"))
                return items if t is list else {TAG: "tuple", "v": items}
            if t is dict:
                return self.encode_dict(value, path)
            return self.encode_dataclass(value, path)
        finally:
            self.depth -= 1

    def encode_dict(self, value: dict[Any, Any], path: str) -> Any:
        keys = list(value)
        # The JSON-object form reads best, but manifests are written with
        # sorted keys, so it is used only where that keeps the order.
        if all(type(k) is str for k in keys) and keys == sorted(keys):
            fields = {}
            for k, v in value.items():
                fields[k] = self.encode(v, f"{path}{_fmt_key(k)}")
            return {TAG: "dict", "v": fields}
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
        fields = {}
        for f in dataclasses.fields(value):
            fields[f.name] = self.encode(getattr(value, f.name), f"{path}.{f.name}")
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
        problem = _array_dtype_problem(value.dtype)
        if problem is not None:
            raise self.fail(path, value, problem)
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
#
# A document comes from a file that anyone able to write the store may have
# written (a manifest's checksum proves integrity, not authorship). Every way
# it can be malformed ends in CheckpointCorruptError, or CheckpointStateSchemaError
# where it names a dataclass this process does not have, and no name in it
# reaches an attribute lookup that can run code: getattr() on a module calls
# its __getattr__, which for numpy, torch and many packages imports submodules.

# Tags of records whose value holds further records; with lists, these are
# the containers MAX_NESTING counts.
_CONTAINER_TAGS = frozenset({"tuple", "dict", "dataclass"})
_TAGS = _CONTAINER_TAGS | {
    "int",
    "float",
    "bytes",
    "datetime",
    "date",
    "time",
    "timedelta",
    "np.scalar",
    "np.dtype",
    "ndarray",
    "tensor",
    "torch.device",
    "torch.dtype",
    "torch.Size",
}

_MISSING: Any = object()

# Unbound descriptors of the slots that hold a module's and a class's own
# namespace: reading them runs no code of the module or class, where
# ``module.__dict__`` or vars() would use a __dict__ property a subclass may define.
_module_namespace: Callable[[types.ModuleType], dict[str, Any]] = vars(types.ModuleType)["__dict__"].__get__
_class_namespace: Callable[[type], Mapping[str, Any]] = vars(type)["__dict__"].__get__
_class_mro: Callable[[type], tuple[type, ...]] = vars(type)["__mro__"].__get__

# IANA time zone keys ("Europe/Paris", "Etc/GMT+5", "America/Port-au-Prince"):
# no dots, so no "..", and no leading "/", so nothing outside the zone database.
_ZONE_KEY = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
_MAX_ZONE_KEY = 255
_MAX_TYPE_NAME = 1024


def _static_member(owner: Any, name: str) -> Any:
    """``owner.name`` for a module or class, from its own namespace only, running no code.

    No ``__getattr__`` (lazy submodule loaders), no ``__getattribute__``, no
    descriptor: a module's submodule is found only if it was imported.
    ``type(owner)`` and ``issubclass`` are used because ``isinstance`` falls
    back to ``owner.__class__``, which a proxy object may answer by importing.
    """
    kind = type(owner)
    if issubclass(kind, types.ModuleType):
        namespace: Mapping[str, Any] = _module_namespace(owner)
    elif issubclass(kind, type):
        namespace = _class_namespace(owner)
    else:
        return None
    return namespace.get(name)


def _is_dataclass_type(obj: Any) -> bool:
    """``dataclasses.is_dataclass`` for a class, without attribute hooks of its metaclass."""
    if not issubclass(type(obj), type):
        return False
    return any("__dataclass_fields__" in _class_namespace(klass) for klass in _class_mro(obj))


_torch_dtypes: dict[str, Any] | None = None


def torch_dtype_named(torch: Any, name: Any) -> Any:
    """The torch dtype called ``name`` (``"float32"``, ``"bfloat16"``), or ``None``; never imports anything.

    For names read from files: ``getattr(torch, name)`` would run torch's
    lazy module loaders.
    """
    return _torch_dtype_names(torch).get(name) if type(name) is str else None


def _torch_dtype_names(torch: Any) -> dict[str, Any]:
    """Every ``torch.<name>`` that is a dtype (canonical names and aliases), from the module's namespace.

    ``getattr(torch, name)`` with a name from the file would reach torch's
    module ``__getattr__``, which imports ``torch._dynamo``, ``torch.onnx``
    and others on first use. Built once, after torch is imported.
    """
    global _torch_dtypes
    if _torch_dtypes is None:
        # A copy first: an import in another thread may add to the namespace meanwhile.
        namespace = dict(_module_namespace(torch))
        _torch_dtypes = {name: value for name, value in namespace.items() if type(value) is torch.dtype}
    return _torch_dtypes


def _brief(value: Any) -> str:
    """A bounded ``repr`` of part of a document, for messages: a document may be huge or deeply nested.

    Never of a decoded value: the repr of a tensor imports modules.
    """
    return reprlib.repr(value)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The decoder shortens keys in paths: a path is copied into every nested
# path, and a document's keys may be megabytes long.
_KEY_REPR = reprlib.Repr()
_KEY_REPR.maxstring = _KEY_REPR.maxlong = _KEY_REPR.maxother = 80


def _fmt_doc_key(key: Any) -> str:
    return f"[{_KEY_REPR.repr(key)}]"


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
        self.depth = 0  # containers around the record being decoded

    def corrupt(self, path: str, why: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"cannot decode {path}: {why}")

    def need(self, doc: dict[str, Any], key: str, kinds: tuple[type, ...], path: str) -> Any:
        """``doc[key]``, which must be present and of one of ``kinds`` exactly (``True`` is not an int)."""
        value = doc.get(key, _MISSING)
        if value is _MISSING:
            raise self.corrupt(path, f"the {doc[TAG]!r} record lacks {key!r}")
        if type(value) not in kinds:
            expected = " or ".join(kind.__name__ for kind in kinds)
            raise self.corrupt(
                path, f"{key!r} of the {doc[TAG]!r} record has type {type(value).__name__}, not {expected}"
            )
        return value

    def decode(self, doc: Any, path: str, current: Any = None) -> Any:
        if doc is None or isinstance(doc, (bool, int, float, str)):
            return doc
        if isinstance(doc, list):
            self.enter(path)
            try:
                # A loop, not a comprehension: one frame per level on 3.11.
                out = []
                for i, item in enumerate(doc):
                    # Scalars need no path (the common long list of numbers).
                    scalar = item is None or isinstance(item, (bool, int, float, str))
                    out.append(item if scalar else self.decode(item, f"{path}[{i}]"))
                return out
            finally:
                self.depth -= 1
        if not isinstance(doc, dict) or TAG not in doc:
            # The type only, for what JSON cannot hold: the repr of a value a
            # caller passed in (a tensor) may import modules.
            what = _brief(doc) if isinstance(doc, dict) else f"of type {type(doc).__name__}"
            raise self.corrupt(path, f"untagged object {what}")
        tag = doc[TAG]
        if type(tag) is not str or tag not in _TAGS:
            raise self.corrupt(path, f"unknown type tag {_brief(tag)} (written by a newer restartable?)")
        handler = getattr(self, "decode_" + tag.replace(".", "_"))
        container = tag in _CONTAINER_TAGS
        if container:
            self.enter(path)
        try:
            return handler(doc, path, current)
        except (CheckpointError, RecursionError):
            # Raised on purpose, here or by the payload loader (which may
            # also fail for reasons other than damage: an unreachable store);
            # a RecursionError is reported once, by decode(), not as a
            # malformed record.
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, RuntimeError) as exc:
            # What numpy, torch and datetime raise for values they refuse.
            raise self.corrupt(path, f"malformed {tag!r} record ({_clip(str(exc))})") from exc
        finally:
            if container:
                self.depth -= 1

    def enter(self, path: str) -> None:
        if self.depth >= MAX_NESTING:
            raise self.corrupt(path, f"the document is nested more than {MAX_NESTING} containers deep")
        self.depth += 1

    def payload(self, doc: dict[str, Any], path: str) -> np.ndarray:
        index = self.need(doc, "i", (int,), path)
        if index < 0:
            # A negative index would pick a payload from the end of the list.
            raise self.corrupt(path, f"references payload #{index}, a negative index")
        try:
            array = self.load_payload(index)
        except IndexError as exc:
            raise self.corrupt(path, f"references payload #{index}, which the row does not have") from exc
        if not isinstance(array, np.ndarray) or array.dtype.hasobject:
            raise self.corrupt(path, f"payload #{index} is not an array of plain data")
        return array

    def decode_int(self, doc: dict[str, Any], path: str, current: Any) -> int:
        return int(self.need(doc, "v", (str,), path))

    def decode_float(self, doc: dict[str, Any], path: str, current: Any) -> float:
        text = self.need(doc, "v", (str,), path)
        if text not in ("nan", "inf", "-inf"):
            raise ValueError(f"unexpected float text {_brief(text)}")
        return float(text)

    def decode_tuple(self, doc: dict[str, Any], path: str, current: Any) -> tuple[Any, ...]:
        out = []
        for i, item in enumerate(self.need(doc, "v", (list,), path)):
            out.append(self.decode(item, f"{path}[{i}]"))
        return tuple(out)

    def decode_bytes(self, doc: dict[str, Any], path: str, current: Any) -> bytes:
        return base64.b64decode(self.need(doc, "v", (str,), path), validate=True)

    def decode_dict(self, doc: dict[str, Any], path: str, current: Any) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        if "v" in doc:
            sub = current if isinstance(current, dict) else {}
            for k, v in self.need(doc, "v", (dict,), path).items():
                if type(k) is not str:
                    raise ValueError(f"dictionary key {_brief(k)} is not a str")
                out[k] = self.decode(v, f"{path}{_fmt_doc_key(k)}", sub.get(k))
            return out
        for pair in self.need(doc, "items", (list,), path):
            if type(pair) is not list or len(pair) != 2:
                raise ValueError(f"dictionary item {_brief(pair)} is not a [key, value] pair")
            key_doc = pair[0]
            # Checked before decoding: a key is a str or an int (a big one
            # tagged), not a tensor to load first and refuse afterwards.
            if not (type(key_doc) in (str, int) or (type(key_doc) is dict and key_doc.get(TAG) == "int")):
                raise ValueError(f"dictionary key {_brief(key_doc)} is not a str or an int")
            key = self.decode(key_doc, path)
            # No repr of the value here or in any message: the repr of a
            # decoded value (a tensor) may import modules.
            out[key] = self.decode(pair[1], f"{path}{_fmt_doc_key(key)}")
        return out

    def resolve_dataclass(self, name: str, current: Any) -> type | None:
        if dataclasses.is_dataclass(current) and not isinstance(current, type) and type_name(type(current)) == name:
            return type(current)
        if name in self.known_types:
            return self.known_types[name]
        # A module that is already imported can be searched without running
        # any code; a module that is not imported is never imported here.
        # Each prefix of the name may be the module: "pkg.mod.Outer.Inner".
        module_name, _, qualname = name.rpartition(".")
        while module_name:
            module = sys.modules.get(module_name)
            if module is not None:
                obj: Any = module
                for part in qualname.split("."):
                    obj = _static_member(obj, part)
                if _is_dataclass_type(obj) and type_name(obj) == name:
                    return typing.cast(type, obj)
                return None
            module_name, _, head = module_name.rpartition(".")
            qualname = f"{head}.{qualname}"
        return None

    def decode_dataclass(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        name = self.need(doc, "type", (str,), path)
        # Bounded: resolve_dataclass tries every dotted prefix of the name.
        if len(name) > _MAX_TYPE_NAME or not all(name.split(".")):
            raise self.corrupt(path, f"invalid dataclass name {_brief(name)}")
        field_docs = self.need(doc, "v", (dict,), path)
        schema = self.need(doc, "schema", (str, type(None)), path)
        if self.dataclasses_in_place and not (dataclasses.is_dataclass(current) and not isinstance(current, type)):
            out = {}
            for field, value in field_docs.items():
                out[field] = self.decode(value, f"{path}.{field}")
            return out
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
        if schema is not None and schema != expected:
            raise CheckpointStateSchemaError(
                f"{path}: the saved {name} has a different schema than the current class "
                f"(saved {_brief(schema)}, current {expected}); its fields or their types changed"
            )
        return restore_dataclass(cls, field_docs, self, path, current)

    def decode_datetime(self, doc: dict[str, Any], path: str, current: Any) -> _dt.datetime:
        text = self.need(doc, "v", (str,), path)
        value = _dt.datetime.fromisoformat(text)
        if "tzname" in doc:
            tzname = self.need(doc, "tzname", (str,), path)
            offset = value.utcoffset()
            if offset is None:
                raise ValueError(f"datetime {_brief(text)} has a tzname but no UTC offset")
            value = value.replace(tzinfo=_dt.timezone(offset, tzname))
        if "zone" in doc:
            if value.tzinfo is not None:
                raise ValueError(f"datetime {_brief(text)} has both a UTC offset and a zone")
            value = value.replace(tzinfo=self.zone(self.need(doc, "zone", (str,), path), path))
        return value.replace(fold=self.fold(doc, path))

    def zone(self, key: str, path: str) -> _dt.tzinfo:
        # Checked before zoneinfo sees the key: it would open a file under
        # its search path, and only a plain zone name stays inside it.
        if len(key) > _MAX_ZONE_KEY or not _ZONE_KEY.fullmatch(key):
            raise self.corrupt(path, f"{_brief(key)} is not a time zone name")
        import zoneinfo

        # Where the key is on no TZPATH, zoneinfo falls back to the tzdata
        # package through importlib.resources, importing both; that is
        # allowed only where tzdata is installed (it is then the system's
        # zone database). Elsewhere an unknown key imports nothing.
        if not any(os.path.isfile(os.path.join(root, key)) for root in zoneinfo.TZPATH) and not _have_tzdata():
            raise self.corrupt(path, f"unknown time zone {key!r}")
        try:
            return zoneinfo.ZoneInfo(key)
        except (zoneinfo.ZoneInfoNotFoundError, OSError) as exc:  # not found, or found but unreadable
            raise self.corrupt(path, f"cannot load time zone {key!r} ({exc})") from exc

    def fold(self, doc: dict[str, Any], path: str) -> int:
        fold = doc.get("fold", 0)
        if type(fold) is not int or fold not in (0, 1):
            raise self.corrupt(path, f"fold {_brief(fold)} is not 0 or 1")
        return fold

    def decode_date(self, doc: dict[str, Any], path: str, current: Any) -> _dt.date:
        return _dt.date.fromisoformat(self.need(doc, "v", (str,), path))

    def decode_time(self, doc: dict[str, Any], path: str, current: Any) -> _dt.time:
        return _dt.time.fromisoformat(self.need(doc, "v", (str,), path)).replace(fold=self.fold(doc, path))

    def decode_timedelta(self, doc: dict[str, Any], path: str, current: Any) -> _dt.timedelta:
        parts = self.need(doc, "v", (list,), path)
        if len(parts) != 3 or not all(type(n) is int for n in parts):
            raise ValueError(f"timedelta {_brief(parts)} is not [days, seconds, microseconds]")
        days, seconds, micros = parts
        return _dt.timedelta(days=days, seconds=seconds, microseconds=micros)

    def decode_np_scalar(self, doc: dict[str, Any], path: str, current: Any) -> np.generic:
        dtype = dtype_from_json(self.need(doc, "dtype", (str, list, dict), path))
        if dtype.hasobject:
            raise ValueError("object dtype refused")
        raw = bytes.fromhex(self.need(doc, "hex", (str,), path))
        if dtype.itemsize == 0 and dtype.kind in "SU":
            # An empty np.bytes_/np.str_ has a zero-size dtype but tobytes()
            # gives one padding element.
            return typing.cast(np.generic, dtype.type(b"" if dtype.kind == "S" else ""))
        if len(raw) != dtype.itemsize:
            raise ValueError(f"{len(raw)} bytes for a {dtype} scalar of {dtype.itemsize} bytes")
        return typing.cast(np.generic, np.frombuffer(raw, dtype=dtype)[0])

    def decode_np_dtype(self, doc: dict[str, Any], path: str, current: Any) -> np.dtype:
        return dtype_from_json(self.need(doc, "v", (str, list, dict), path))

    def decode_ndarray(self, doc: dict[str, Any], path: str, current: Any) -> np.ndarray:
        return self.payload(doc, path)

    def torch_dtype(self, name: Any, path: str, torch: Any) -> Any:
        dtype = torch_dtype_named(torch, name)
        if dtype is None:
            raise self.corrupt(path, f"unknown torch dtype {_brief(name)}")
        return dtype

    def decode_tensor(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        torch = _import_torch(path)
        dtype = self.torch_dtype(self.need(doc, "dtype", (str,), path), path, torch)
        requires_grad = doc.get("requires_grad", False)
        if type(requires_grad) is not bool:
            raise self.corrupt(path, f"requires_grad {_brief(requires_grad)} is not a bool")
        array = self.payload(doc, path)
        if not array.flags.writeable:
            array = array.copy()
        tensor = torch.from_numpy(array)
        if tensor.dtype != dtype:
            # Only the raw bits of a dtype numpy lacks (see encode_tensor) are
            # reinterpreted; any other mismatch would restore different numbers.
            bits = _BITS_DTYPE_BY_ITEMSIZE.get(dtype.itemsize)
            if bits is None or array.dtype != np.dtype(bits):
                raise self.corrupt(path, f"payload of dtype {array.dtype} does not hold a torch.{doc['dtype']} tensor")
            tensor = tensor.view(dtype)
        if self.device is not None:
            try:
                tensor = tensor.to(self.device)
            except Exception as exc:
                # The bytes were read and verified: a failure now is the
                # device's (unknown, absent, out of memory), never damage, so
                # it must not be reported as CheckpointCorruptError (a user
                # might delete a good row).
                raise CheckpointError(
                    f"cannot place {path} on device {str(self.device)!r}: {_clip(' '.join(str(exc).split()))}. "
                    "The row is not damaged: restore with a device this process can use (device='cpu')"
                ) from exc
        if requires_grad:
            tensor.requires_grad_(True)
        return tensor

    def decode_torch_device(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        return _import_torch(path).device(self.need(doc, "v", (str,), path))

    def decode_torch_dtype(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        torch = _import_torch(path)
        return self.torch_dtype(self.need(doc, "v", (str,), path), path, torch)

    def decode_torch_Size(self, doc: dict[str, Any], path: str, current: Any) -> Any:
        sizes = self.need(doc, "v", (list,), path)
        if not all(type(n) is int and 0 <= n <= _MAX_DIMENSION for n in sizes):
            raise ValueError(f"torch.Size {_brief(sizes)} is not a list of sizes")
        return _import_torch(path).Size(sizes)


# The largest size a dimension can have (a C ``int64``); torch accepts more and then fails to print it.
_MAX_DIMENSION = 2**63 - 1


_tzdata_installed: bool | None = None


def _have_tzdata() -> bool:
    # find_spec of a top-level name searches sys.path without importing.
    global _tzdata_installed
    if _tzdata_installed is None:
        import importlib.util

        _tzdata_installed = "tzdata" in sys.modules or importlib.util.find_spec("tzdata") is not None
    return _tzdata_installed


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
            f"{path}: saved fields {_brief(sorted(field_docs))} do not match the fields of "
            f"{type_name(cls)} {sorted(names)}"
        )
    # Through Any: mypy would check the call against type.__new__ (the
    # metaclass), while at run time it is the dataclass's own __new__.
    target = current if type(current) is cls else typing.cast(Any, cls).__new__(cls)
    values = {}
    for name in names:  # a loop, not a comprehension: one frame less per level on 3.11
        values[name] = decoder.decode(
            field_docs[name], f"{path}.{name}", getattr(current, name, None) if target is current else None
        )
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

    The document may come from anyone who can write the store: every
    malformed document raises :class:`CheckpointCorruptError`, and no name in
    it makes decoding import a module or look up an attribute that can run code.

    Parameters
    ----------
    document:
        The JSON document.
    load_payload:
        Returns the array payload of a given index (``IndexError`` if there
        is none).
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
        A saved dataclass does not match its current definition, or is not
        known here.
    CheckpointCorruptError
        The document is malformed, or nested more than :data:`MAX_NESTING`
        containers deep.
    CheckpointError
        A tensor cannot be placed on ``device`` (an unknown device, one this
        process cannot use, or out of its memory). The document is sound:
        this is not a :class:`CheckpointCorruptError`.
    """
    if nested_dataclasses not in ("resolve", "in_place"):
        raise ValueError(f"nested_dataclasses must be 'resolve' or 'in_place', got {nested_dataclasses!r}")
    decoder = _Decoder(load_payload, device, known_types or {}, dataclasses_in_place=nested_dataclasses == "in_place")
    if into is not None:
        decoder.known_types.update(known_dataclasses(type(into)))
    try:
        return decoder.decode(document, root, into)
    except RecursionError as exc:
        # MAX_NESTING keeps a document well within the default recursion
        # limit; this is for a caller that is itself deep in its stack.
        raise CheckpointCorruptError(f"cannot decode {root}: the document is nested too deeply") from exc


# --------------------------------------------------------------------------- describe

_SCALAR_TAGS = frozenset({"int", "float", "date", "time", "torch.device", "torch.dtype", "bytes"})


def describe(document: Any) -> Any:
    """A readable, JSON-compatible rendering of a document (for ``restartable show``).

    Arrays become ``"<ndarray payload #i>"``; no payload is read. Never
    raises: a malformed record becomes ``"<malformed 'tag' record>"`` and a
    document nested more than :data:`MAX_NESTING` containers deep is cut there.
    """
    try:
        return _describe(document, 0)
    except RecursionError:  # a caller deep in its own stack
        return "<nested too deeply>"


def _describe(doc: Any, depth: int) -> Any:
    if doc is None or isinstance(doc, (bool, int, float, str)):
        return doc
    if depth > MAX_NESTING:
        return "<nested too deeply>"
    if isinstance(doc, list):
        return [_describe(item, depth + 1) for item in doc]
    if not isinstance(doc, dict):
        return _brief(doc)  # not JSON: only a caller's own document can hold it
    tag = doc.get(TAG)
    if type(tag) is not str or tag not in _TAGS:
        # Untagged or from a newer version: shown as it is, within the bounds.
        return {str(key): _describe(value, depth + 1) for key, value in doc.items()}
    try:
        return _describe_record(doc, tag, depth + 1)
    except RecursionError:  # a caller deep in its own stack: the record may well be sound
        return "<nested too deeply>"
    except Exception:
        return f"<malformed {tag!r} record>"


def _key_text(shown: Any) -> str:
    """A described key as a JSON object key."""
    if isinstance(shown, str):
        return shown
    # Bounded: str() of a key that is itself a rendering of keys would escape
    # the quotes of every level again, doubling its length per level.
    return _brief(shown)


def _describe_record(doc: dict[str, Any], tag: str, depth: int) -> Any:
    # Each record is checked as strictly as the decoder would, so that a
    # malformed one is marked rather than shown as something it is not.
    value: Any = doc.get("v")
    if tag == "dict":
        if "v" in doc:
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): _describe(v, depth) for k, v in value.items()}
        items = doc["items"]
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in items):
            raise ValueError
        return {_key_text(_describe(k, depth)): _describe(v, depth) for k, v in items}
    if tag in ("tuple", "torch.Size"):
        if not isinstance(value, list):
            raise ValueError
        return [_describe(item, depth) for item in value]
    if tag == "dataclass":
        if not isinstance(doc["type"], str) or not isinstance(value, dict):
            raise ValueError
        return {"__dataclass__": doc["type"], **{str(k): _describe(v, depth) for k, v in value.items()}}
    if tag in ("ndarray", "tensor"):
        index = doc["i"]
        dtype = doc.get("dtype", "") if tag == "tensor" else ""
        if type(index) is not int or not isinstance(dtype, str):
            raise ValueError
        kind = f"tensor {_brief(dtype)[1:-1]}" if tag == "tensor" else "ndarray"
        return f"<{kind.strip()} payload #{index}>"
    if tag == "np.scalar":
        text = doc["repr"]
        if not isinstance(text, str):
            raise ValueError
        return text
    if tag == "datetime":
        zone = doc.get("zone")
        if not isinstance(value, str) or not isinstance(zone, (str, type(None))):
            raise ValueError
        return value + (f" [{zone}]" if zone is not None else "")
    if tag == "timedelta":
        days, seconds, micros = value
        return str(_dt.timedelta(days=days, seconds=seconds, microseconds=micros))
    if tag == "np.dtype":
        return str(dtype_from_json(value))
    if tag in _SCALAR_TAGS:
        if not isinstance(value, str):
            raise ValueError
        return value
    raise ValueError
