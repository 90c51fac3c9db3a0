"""A deterministic synthetic data source."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..workflows.coords import to_time_array


class SyntheticData:
    """Smooth, reproducible fields on a regular lat/lon grid.

    ``source(time, variable)`` returns an ``xarray.DataArray`` of dims
    ``(time, variable, lat, lon)``. Values depend only on the time, the
    variable name, the grid and ``seed`` — the same in every process.

    Example
    -------
    >>> source = SyntheticData(nlat=4, nlon=8)
    >>> source(["2024-01-01"], ["u10m"]).shape
    (1, 1, 4, 8)
    """

    def __init__(self, nlat: int = 16, nlon: int = 32, seed: int = 0) -> None:
        self.lat = np.linspace(90.0, -90.0, nlat)
        self.lon = np.linspace(0.0, 360.0, nlon, endpoint=False)
        self.seed = int(seed)

    def _field(self, time: np.datetime64, variable: str) -> np.ndarray:
        hours = int(time.astype("datetime64[h]").astype(np.int64))
        key = zlib.crc32(f"{variable}|{hours}|{self.seed}".encode())
        rng = np.random.default_rng(key)
        lat = np.deg2rad(self.lat)[:, None]
        lon = np.deg2rad(self.lon)[None, :]
        phase = rng.uniform(0, 2 * np.pi)
        base = 8.0 + 2.0 * np.cos(lat) * np.sin(3 * lon + phase)
        return (base + 0.05 * rng.standard_normal((lat.size, lon.size))).astype(np.float32)

    def __call__(self, time: Sequence[Any], variable: Sequence[str]) -> Any:
        import xarray as xr

        times = to_time_array(time)
        values = np.stack([np.stack([self._field(t, v) for v in variable]) for t in times])
        return xr.DataArray(
            values,
            dims=("time", "variable", "lat", "lon"),
            coords={"time": times, "variable": np.array(list(variable)), "lat": self.lat, "lon": self.lon},
        )
