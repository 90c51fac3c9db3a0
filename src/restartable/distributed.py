"""Rank and world-size detection for per-rank checkpoint directories."""

from __future__ import annotations

import importlib.util
import os

__all__ = ["detect_rank_and_world_size"]

_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS")


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
    and initialised; then ``RANK``/``LOCAL_RANK``/``SLURM_PROCID`` and
    ``WORLD_SIZE``/``SLURM_NTASKS``; otherwise ``(0, 1)``.
    """
    found = _from_physicsnemo()
    if found is not None:
        return found
    rank = _env_int(_RANK_VARIABLES)
    world_size = _env_int(_WORLD_SIZE_VARIABLES)
    if rank is None or world_size is None:
        # A lone LOCAL_RANK (set by some launchers for a single process per
        # node) says nothing about the world: treat the run as serial.
        return 0, 1
    return rank, world_size
