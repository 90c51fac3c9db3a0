"""Rank detection sources and the refusal to resume with another world size."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import run_python
from restartable import Checkpoint, CheckpointWorldSizeError
from restartable.distributed import detect_rank_and_world_size


def _commit(path: Path, rank: int, world_size: int, rows: int = 2) -> None:
    with Checkpoint("ws", path=path, rank=rank, world_size=world_size) as session:
        for step in range(rows):
            session.write(lead_time=step)


def test_open_mpi_variables_give_rank_and_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert detect_rank_and_world_size() == (3, 4)


def test_torch_distributed_process_group_is_detected(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import torch.distributed as dist
        from restartable.distributed import detect_rank_and_world_size
        assert detect_rank_and_world_size() == (0, 1)
        dist.init_process_group("gloo", init_method="file://{tmp_path}/rendezvous", rank=0, world_size=1)
        print(detect_rank_and_world_size())
        dist.destroy_process_group()
        """
    )
    assert run_python(code, warm=True).stdout.strip() == "(0, 1)"


def test_torch_distributed_wins_over_environment_variables(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os
        os.environ.update(RANK="5", WORLD_SIZE="8")
        import torch.distributed as dist
        from restartable.distributed import detect_rank_and_world_size
        assert detect_rank_and_world_size() == (5, 8)
        dist.init_process_group("gloo", init_method="file://{tmp_path}/rendezvous", rank=0, world_size=1)
        print(detect_rank_and_world_size())
        """
    )
    assert run_python(code, warm=True).stdout.strip() == "(0, 1)"


def test_serial_store_refuses_a_distributed_restart(store: Path) -> None:
    _commit(store, rank=0, world_size=1)
    with pytest.raises(CheckpointWorldSizeError, match=r"world_size 1 .*, but this run has world_size 2"):
        with Checkpoint("ws", path=store, rank=1, world_size=2):
            pass
    # Nothing was written by the refused run.
    assert not (store / "rank_000001").exists()
    assert [entry.lead_time for entry in Checkpoint("ws", path=store).catalog] == [1]


def test_distributed_store_refuses_a_serial_restart(store: Path) -> None:
    for rank in range(4):
        _commit(store, rank=rank, world_size=4)
    with pytest.raises(CheckpointWorldSizeError, match=r"at least 4 .*, but this run has world_size 1"):
        Checkpoint("ws", path=store, rank=0, world_size=1).select()


def test_fewer_ranks_than_folders_is_refused(store: Path) -> None:
    for rank in range(4):
        _commit(store, rank=rank, world_size=4)
    with pytest.raises(
        CheckpointWorldSizeError, match=r"world_size at least 4 \(folder rank_000003\), but this run has world_size 2"
    ):
        with Checkpoint("ws", path=store, rank=0, world_size=2):
            pass


def test_more_ranks_than_before_is_refused_by_the_row_records(store: Path) -> None:
    for rank in range(2):
        _commit(store, rank=rank, world_size=2)
    with pytest.raises(CheckpointWorldSizeError, match=r"world_size 2, but this run has world_size 4"):
        _ = Checkpoint("ws", path=store, rank=0, world_size=4).catalog


def test_same_world_size_resumes(store: Path) -> None:
    for rank in range(2):
        _commit(store, rank=rank, world_size=2)
    for rank in range(2):
        with Checkpoint("ws", path=store, rank=rank, world_size=2) as session:
            assert session.lead_time == 1
