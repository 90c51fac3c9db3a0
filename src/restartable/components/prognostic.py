"""Reference prognostic models: Persistence (nothing hidden) and Lorenz-96 (hidden state)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..state import bind_checkpoint_state

SIX_HOURS = np.timedelta64(6, "h")
_GRID_DIMS = ("lead_time", "variable", "lat", "lon")


def _coords(variables: Sequence[str], lat: np.ndarray, lon: np.ndarray) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        batch=np.empty(0),
        time=np.empty(0),
        lead_time=np.array([np.timedelta64(0, "h")]),
        variable=np.array(list(variables)),
        lat=np.asarray(lat),
        lon=np.asarray(lon),
    )


def _advance(coords: OrderedDict[str, np.ndarray], step: np.timedelta64) -> OrderedDict[str, np.ndarray]:
    out = OrderedDict(coords)
    out["lead_time"] = np.asarray(coords["lead_time"]) + step
    return out


class _Grid:
    """What both reference models share: a variable list on a lat/lon grid, 6-hour steps."""

    def __init__(
        self, variables: Sequence[str], lat: np.ndarray, lon: np.ndarray, step: np.timedelta64 = SIX_HOURS
    ) -> None:
        self.variables = list(variables)
        self.lat = np.asarray(lat)
        self.lon = np.asarray(lon)
        self.step = np.timedelta64(step)
        self.device = torch.device("cpu")

    def input_coords(self) -> OrderedDict[str, np.ndarray]:
        return _coords(self.variables, self.lat, self.lon)

    def output_coords(self, input_coords: OrderedDict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        return _advance(input_coords, self.step)

    def to(self, device: Any) -> Any:
        self.device = torch.device(device)
        return self


class Persistence(_Grid):
    """Tomorrow equals today: yields the initial condition at every lead time.

    Nothing is hidden: every step follows from the initial condition, which
    the workflow fetches again on restart, so no state is bound and the model
    is fully restartable at level 1.

    Example
    -------
    >>> import numpy as np
    >>> model = Persistence(["t2m"], lat=np.zeros(2), lon=np.zeros(3))
    >>> model.output_coords(model.input_coords())["lead_time"]
    array([6], dtype='timedelta64[h]')
    """

    def create_iterator(
        self, x: torch.Tensor, coords: OrderedDict[str, np.ndarray]
    ) -> Iterator[tuple[torch.Tensor, OrderedDict[str, np.ndarray]]]:
        current = OrderedDict(coords)
        yield x, current
        while True:
            current = _advance(current, self.step)
            yield x.clone(), current


@dataclass
class Lorenz96State:
    """Hidden state of :class:`Lorenz96` at the last yielded step (saved at level 2).

    ``batch_coords`` identifies the rollout (ensemble members, times) the
    state belongs to, so that a state is never continued into another one.
    """

    x_prev: torch.Tensor | None = None
    x_curr: torch.Tensor | None = None
    lead_time: np.timedelta64 | None = None
    batch_coords: dict[str, np.ndarray] = field(default_factory=dict)


class Lorenz96(_Grid):
    """Lorenz-96 on every latitude ring of every variable, integrated by leapfrog.

    ``dx_k/dt = (x_{k+1} - x_{k-2}) x_{k-1} - x_k + F`` around each ring of
    longitudes. The leapfrog scheme with a Robert-Asselin filter needs the
    (filtered) previous state as well as the current one: the forecast
    fields written to IO are not enough to continue a rollout, so resuming
    mid-rollout needs this model's level-2 state. Without it, the workflow
    recomputes the rollout from the initial condition — slower, same result.

    One 6-hour step is ``substeps`` model steps of ``dt`` (0.05 time units
    per 6 hours, Lorenz's scaling).
    """

    def __init__(
        self,
        variables: Sequence[str] = ("u10m", "v10m"),
        lat: np.ndarray | None = None,
        lon: np.ndarray | None = None,
        forcing: float = 8.0,
        dt: float = 0.01,
        substeps: int = 5,
        asselin: float = 0.05,
    ) -> None:
        super().__init__(
            variables,
            np.linspace(90, -90, 16) if lat is None else lat,
            np.linspace(0, 360, 32, endpoint=False) if lon is None else lon,
        )
        self.forcing, self.dt, self.substeps, self.asselin = float(forcing), float(dt), int(substeps), float(asselin)
        self.checkpoint = bind_checkpoint_state(Lorenz96State())

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1) - x + self.forcing

    def _start(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The leapfrog needs two levels; the first step is taken with RK4.
        f = self.tendency
        h = self.dt
        k1 = f(x0)
        k2 = f(x0 + 0.5 * h * k1)
        k3 = f(x0 + 0.5 * h * k2)
        k4 = f(x0 + h * k3)
        return x0, x0 + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    def _leapfrog(self, prev: torch.Tensor, curr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nxt = prev + 2.0 * self.dt * self.tendency(curr)
        filtered = curr + self.asselin * (prev - 2.0 * curr + nxt)
        return filtered, nxt

    @staticmethod
    def _batch_coords(coords: OrderedDict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in coords.items() if k not in _GRID_DIMS}

    def _restorable(self, coords: OrderedDict[str, np.ndarray]) -> bool:
        state = self.checkpoint
        if state.checkpoint_level < 2 or state.lead_time is None or state.x_curr is None:
            return False
        mine, saved = self._batch_coords(coords), state.batch_coords
        return mine.keys() == saved.keys() and all(np.array_equal(mine[k], saved[k]) for k in mine)

    def _record(self, prev: torch.Tensor | None, curr: torch.Tensor, coords: OrderedDict[str, np.ndarray]) -> None:
        # The state refers to the rollout's tensors without copying them: the
        # leapfrog makes new tensors at every step and never changes one in
        # place, the caller only ever gets clones, and a commit copies (or
        # writes) what the state refers to at that moment.
        state = self.checkpoint
        if state.checkpoint_level >= 2:
            device = state.device
            state.x_prev = None if prev is None else prev.detach().to(device)
            state.x_curr = curr.detach().to(device)
            state.lead_time = np.asarray(coords["lead_time"]).reshape(-1)[-1]
            state.batch_coords = self._batch_coords(coords)

    def create_iterator(
        self, x: torch.Tensor, coords: OrderedDict[str, np.ndarray]
    ) -> Iterator[tuple[torch.Tensor, OrderedDict[str, np.ndarray]]]:
        current = OrderedDict(coords)
        if self._restorable(coords):
            # Continue the interrupted rollout: the next step, not the saved one.
            state = self.checkpoint
            prev = None if state.x_prev is None else state.x_prev.to(x.device)
            curr = state.x_curr.to(x.device)
            current["lead_time"] = np.array([state.lead_time])
        else:
            prev, curr = None, x.clone()  # the caller's tensor is the caller's to change
            self._record(None, curr, current)
            yield x, current
        while True:
            for _ in range(self.substeps):
                if prev is None:
                    prev, curr = self._start(curr)
                else:
                    prev, curr = self._leapfrog(prev, curr)
            current = _advance(current, self.step)
            self._record(prev, curr, current)
            yield curr.clone(), current
