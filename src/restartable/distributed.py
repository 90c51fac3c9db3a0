"""Rank and world-size detection for per-rank checkpoint directories."""

from __future__ import annotations

import importlib.util
import os
import sys

__all__ = ["detect_rank_and_world_size"]

_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _from_physicsnemo() -> tuple[int, int] | None:
    # find_spec first: importing physicsnemo is expensive, and most users do
    # not have it.
    if importlib.util.find_spec("physicsnemo") is None:
        return None
    try:
        from physicsnemo.distributed import DistributedManager
    except ImportError:
        return None
    try:
        if not DistributedManager.is_initialized():
            return None
        manager = DistributedManager()
        return int(manager.rank), int(manager.world_size)
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None


def _from_torch_distributed() -> tuple[int, int] | None:
    # Only if the program imported torch: a process group cannot exist
    # otherwise, and importing torch here would make every import heavy.
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return int(dist.get_rank()), int(dist.get_world_size())
    except (AttributeError, RuntimeError, ValueError):
        return None


def _env_int(names: tuple[str, ...]) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value is None or value.strip() == "":
            continue
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def detect_rank_and_world_size() -> tuple[int, int]:
    """This process's ``(rank, world_size)``.

    PhysicsNeMo's ``DistributedManager`` is asked first when it is importable
    and initialised; then an initialised ``torch.distributed`` process group;
    then ``RANK``/``LOCAL_RANK``/``SLURM_PROCID``/``OMPI_COMM_WORLD_RANK``
    and ``WORLD_SIZE``/``SLURM_NTASKS``/``OMPI_COMM_WORLD_SIZE``; otherwise
    ``(0, 1)``.
    """
    for source in (_from_physicsnemo, _from_torch_distributed):
        found = source()
        if found is not None:
            return found
    rank = _env_int(_RANK_VARIABLES)
    world_size = _env_int(_WORLD_SIZE_VARIABLES)
    if rank is None or world_size is None:
        # A lone LOCAL_RANK (set by some launchers for a single process per
        # node) says nothing about the world: treat the run as serial.
        return 0, 1
    return rank, world_size
