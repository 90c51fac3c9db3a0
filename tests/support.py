"""Helpers shared by several test modules (imported as ``from support import ...``).

pytest puts this directory on ``sys.path`` (the default "prepend" import
mode, as for ``conftest``). Subprocesses that need these helpers get it on
``PYTHONPATH`` (``TESTS_DIR``). Nothing here imports pytest, so a fresh
process can import it cheaply.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

TESTS_DIR = Path(__file__).resolve().parent

# The extreme values of every numpy integer type (keys are the sample names).
NUMPY_INTEGER_EXTREMES = {
    "int8": np.int8(-128),
    "int16": np.int16(-32768),
    "int32": np.int32(2**31 - 1),
    "int64": np.int64(-(2**63)),
    "uint8": np.uint8(255),
    "uint16": np.uint16(65535),
    "uint32": np.uint32(2**32 - 1),
    "uint64": np.uint64(2**64 - 1),
}


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's elements as raw bytes, in logical (row-major) order."""
    t = t.detach().resolve_conj().resolve_neg()
    if t.numel() == 0:
        return b""
    # A fresh buffer with unit stride (contiguous() keeps odd strides of size-1 dims).
    flat = torch.empty(t.numel(), dtype=t.dtype)
    flat.copy_(t.reshape(-1))
    return flat.view(torch.uint8).numpy().tobytes()


def _float_bits(x: float) -> bytes:
    return struct.pack("<d", x)


def assert_same(actual: Any, expected: Any, path: str = "value") -> None:
    """Exact, recursive equality: same types, bitwise-equal arrays, NaN equals NaN, -0.0 is not 0.0."""
    assert type(actual) is type(expected), f"{path}: type {type(actual)!r} != {type(expected)!r}"
    if isinstance(expected, float):
        if math.isnan(expected):
            assert math.isnan(actual), f"{path}: {actual!r} is not nan"
        else:
            assert _float_bits(actual) == _float_bits(expected), f"{path}: {actual!r} != {expected!r}"
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert [(type(k), k) for k in actual] == [(type(k), k) for k in expected], f"{path}: keys differ"
        for k in expected:
            assert_same(actual[k], expected[k], f"{path}[{k!r}]")
    elif dataclasses.is_dataclass(expected):
        for f in dataclasses.fields(expected):
            assert_same(getattr(actual, f.name), getattr(expected, f.name), f"{path}.{f.name}")
    elif isinstance(expected, (np.ndarray, np.generic)):
        assert actual.dtype == expected.dtype, f"{path}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.dtype.str == expected.dtype.str, f"{path}: dtype {actual.dtype.str} != {expected.dtype.str}"
        assert actual.shape == expected.shape, f"{path}: shape {actual.shape} != {expected.shape}"
        if expected.dtype.names is not None:
            # field by field: padding bytes of aligned structs carry no value
            for field in expected.dtype.names:
                assert_same(np.asarray(actual[field]), np.asarray(expected[field]), f"{path}[{field!r}]")
        else:
            assert actual.tobytes() == expected.tobytes(), f"{path}: bytes differ"
    elif isinstance(expected, np.dtype):
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        assert actual.str == expected.str and actual.shape == expected.shape, f"{path}: {actual!r} != {expected!r}"
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype, f"{path}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{path}: shape {actual.shape} != {expected.shape}"
        assert actual.device == expected.device, f"{path}: device {actual.device} != {expected.device}"
        assert actual.requires_grad == expected.requires_grad, f"{path}: requires_grad differs"
        assert tensor_bytes(actual) == tensor_bytes(expected), f"{path}: tensor bytes differ"
    elif isinstance(expected, dt.datetime):
        assert actual.replace(tzinfo=None) == expected.replace(tzinfo=None), f"{path}: {actual!r} != {expected!r}"
        assert actual.fold == expected.fold, f"{path}: fold {actual.fold} != {expected.fold}"
        assert type(actual.tzinfo) is type(expected.tzinfo), f"{path}: tzinfo {actual.tzinfo!r} != {expected.tzinfo!r}"
        assert actual.utcoffset() == expected.utcoffset(), f"{path}: utcoffset differs"
        assert actual.tzname() == expected.tzname(), f"{path}: tzname {actual.tzname()!r} != {expected.tzname()!r}"
    elif isinstance(expected, dt.time):
        assert actual == expected and actual.fold == expected.fold, f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def tree_snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root`` (dot files included) by relative path, links not followed.

    Compare two snapshots to prove that nothing under ``root`` changed.
    """
    found: dict[str, tuple[Any, ...]] = {}
    if not root.exists():
        return found
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(current) / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                found[rel] = ("dir",)
            elif stat.S_ISREG(mode):
                found[rel] = ("file", path.read_bytes())
            else:
                found[rel] = ("special", stat.S_IFMT(mode))
    return found


def first_payload(row: Path) -> Path:
    """The first payload file a row's manifest lists (its pack, when its arrays are small)."""
    import json

    body = json.loads((Path(row) / "manifest.json").read_bytes())["manifest"]
    return Path(row) / body["files"][0]["name"]
