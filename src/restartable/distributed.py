"""Rank and world-size detection for per-rank checkpoint directories."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

__all__ = ["detect_rank_and_world_size", "process_group_size"]

_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _physicsnemo_manager() -> Any:
    """PhysicsNeMo's ``DistributedManager`` class, or None where PhysicsNeMo is not installed."""
    if "physicsnemo" not in sys.modules:
        # find_spec first: importing physicsnemo is expensive, and most users
        # do not have it. (A module already imported is used as it is, even
        # one without a __spec__, for which find_spec raises ValueError.)
        try:
            if importlib.util.find_spec("physicsnemo") is None:
                return None
        except (ImportError, ValueError):
            return None
    try:
        from physicsnemo.distributed import DistributedManager
    except ImportError:
        return None
    return DistributedManager


def _from_physicsnemo(initialize: bool = False) -> tuple[int, int] | None:
    manager_class = _physicsnemo_manager()
    if manager_class is None:
        return None
    try:
        if not manager_class.is_initialized():
            if not initialize:
                return None
            manager_class.initialize()
        manager = manager_class()
        rank, world_size = int(manager.rank), int(manager.world_size)
        distributed = world_size > 1 or bool(getattr(manager, "distributed", False))
    except (AttributeError, RuntimeError, TypeError, ValueError, ZeroDivisionError, Warning):
        return None
    # A serial manager says nothing the launcher's variables would not.
    return (rank, world_size) if distributed else None


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


def detect_rank_and_world_size(initialize_physicsnemo: bool = False) -> tuple[int, int]:
    """This process's ``(rank, world_size)``.

    PhysicsNeMo's ``DistributedManager`` is asked first when it is importable
    and initialised (``initialize_physicsnemo`` initialises it first, as
    earth2studio's ``Checkpoint`` does; restartable's own does not, since
    that may set up a process group); then an initialised
    ``torch.distributed`` process group; then
    ``RANK``/``LOCAL_RANK``/``SLURM_PROCID``/``OMPI_COMM_WORLD_RANK`` and
    ``WORLD_SIZE``/``SLURM_NTASKS``/``OMPI_COMM_WORLD_SIZE``; otherwise
    ``(0, 1)``.
    """
    found = _from_physicsnemo(initialize_physicsnemo) or _from_torch_distributed()
    if found is not None:
        return found
    rank = _env_int(_RANK_VARIABLES)
    world_size = _env_int(_WORLD_SIZE_VARIABLES)
    if rank is None or world_size is None:
        # A lone LOCAL_RANK (set by some launchers for a single process per
        # node) says nothing about the world: treat the run as serial.
        return 0, 1
    return rank, world_size


# ---------------------------------------------------------------- agreement
#
# Ranks agree on one restart point: the newest sequence number that every
# rank committed whole. With an initialised torch.distributed process group
# of the same size they exchange what they have by collectives, issued only
# from the caller's thread when the checkpoint is opened; otherwise each rank
# reads the other ranks' stores (restartable.catalog._agreement). Between
# commits, each rank publishes its newest sequence in its store's HEAD
# (RowStore.write_head), so that retention can keep the newest common row at
# the cost of one small read per rank.


def process_group_size() -> int | None:
    """The world size of an initialised torch.distributed process group, else None."""
    found = _from_torch_distributed()
    return None if found is None else found[1]


def all_gather(value: Any, world_size: int) -> list[Any]:
    """Every rank's ``value`` (JSON-able), by ``all_gather_object``; call from every rank."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered
