"""Reference IO backends: in memory and Zarr v3. Both can be resumed into."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .._extras import require

if TYPE_CHECKING:
    import zarr


def _names(array_name: str | Sequence[str]) -> list[str]:
    return [array_name] if isinstance(array_name, str) else list(array_name)


def _tensors(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _host(x: Any) -> np.ndarray:
    to_numpy = getattr(x, "numpy", None)
    if to_numpy is not None and not isinstance(x, np.ndarray):
        return cast("np.ndarray", x.detach().cpu().numpy())
    return np.asarray(x)


def _positions(
    full: OrderedDict[str, np.ndarray], coords: OrderedDict[str, np.ndarray], name: str
) -> tuple[np.ndarray, ...]:
    """Index of each written coordinate value within the array's full coordinates."""
    if list(coords) != list(full):
        raise ValueError(f"array {name!r} has dims {list(full)}, the write has {list(coords)}")
    index = []
    for dim, values in coords.items():
        have = np.asarray(full[dim])
        where = [np.nonzero(have == v)[0] for v in np.asarray(values)]
        missing = [v for v, w in zip(np.asarray(values), where, strict=True) if w.size == 0]
        if missing:
            raise ValueError(f"array {name!r}: {dim}={missing[0]!r} is not among its coordinates")
        index.append(np.array([int(w[0]) for w in where]))
    return tuple(index)


def _same_coords(a: OrderedDict[str, np.ndarray], b: OrderedDict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


class MemoryIO:
    """Arrays in memory, filled with NaN until written.

    ``add_array`` with the coordinates an array already has keeps its data,
    so a resumed workflow in the same process does not clobber what was
    written. ``io[name]`` is the numpy array, ``io.coords[name]`` its coordinates.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.coords: dict[str, OrderedDict[str, np.ndarray]] = {}

    def add_array(
        self,
        coords: OrderedDict[str, np.ndarray],
        array_name: str | Sequence[str],
        data: Any = None,
        dtype: Any = np.float32,
    ) -> None:
        coords = OrderedDict((k, np.asarray(v)) for k, v in coords.items())
        shape = tuple(len(v) for v in coords.values())
        for index, name in enumerate(_names(array_name)):
            if name in self.arrays:
                if not _same_coords(self.coords[name], coords):
                    raise ValueError(f"array {name!r} exists with other coordinates")
                continue
            values = np.full(shape, np.nan, dtype=dtype)
            if data is not None:
                values[...] = _host(_tensors(data)[index])
            self.arrays[name], self.coords[name] = values, coords

    def write(self, x: Any, coords: OrderedDict[str, np.ndarray], array_name: str | Sequence[str]) -> None:
        for tensor, name in zip(_tensors(x), _names(array_name), strict=False):
            index = _positions(self.coords[name], coords, name)
            self.arrays[name][np.ix_(*index)] = _host(tensor)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays


_TIME_KINDS = {"M": "datetime64", "m": "timedelta64"}


class ZarrIO:
    """Arrays in a Zarr v3 store (the ``zarr`` package), one array per variable.

    Coordinates are stored as arrays of the same name (datetimes and
    timedeltas as int64 nanoseconds with their dtype in the attributes), and
    each data array lists its dims in ``attrs["dims"]``. Opening an existing
    store and calling ``add_array`` with the same coordinates keeps the data:
    a resumed forecast writes only the lead times it has not written.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> from collections import OrderedDict
    >>> io = ZarrIO(tempfile.mkdtemp() + "/out.zarr")
    >>> io.add_array(OrderedDict(lead_time=np.arange(3)), "t2m")
    >>> io.write(np.ones(1, np.float32), OrderedDict(lead_time=np.array([1])), "t2m")
    >>> io["t2m"][:].tolist()
    [nan, 1.0, nan]
    """

    def __init__(self, path: str | Path, chunks: dict[str, int] | None = None) -> None:
        require("zarr", extra="workflows", feature="ZarrIO")
        import zarr

        self.path = Path(path)
        self.chunks = dict(chunks or {})
        self.root = zarr.open_group(str(self.path), mode="a", zarr_format=3)

    def _array(self, name: str) -> zarr.Array[Any]:
        # Every member this class reads is an array it created (a coordinate
        # or a variable), never a group.
        return cast("zarr.Array[Any]", self.root[name])

    def _dims(self, name: str) -> list[str]:
        return cast("list[str]", self._array(name).attrs["dims"])

    def _coord_values(self, name: str) -> np.ndarray:
        array = self._array(name)
        values = cast("np.ndarray", array[...])
        kind = cast("str | None", array.attrs.get("numpy_dtype"))
        return values.view(kind) if kind else values

    def _write_coord(self, name: str, values: np.ndarray) -> None:
        values = np.asarray(values)
        attrs = {}
        if values.dtype.kind in _TIME_KINDS:
            attrs["numpy_dtype"] = str(values.astype(f"{_TIME_KINDS[values.dtype.kind]}[ns]").dtype)
            values = values.astype(attrs["numpy_dtype"]).view(np.int64)
        elif values.dtype.kind == "U":
            values = values.astype(object).astype(str)
        if name in self.root:
            if not np.array_equal(self._coord_values(name), values.view(attrs["numpy_dtype"]) if attrs else values):
                raise ValueError(f"{self.path}: coordinate {name!r} exists with other values")
            return
        # zarr takes None as automatic chunks (a 0-d coordinate), though its annotation leaves None out.
        chunks = values.shape or None
        array = self.root.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks)  # type: ignore[arg-type]
        array[...] = values
        array.attrs.update(attrs | {"dims": [name]})

    def coords(self, name: str) -> OrderedDict[str, np.ndarray]:
        return OrderedDict((dim, self._coord_values(dim)) for dim in self._dims(name))

    def add_array(
        self,
        coords: OrderedDict[str, np.ndarray],
        array_name: str | Sequence[str],
        data: Any = None,
        dtype: Any = np.float32,
    ) -> None:
        for dim, values in coords.items():
            self._write_coord(dim, np.asarray(values))
        shape = tuple(len(v) for v in coords.values())
        chunks = tuple(
            self.chunks.get(dim, 1 if dim in ("ensemble", "time", "lead_time") else len(v)) for dim, v in coords.items()
        )
        for index, name in enumerate(_names(array_name)):
            if name in self.root:
                if list(self._dims(name)) != list(coords) or self._array(name).shape != shape:
                    raise ValueError(f"{self.path}: array {name!r} exists with other dims or shape")
                continue
            array = self.root.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=np.nan)
            array.attrs["dims"] = list(coords)
            if data is not None:
                array[...] = _host(_tensors(data)[index])

    def write(self, x: Any, coords: OrderedDict[str, np.ndarray], array_name: str | Sequence[str]) -> None:
        for tensor, name in zip(_tensors(x), _names(array_name), strict=False):
            index = _positions(self.coords(name), coords, name)
            self._array(name).oindex[index] = _host(tensor)

    def __getitem__(self, name: str) -> Any:
        return self.root[name]

    def __contains__(self, name: str) -> bool:
        return name in self.root
