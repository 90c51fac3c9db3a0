"""Packs: the small arrays of a row in one payload file.

A state of many small arrays (a model's ``state_dict``, per-shard RNG
states, a dict of statistics) would otherwise cost one file per array: one
create, write, fsync and checksum each, a disk block or more each, one open
each on restore. Small arrays are laid out back to back in a *pack* instead,
and large ones keep a ``.npy`` file of their own (page-aligned for direct
I/O, linkable when unchanged). See ``docs/architecture.md`` for the
measurements behind the threshold.

Format (row format version 2)
-----------------------------
A pack (``pack000000.bin``, ...) holds the raw bytes of its arrays and zero
padding, nothing else. Each array starts at an offset that is a multiple of
the smallest power of two not below its size, capped at 64 bytes, so that a
view of it is aligned for its dtype and large ones start on a cache line.
The row's manifest is the index: besides ``files`` (every file of the row,
with its size and checksum, packs included), it has ``arrays``, one entry
per payload index::

    {"file": "p000003.npy"}                       an array with a file of its own
    {"file": "pack000000.bin", "offset": 4096,    an array in a pack: where its
     "size": 1024, "checksum": "<xxh3_64>",       bytes are, their checksum, and
     "descr": "<f4", "shape": [16, 16]}           what they are (``"fortran_order":
                                                  true`` when stored column-major)

``descr`` is what :func:`numpy.lib.format.dtype_to_descr` gives, or its
``repr`` when that is a list of fields (structured dtypes). A row without
packs is written in format version 1 (no ``arrays``; payload ``i`` is
``files[i]``), which every earlier release reads.

Reading a packed array with numpy alone::

    import json, numpy as np
    body = json.loads((row / "manifest.json").read_text())["manifest"]
    entry = body["arrays"][7]
    raw = np.fromfile(row / entry["file"], np.uint8, entry["size"], offset=entry["offset"])
    array = raw.view(entry["descr"]).reshape(entry["shape"])  # simple dtypes, C order

Everything in an entry is checked before it is used (:func:`array_table`):
a pack is read in one request, its checksum checked once, and each array is
a view of it; when the pack's checksum fails, each array's own checksum
names the damaged ones.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._env import env_number
from .._text import shown
from .files import SIMPLE_DESCR, PayloadError, check_text, dtype_from_descr, is_checksum, is_shape

__all__ = [
    "ArrayTable",
    "Layout",
    "PACK_BELOW_BYTES",
    "PACK_BELOW_VARIABLE",
    "PACK_BYTES",
    "PACK_NAME",
    "array_table",
    "default_pack_below",
    "dtype_of",
    "fill_pack",
    "lay_out",
    "member",
    "member_align",
]

PACK_NAME = "pack{:06d}.bin"
# Arrays smaller than this go into packs. Below it, the cost of a file of its
# own (create, fsync, open) outweighs the copy into a pack (a pack of 1 to 4
# MiB arrays commits in 0.5-0.95x and restores in 0.3-0.5x the time of a file
# each: benchmarks/bench_pack_threshold.py); from it on, an array's own file
# is written with direct I/O straight from its memory, can be linked when
# unchanged, and keeps alive only its own memory once restored.
PACK_BELOW_BYTES = 4 << 20
# Overrides PACK_BELOW_BYTES for every writer of the process that does not
# set ``pack_below`` itself (``0``: rows in format 1, which 0.1.0 reads).
PACK_BELOW_VARIABLE = "RESTARTABLE_PACK_BELOW"
# A pack is closed once it holds this much: packs of a large state are
# written (and fsynced) beside each other, and a restore never holds a
# buffer larger than this per pack beyond the arrays it returns.
PACK_BYTES = 64 << 20
# Alignment of an array in a pack: a cache line, or less for an array smaller
# than that (a scalar keeps its natural alignment without 60 bytes of padding).
MAX_MEMBER_ALIGN = 64
# A structured dtype's description as ``repr``: bounded like an ``.npy`` header.
_MAX_DESCR_CHARS = 1 << 20
_MEMBER_KEYS = frozenset({"file", "offset", "size", "checksum", "descr", "shape"})
_MEMBER_KEYS_FORTRAN = _MEMBER_KEYS | {"fortran_order"}


def default_pack_below() -> int:
    """The threshold of writers given none: ``$RESTARTABLE_PACK_BELOW`` bytes, else :data:`PACK_BELOW_BYTES`."""
    value = env_number(PACK_BELOW_VARIABLE, int, "bytes", str(PACK_BELOW_BYTES))
    return PACK_BELOW_BYTES if value is None else int(value)


def member_align(size: int) -> int:
    """Where an array of ``size`` bytes may start in a pack: a multiple of this."""
    return min(MAX_MEMBER_ALIGN, 1 << max(0, size - 1).bit_length())


@functools.lru_cache(maxsize=256)
def _descr_text(dtype: np.dtype) -> str:
    descr = np.lib.format.dtype_to_descr(dtype)
    return descr if isinstance(descr, str) else repr(descr)


@functools.lru_cache(maxsize=1024)
def dtype_of(descr: str) -> np.dtype:
    """The dtype of a pack entry's ``descr``, checked as strictly as an ``.npy`` header's.

    Raises :class:`PayloadError`. Only literals are parsed: nothing is
    evaluated, called or imported.
    """
    if SIMPLE_DESCR.fullmatch(descr):
        return dtype_from_descr(descr)
    if not descr.startswith("[") or len(descr) > _MAX_DESCR_CHARS:
        raise PayloadError(f"invalid descr {shown(descr)}")
    try:
        fields = ast.literal_eval(descr)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise PayloadError(f"invalid descr {shown(descr)} ({type(exc).__name__})") from None
    return dtype_from_descr(fields)


@dataclass(frozen=True)
class Layout:
    """Where each payload of a row goes: a file of its own, or a place in a pack.

    ``own`` lists payload indices with their own ``.npy`` file; ``packs[k]``
    lists ``(index, offset)`` of the arrays of pack ``k`` and ``sizes[k]``
    its size in bytes.
    """

    own: list[int]
    packs: list[list[tuple[int, int]]]
    sizes: list[int]


def lay_out(payloads: Sequence[np.ndarray], pack_below: int = PACK_BELOW_BYTES) -> Layout:
    """Decide the files of a row: arrays under ``pack_below`` bytes share packs (``0`` packs none)."""
    own: list[int] = []
    packs: list[list[tuple[int, int]]] = []
    sizes: list[int] = []
    members: list[tuple[int, int]] = []
    end = 0
    for index, array in enumerate(payloads):
        size = array.nbytes
        if size >= pack_below:
            own.append(index)
            continue
        align = member_align(size)
        offset = -(-end // align) * align
        if members and offset + size > PACK_BYTES:
            packs.append(members)
            sizes.append(end)
            members, offset = [], 0
        members.append((index, offset))
        end = offset + size
    if members:
        packs.append(members)
        sizes.append(end)
    return Layout(own=own, packs=packs, sizes=sizes)


def fill_pack(
    buffer: np.ndarray, payloads: Sequence[np.ndarray], members: list[tuple[int, int]], file: str
) -> list[tuple[int, dict[str, Any]]]:
    """Copy the arrays of one pack into ``buffer`` (its exact size); return ``(index, entry)`` for each.

    The padding between arrays is zeroed, so that a pack's bytes (and its
    checksum) depend on nothing but the arrays: an unchanged pack can be linked.
    """
    import xxhash  # imported lazily so that ``import restartable`` needs numpy only

    hexdigest = xxhash.xxh3_64_hexdigest
    entries = []
    end = 0
    for index, offset in members:
        array = payloads[index]
        # As an .npy file would hold it: C order, or Fortran order (the transposed array's C order).
        fortran = array.flags.f_contiguous and not array.flags.c_contiguous
        data = array.T if fortran else array
        size = array.nbytes
        if offset > end:
            buffer[end:offset] = 0
        slot = buffer[offset : offset + size]
        if size:
            # Copies a non-contiguous array straight into its place, in C order.
            slot.view(array.dtype).reshape(data.shape)[...] = data
        entry: dict[str, Any] = {
            "file": file,
            "offset": offset,
            "size": size,
            "checksum": hexdigest(slot.data if size else b""),
            "descr": _descr_text(array.dtype),
            "shape": list(array.shape),
        }
        if fortran:
            entry["fortran_order"] = True
        entries.append((index, entry))
        end = offset + size
    return entries


def member(pack: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
    """The array ``entry`` describes in ``pack`` (the whole pack file), as a view when it is aligned.

    ``entry`` must have passed :func:`array_table`; ``PayloadError`` for text
    that is not Unicode.
    """
    dtype = dtype_of(entry["descr"])
    shape = tuple(entry["shape"])
    fortran = entry.get("fortran_order", False)
    offset, size = entry["offset"], entry["size"]
    if not size:
        return np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    raw = pack[offset : offset + size]
    if offset % dtype.alignment:
        raw = raw.copy()  # never in a pack we wrote; a hand-made one still reads correctly
    flat = raw.view(dtype)
    check_text(flat)
    array: np.ndarray = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return array


@dataclass(frozen=True)
class ArrayTable:
    """The ``arrays`` of a row, checked: per payload index, its file and (when packed) its entry."""

    files: list[str]
    entries: list[dict[str, Any] | None]

    def __len__(self) -> int:
        return len(self.files)


def array_table(body: dict[str, Any]) -> ArrayTable:
    """The payloads of a row from its manifest body, checked against its ``files``.

    Format 1: payload ``i`` is ``files[i]``. Format 2: ``arrays`` is checked
    strictly (every field typed, every packed array inside a listed pack and
    of exactly the size its dtype and shape need, no two overlapping, no own
    file used twice). Raises :class:`PayloadError` saying what is wrong.
    """
    sizes = {entry["name"]: entry["size"] for entry in body["files"]}
    arrays = body.get("arrays")
    if body["format_version"] < 2:
        if arrays is not None:
            raise PayloadError("'arrays' appears in a format 1 manifest")
        return ArrayTable(files=list(sizes), entries=[None] * len(sizes))
    if not isinstance(arrays, list):
        raise PayloadError(f"'arrays' is {shown(arrays)}, not a list")
    files: list[str] = []
    entries: list[dict[str, Any] | None] = []
    own: set[str] = set()
    spans: dict[str, list[tuple[int, int, int]]] = {}
    for index, entry in enumerate(arrays):
        if not isinstance(entry, dict):
            raise PayloadError(f"arrays[{index}] is a {type(entry).__name__}, not an object")
        file = entry.get("file")
        # The names in ``files`` were checked to be plain names of the row already.
        if not isinstance(file, str) or file not in sizes:
            raise PayloadError(f"arrays[{index}] names file {shown(file)}, which 'files' does not list")
        files.append(file)
        if len(entry) == 1:
            if file in own or file in spans:
                raise PayloadError(f"arrays[{index}] uses {file!r}, which another payload uses too")
            own.add(file)
            entries.append(None)
            continue
        if file in own:
            raise PayloadError(f"arrays[{index}] uses {file!r}, which another payload uses too")
        problem = _member_problem(entry, sizes[file])
        if problem is not None:
            raise PayloadError(f"arrays[{index}] ({file}) {problem}")
        spans.setdefault(file, []).append((entry["offset"], entry["offset"] + entry["size"], index))
        entries.append(entry)
    for file, taken in spans.items():
        taken.sort()
        for (_, end, first), (start, _, second) in itertools.pairwise(taken):
            if start < end:
                raise PayloadError(f"arrays[{first}] and arrays[{second}] overlap in {file!r}")
    return ArrayTable(files=files, entries=entries)


def _member_problem(entry: dict[str, Any], file_size: int) -> str | None:
    keys = entry.keys()
    if keys != _MEMBER_KEYS and keys != _MEMBER_KEYS_FORTRAN:
        return f"has fields {sorted(map(str, keys))}, not {sorted(_MEMBER_KEYS)} (and optionally fortran_order)"
    offset, size, shape, descr = entry["offset"], entry["size"], entry["shape"], entry["descr"]
    if type(offset) is not int or type(size) is not int or offset < 0 or size < 0 or offset + size > file_size:
        return f"has offset {shown(offset)} and size {shown(size)}, not within the {file_size} bytes of the pack"
    if not is_checksum(entry["checksum"]):
        return f"has checksum {shown(entry['checksum'])}, not 16 hex digits"
    if entry.get("fortran_order", True) is not True:
        return f"has fortran_order {shown(entry['fortran_order'])}; only true may be recorded"
    if not isinstance(shape, list) or not is_shape(tuple(shape)):
        return f"has shape {shown(shape)}, not a list of at most 64 non-negative integers"
    if not isinstance(descr, str):
        return f"has descr {shown(descr)}, not a string"
    try:
        dtype = dtype_of(descr)
    except PayloadError as exc:
        return str(exc)
    count = math.prod(shape)  # exact integers: a huge shape must not wrap around to a size that fits
    if count * dtype.itemsize != size:
        return f"describes {count * dtype.itemsize} bytes of {dtype} {tuple(shape)}, but its size is {size}"
    return None
