"""A reference perturbation whose random state is checkpointed."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..state import bind_checkpoint_state


@dataclass
class GaussianPerturbationState:
    """The generator state after the last draw (``None`` before the first)."""

    rng_state: torch.Tensor | None = None


class GaussianPerturbation:
    """Adds ``std * N(0, 1)`` noise drawn from a seeded ``torch.Generator``.

    The bound dataclass is the source of truth for the random state: every
    call reads it before drawing and writes it after. So when a session
    restores it — at construction inside ``with checkpoint``, or when the
    ensemble workflow rewinds to the start of a member batch — the next draw
    is exactly the one an uninterrupted run would make.
    """

    def __init__(self, std: float = 0.1, seed: int = 0) -> None:
        self.std = float(std)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.checkpoint = bind_checkpoint_state(GaussianPerturbationState())

    def to(self, device: Any) -> GaussianPerturbation:
        return self

    def __call__(
        self, x: torch.Tensor, coords: OrderedDict[str, np.ndarray]
    ) -> tuple[torch.Tensor, OrderedDict[str, np.ndarray]]:
        state = self.checkpoint
        if state.rng_state is not None:
            self.generator.set_state(state.rng_state.cpu())  # restored tensors may live on the checkpoint device
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        state.rng_state = self.generator.get_state()
        return x + self.std * noise.to(x.device), coords
