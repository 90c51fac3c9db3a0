"""Coordinate systems as earth2studio uses them, without depending on it.

A coordinate system is an ordered dict from dimension name to a 1-d numpy
array; a tensor's dimensions are the keys in order. An empty array (e.g.
``"batch": np.empty(0)``) in a model's input coordinates marks a free batch
dimension that the workflow fills (``"ensemble"``, ``"time"``).
"""

from __future__ import annotations

import datetime as _dt
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

CoordSystem = "OrderedDict[str, np.ndarray]"

__all__ = ["fetch_data", "lead_times", "map_coords", "split_coords", "to_time_array"]


def to_time_array(time: Iterable[Any]) -> np.ndarray:
    """``datetime64[ns]`` array from strings, datetimes or numpy datetimes."""
    values = []
    for item in time:
        if isinstance(item, _dt.datetime) and item.tzinfo is not None:
            item = item.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        values.append(np.datetime64(item, "ns"))
    return np.array(values, dtype="datetime64[ns]")


def fetch_data(
    source: Any,
    time: np.ndarray,
    variable: np.ndarray,
    lead_time: np.ndarray,
    device: Any = "cpu",
) -> tuple[Any, OrderedDict[str, np.ndarray]]:
    """Fetch ``source(time + lead_time, variable)`` as a tensor of dims (time, lead_time, variable, ...)."""
    import torch

    blocks = []
    spatial: OrderedDict[str, np.ndarray] | None = None
    for lead in lead_time:
        array = source(list(time + lead), list(variable))
        array = array.transpose("time", "variable", ...)
        if spatial is None:
            spatial = OrderedDict((dim, np.asarray(array.coords[dim].values)) for dim in array.dims[2:])
        blocks.append(np.asarray(array.values))
    data = np.stack(blocks, axis=1)
    coords: OrderedDict[str, np.ndarray] = OrderedDict(
        time=np.asarray(time), lead_time=np.asarray(lead_time), variable=np.asarray(variable)
    )
    coords.update(spatial or {})
    # float32, as earth2studio's fetch_data gives models (torch.Tensor(values)).
    return torch.as_tensor(data, dtype=torch.float32, device=device), coords


def map_coords(
    x: Any, coords: OrderedDict[str, np.ndarray], output_coords: dict[str, np.ndarray]
) -> tuple[Any, OrderedDict[str, np.ndarray]]:
    """Select the values ``output_coords`` asks for along each named dimension.

    Dimensions not named in ``output_coords`` (or named with an empty array)
    are kept whole. Every requested value must exist.
    """
    out = OrderedDict(coords)
    for dim, wanted in output_coords.items():
        wanted = np.asarray(wanted)
        if dim not in coords or wanted.size == 0:
            continue
        have = np.asarray(coords[dim])
        if have.shape == wanted.shape and np.array_equal(have, wanted):
            continue
        index = []
        for value in wanted:
            hits = np.nonzero(have == value)[0]
            if hits.size == 0:
                raise ValueError(f"coordinate {dim}={value!r} is not among the values {have!r}")
            index.append(int(hits[0]))
        axis = list(coords).index(dim)
        x = x.index_select(axis, _index_tensor(x, index))
        out[dim] = have[index]
    return x, out


def _index_tensor(x: Any, index: Sequence[int]) -> Any:
    import torch

    return torch.as_tensor(index, dtype=torch.long, device=x.device)


def split_coords(
    x: Any, coords: OrderedDict[str, np.ndarray], dim: str = "variable"
) -> tuple[list[Any], OrderedDict[str, np.ndarray], list[str]]:
    """Split ``x`` along ``dim``: one tensor per value, the remaining coords, the names."""
    axis = list(coords).index(dim)
    names = [str(v) for v in coords[dim]]
    rest = OrderedDict((k, v) for k, v in coords.items() if k != dim)
    return list(x.unbind(axis)), rest, names


def lead_times(step: np.ndarray, nsteps: int) -> np.ndarray:
    """The ``nsteps + 1`` lead times of a rollout: 0, step, 2 step, ..."""
    step = np.asarray(step).reshape(-1)[-1]
    return np.array([step * i for i in range(nsteps + 1)])
