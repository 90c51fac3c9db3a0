"""A reference diagnostic model."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch


class WindSpeed:
    """Wind speed ``sqrt(u**2 + v**2)`` from two wind components.

    Stateless: restarting it needs nothing. Follows earth2studio's diagnostic
    protocol: ``input_coords()``, ``output_coords(coords)``, ``__call__(x, coords)``.
    """

    def __init__(self, u: str = "u10m", v: str = "v10m", name: str = "ws10m") -> None:
        self.u, self.v, self.name = u, v, name

    def input_coords(self) -> OrderedDict[str, np.ndarray]:
        return OrderedDict(batch=np.empty(0), variable=np.array([self.u, self.v]), lat=np.empty(0), lon=np.empty(0))

    def output_coords(self, input_coords: OrderedDict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        out = OrderedDict(input_coords)
        out["variable"] = np.array([self.name])
        return out

    def to(self, device: Any) -> WindSpeed:
        return self

    def __call__(
        self, x: torch.Tensor, coords: OrderedDict[str, np.ndarray]
    ) -> tuple[torch.Tensor, OrderedDict[str, np.ndarray]]:
        axis = list(coords).index("variable")
        names = list(np.asarray(coords["variable"]))
        u = x.select(axis, names.index(self.u))
        v = x.select(axis, names.index(self.v))
        return torch.sqrt(u * u + v * v).unsqueeze(axis), self.output_coords(coords)
