"""Behaviour of the catalog front end: ``Checkpoint``, ``CheckpointSession``,
``CheckpointEntry`` and ``NullCheckpoint``, as the seed API reference and the
checkpointing guide describe them."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import run_python
from restartable import (
    Checkpoint,
    CheckpointEntry,
    CheckpointSerializationError,
    CheckpointSession,
    CheckpointWarning,
    NullCheckpoint,
    bind_checkpoint_state,
)
from restartable.store import open_row

STATE_IDS_EMPTY: tuple[str, ...] = ()


def commit_dirs(rank_path: Path) -> list[Path]:
    commits = rank_path / "commits"
    if not commits.is_dir():
        return []
    return sorted(p for p in commits.iterdir() if p.is_dir())


def leftovers(rank_path: Path) -> list[str]:
    return sorted(n for n in os.listdir(rank_path) if n.startswith((".staging-", ".trash-")))


# --------------------------------------------------------------------------- constructor


def test_signature_matches_seed() -> None:
    params = inspect.signature(Checkpoint).parameters
    names = list(params)
    assert names[:9] == [
        "name",
        "path",
        "mode",
        "flush_interval",
        "history_size",
        "level",
        "rank",
        "world_size",
        "device",
    ]
    assert params["name"].default is inspect.Parameter.empty
    assert params["path"].default is None
    assert params["mode"].default == "overwrite"
    assert params["flush_interval"].default == 1
    assert params["history_size"].default is None
    assert params["level"].default == 2
    assert params["rank"].default is None
    assert params["world_size"].default is None
    # The seed's default is torch.device("cpu"); "cpu" names the same device.
    assert torch.device(params["device"].default) == torch.device("cpu")
    # Every seed argument can be passed by position, as in the seed signature.
    for name in names[:9]:
        assert params[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_constructor_defaults(store: Path) -> None:
    checkpoint = Checkpoint("defaults", path=store)
    assert checkpoint.name == "defaults"
    assert checkpoint.path == store
    assert checkpoint.mode == "overwrite"
    assert checkpoint.flush_interval == 1
    assert checkpoint.level == 2
    assert checkpoint.rank == 0
    assert checkpoint.world_size == 1
    assert checkpoint.rank_path == store
    assert checkpoint.catalog == ()
    assert checkpoint.active is None


def test_positional_arguments_follow_seed_order(store: Path) -> None:
    checkpoint = Checkpoint("positional", str(store), "append", 3, 5, 1, 1, 2, "cpu")
    assert checkpoint.path == store
    assert checkpoint.mode == "append"
    assert checkpoint.flush_interval == 3
    assert checkpoint.history_size == 5
    assert checkpoint.level == 1
    assert (checkpoint.rank, checkpoint.world_size) == (1, 2)
    assert checkpoint.rank_path == store / "rank_000001"


def test_device_is_a_torch_device(store: Path) -> None:
    checkpoint = Checkpoint("dev", path=store)
    assert isinstance(checkpoint.device, torch.device)
    assert checkpoint.device == torch.device("cpu")
    explicit = Checkpoint("dev", path=store, device=torch.device("cpu"))
    assert explicit.device == torch.device("cpu")
    with checkpoint as session:
        assert session.device == torch.device("cpu")


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"mode": "replace"}, "mode"),
        ({"mode": "APPEND"}, "mode"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"flush_interval": -1}, "flush_interval"),
        ({"mode": "append", "history_size": 0}, "history_size"),
        ({"mode": "append", "history_size": -2}, "history_size"),
        ({"level": 3}, "level"),
        ({"level": -1}, "level"),
        ({"rank": 4, "world_size": 4}, "rank"),
        ({"rank": 5, "world_size": 2}, "rank"),
        ({"rank": -1, "world_size": 2}, "rank"),
        ({"rank": 0, "world_size": 0}, "world_size"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_argument(store: Path, kwargs: dict, argument: str) -> None:
    kwargs = {"name": "bad", "path": store, **kwargs}
    with pytest.raises(ValueError, match=argument):
        Checkpoint(**kwargs)
    # Nothing was created for an invalid checkpoint.
    assert list(store.iterdir()) == []


# --------------------------------------------------------------------------- paths


def test_default_path_uses_restartable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "my-cache"
    monkeypatch.setenv("RESTARTABLE_CACHE", str(cache))
    checkpoint = Checkpoint("my-forecast")
    assert checkpoint.path == cache / "checkpoints" / "my-forecast"
    assert checkpoint.rank_path == checkpoint.path
    with checkpoint as session:
        session.write(lead_time=1)
    rows = commit_dirs(cache / "checkpoints" / "my-forecast")
    assert len(rows) == 1
    assert Checkpoint("my-forecast").select(-1).lead_time == 1


def test_default_path_without_cache_variable_is_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("RESTARTABLE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(home))
    checkpoint = Checkpoint("run-a")
    assert checkpoint.path == home / ".cache" / "restartable" / "checkpoints" / "run-a"
    with checkpoint as session:
        session.write(step=1)
    assert len(commit_dirs(home / ".cache" / "restartable" / "checkpoints" / "run-a")) == 1


def test_explicit_path_accepts_str_and_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    checkpoint = Checkpoint("x", path="~/stores/x")
    assert checkpoint.path == tmp_path / "stores" / "x"
    assert Checkpoint("x", path=str(tmp_path / "s")).path == tmp_path / "s"


def test_rank_path_serial_and_distributed(store: Path) -> None:
    assert Checkpoint("r", path=store, rank=0, world_size=1).rank_path == store
    assert Checkpoint("r", path=store, rank=3, world_size=4).rank_path == store / "rank_000003"
    assert Checkpoint("r", path=store, rank=0, world_size=2).rank_path == store / "rank_000000"


def test_distributed_rank_writes_into_its_own_folder(store: Path) -> None:
    for rank in (0, 1):
        checkpoint = Checkpoint("dist", path=store, rank=rank, world_size=2)
        with checkpoint as session:
            session.write(lead_time=rank * 10)
    assert len(commit_dirs(store / "rank_000000")) == 1
    assert len(commit_dirs(store / "rank_000001")) == 1
    assert not (store / "commits").exists()
    # Each rank's catalog holds only its own rows.
    rank1 = Checkpoint("dist", path=store, rank=1, world_size=2)
    assert [e.lead_time for e in rank1.catalog] == [10]
    assert rank1.catalog[0].rank == 1
    assert rank1.catalog[0].world_size == 2


# --------------------------------------------------------------------------- rank detection


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (0, 1)),
        ({"RANK": "2", "WORLD_SIZE": "4"}, (2, 4)),
        ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, (1, 2)),
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "5"}, (3, 5)),
        ({"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "3"}, (1, 3)),
        ({"WORLD_SIZE": "6", "SLURM_NTASKS": "2", "RANK": "5"}, (5, 6)),
    ],
)
def test_rank_and_world_size_detected_from_environment(
    store: Path, monkeypatch: pytest.MonkeyPatch, env: dict, expected: tuple[int, int]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    checkpoint = Checkpoint("env", path=store)
    assert (checkpoint.rank, checkpoint.world_size) == expected
    rank, world_size = expected
    assert checkpoint.rank_path == (store if world_size == 1 else store / f"rank_{rank:06d}")


def test_explicit_rank_and_world_size_override_environment(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    checkpoint = Checkpoint("env", path=store, rank=0, world_size=1)
    assert (checkpoint.rank, checkpoint.world_size) == (0, 1)
    assert checkpoint.rank_path == store
    partial = Checkpoint("env", path=store, world_size=8)
    assert (partial.rank, partial.world_size) == (3, 8)
    partial_rank = Checkpoint("env", path=store, rank=1)
    assert (partial_rank.rank, partial_rank.world_size) == (1, 4)


def test_detected_rank_outside_world_size_is_rejected(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "4")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="rank"):
        Checkpoint("env", path=store)


# --------------------------------------------------------------------------- catalog and selection


def test_catalog_empty_then_rows_after_writes(store: Path) -> None:
    checkpoint = Checkpoint("cat", path=store, mode="append")
    assert checkpoint.catalog == ()
    with checkpoint as session:
        for step in range(3):
            entry = session.write(lead_time=step)
            assert isinstance(entry, CheckpointEntry)
            assert len(checkpoint.catalog) == step + 1
    catalog = checkpoint.catalog
    assert isinstance(catalog, tuple)
    assert all(isinstance(e, CheckpointEntry) for e in catalog)
    assert [e.lead_time for e in catalog] == [0, 1, 2]


def test_refresh_sees_rows_committed_by_another_object(store: Path) -> None:
    reader = Checkpoint("shared", path=store, mode="append")
    assert reader.catalog == ()
    writer = Checkpoint("shared", path=store, mode="append")
    with writer as session:
        session.write(lead_time=1)
        session.write(lead_time=2)
    reader.refresh()
    assert [e.lead_time for e in reader.catalog] == [1, 2]
    assert reader.select(-1).lead_time == 2


def test_refresh_sees_rows_committed_by_another_process(store: Path) -> None:
    reader = Checkpoint("shared", path=store, mode="append")
    assert reader.catalog == ()
    run_python(
        textwrap.dedent(
            f"""
            from restartable import Checkpoint
            with Checkpoint("shared", path={str(store)!r}, mode="append") as s:
                for i in range(4):
                    s.write(lead_time=i, origin="child")
            """
        )
    )
    assert reader.refresh() is None
    catalog = reader.catalog
    assert [e.lead_time for e in catalog] == [0, 1, 2, 3]
    assert catalog[-1].metadata["origin"] == "child"


def test_select_positive_and_negative_indexes(store: Path) -> None:
    checkpoint = Checkpoint("sel", path=store, mode="append")
    with checkpoint as session:
        for step in range(4):
            session.write(lead_time=step * 6)
    for index, expected in [(0, 0), (1, 6), (3, 18), (-1, 18), (-2, 12), (-4, 0)]:
        selected = checkpoint.select(index)
        assert isinstance(selected, CheckpointSession)
        assert selected.exists
        assert selected.lead_time == expected
        assert selected.commit_id == checkpoint.catalog[index].commit_id
    for index in (4, 10, -5):
        with pytest.raises(IndexError):
            checkpoint.select(index)


def test_select_on_empty_catalog_raises_index_error(store: Path) -> None:
    checkpoint = Checkpoint("empty", path=store)
    for index in (0, -1, 1):
        with pytest.raises(IndexError):
            checkpoint.select(index)


def test_selected_session_is_a_context_manager_restoring_the_row(store: Path) -> None:
    checkpoint = Checkpoint("sel", path=store, mode="append")
    with checkpoint as session:
        for step in range(3):
            session.write(lead_time=step, tag=f"t{step}")
    with checkpoint.select(0) as first:
        assert first.is_active
        assert checkpoint.active is first
        assert first.lead_time == 0
        assert first.metadata == {"lead_time": 0, "tag": "t0"}
        assert first.write_count == 1
    assert checkpoint.active is None


def test_context_manager_opens_new_session_when_catalog_is_empty(store: Path) -> None:
    checkpoint = Checkpoint("ctx", path=store)
    with checkpoint as session:
        assert isinstance(session, CheckpointSession)
        assert session.exists is False
        assert not session
        assert session.write_count == 0
        assert session.lead_time is None
        assert session.commit_id is None
        assert session.metadata == {}
    assert checkpoint.catalog == ()


def test_context_manager_picks_latest_row(store: Path) -> None:
    checkpoint = Checkpoint("ctx", path=store, mode="append")
    with checkpoint as session:
        for step in range(3):
            session.write(lead_time=step)
    latest = checkpoint.catalog[-1]
    with Checkpoint("ctx", path=store, mode="append") as session:
        assert session.exists is True
        assert session
        assert session.commit_id == latest.commit_id
        assert session.lead_time == 2
        assert session.write_count == 3


def test_active_session_inside_with_and_none_outside(store: Path) -> None:
    checkpoint = Checkpoint("act", path=store)
    assert checkpoint.active is None
    with checkpoint as session:
        assert checkpoint.active is session
        assert session.is_active
        session.write(lead_time=1)
        assert checkpoint.active is session
    assert checkpoint.active is None
    assert not session.is_active
    other = Checkpoint("other", path=store.parent / "other")
    with checkpoint:
        # A session of one checkpoint is not the active session of another.
        assert other.active is None


# --------------------------------------------------------------------------- modes and retention


def test_overwrite_mode_keeps_exactly_one_row(store: Path) -> None:
    checkpoint = Checkpoint("ow", path=store, mode="overwrite")
    with checkpoint as session:
        for step in range(7):
            session.write(lead_time=step)
            assert len(checkpoint.catalog) == 1
            assert len(commit_dirs(store)) == 1
    assert [e.lead_time for e in checkpoint.catalog] == [6]
    assert len(commit_dirs(store)) == 1
    assert leftovers(store) == []
    assert checkpoint.catalog[0].sequence == 7


def test_overwrite_mode_ignores_history_size(store: Path) -> None:
    # Warned about (tests/test_argument_checks.py), and ignored, as in earth2studio.
    with pytest.warns(CheckpointWarning, match="history_size=5 is ignored"):
        checkpoint = Checkpoint("ow", path=store, mode="overwrite", history_size=5)
    with checkpoint as session:
        for step in range(4):
            session.write(lead_time=step)
    assert len(checkpoint.catalog) == 1
    assert len(commit_dirs(store)) == 1


def test_append_mode_keeps_every_row(store: Path) -> None:
    checkpoint = Checkpoint("ap", path=store, mode="append")
    with checkpoint as session:
        for step in range(6):
            session.write(lead_time=step)
    assert [e.lead_time for e in checkpoint.catalog] == list(range(6))
    assert len(commit_dirs(store)) == 6


@pytest.mark.parametrize("history_size", [1, 3])
def test_append_mode_with_history_size_keeps_newest_rows(store: Path, history_size: int) -> None:
    checkpoint = Checkpoint("hist", path=store, mode="append", history_size=history_size)
    with checkpoint as session:
        for step in range(7):
            session.write(lead_time=step)
            assert len(checkpoint.catalog) == min(step + 1, history_size)
    catalog = checkpoint.catalog
    assert [e.lead_time for e in catalog] == list(range(7 - history_size, 7))
    assert [e.sequence for e in catalog] == list(range(8 - history_size, 8))
    dirs = commit_dirs(store)
    assert len(dirs) == history_size
    assert sorted(d.name for d in dirs) == sorted(e.commit_id for e in catalog)
    assert leftovers(store) == []


def test_history_size_applies_across_sessions(store: Path) -> None:
    for _ in range(3):
        with Checkpoint("hist", path=store, mode="append", history_size=2) as session:
            session.write(step=session.write_count)
            session.write(step=session.write_count)
    catalog = Checkpoint("hist", path=store, mode="append").catalog
    assert [e.metadata["step"] for e in catalog] == [4, 5]
    assert len(commit_dirs(store)) == 2


# --------------------------------------------------------------------------- flushing


def test_flush_interval_commits_every_nth_write(store: Path) -> None:
    checkpoint = Checkpoint("fi", path=store, mode="append", flush_interval=3)
    with checkpoint as session:
        results = []
        for step in range(1, 8):
            results.append(session.write(lead_time=step))
            assert len(checkpoint.catalog) == step // 3
        assert [r is None for r in results] == [True, True, False, True, True, False, True]
        assert isinstance(results[2], CheckpointEntry)
        assert results[2].write_count == 3 and results[2].lead_time == 3
        assert results[5].write_count == 6 and results[5].lead_time == 6
        assert session.write_count == 7
        # The 7th write is pending until flush.
        entry = session.flush()
        assert isinstance(entry, CheckpointEntry)
        assert entry.write_count == 7 and entry.lead_time == 7
    assert [e.lead_time for e in checkpoint.catalog] == [3, 6, 7]


def test_flush_interval_none_commits_only_on_flush(store: Path) -> None:
    checkpoint = Checkpoint("manual", path=store, flush_interval=None)
    with checkpoint as session:
        for step in range(5):
            assert session.write(lead_time=step) is None
        assert checkpoint.catalog == ()
        assert commit_dirs(store) == []
        entry = session.flush()
        assert isinstance(entry, CheckpointEntry)
        assert entry.lead_time == 4
        assert entry.write_count == 5
        assert session.flush() is None
    assert [e.lead_time for e in checkpoint.catalog] == [4]


def test_flush_with_nothing_pending_returns_none(store: Path) -> None:
    checkpoint = Checkpoint("noop", path=store)
    with checkpoint as session:
        assert session.flush() is None
    assert checkpoint.catalog == ()
    with checkpoint as session:
        session.write(lead_time=1)
        assert session.flush() is None  # already committed by write
    assert len(checkpoint.catalog) == 1


def test_flush_with_metadata_commits(store: Path) -> None:
    checkpoint = Checkpoint("fm", path=store, mode="append", flush_interval=None)
    with checkpoint as session:
        entry = session.flush(status="done", lead_time=np.timedelta64(12, "h"))
        assert isinstance(entry, CheckpointEntry)
        assert entry.metadata == {"status": "done", "lead_time": np.timedelta64(12, "h")}
        assert entry.write_count == 0
    catalog = checkpoint.catalog
    assert len(catalog) == 1
    assert catalog[0].metadata["status"] == "done"
    assert catalog[0].lead_time == np.timedelta64(12, "h")


# --------------------------------------------------------------------------- metadata


def test_write_metadata_merges_with_previous_metadata(store: Path) -> None:
    checkpoint = Checkpoint("meta", path=store, mode="append")
    with checkpoint as session:
        session.write(lead_time=1, completed_ensembles=0, note="a")
        entry = session.write(lead_time=2, extra=True)
        assert entry.metadata == {"lead_time": 2, "completed_ensembles": 0, "note": "a", "extra": True}
        assert session.lead_time == 2
        assert session.metadata == entry.metadata
        assert session.metadata_value("note") == "a"
        assert session.metadata_value("lead_time") == 2
        with pytest.raises(KeyError):
            session.metadata_value("missing")
    # A later session started from that row carries its metadata on.
    with Checkpoint("meta", path=store, mode="append") as session:
        entry = session.write(lead_time=3, note="b")
        assert entry.metadata == {"lead_time": 3, "completed_ensembles": 0, "note": "b", "extra": True}
    assert checkpoint.select(0).metadata == {"lead_time": 1, "completed_ensembles": 0, "note": "a"}


def test_session_metadata_is_a_copy(store: Path) -> None:
    checkpoint = Checkpoint("meta", path=store)
    with checkpoint as session:
        session.write(lead_time=1)
        session.metadata["lead_time"] = 99
        assert session.lead_time == 1
        assert session.metadata_value("lead_time") == 1


def test_session_facts_follow_commits(store: Path) -> None:
    checkpoint = Checkpoint("facts", path=store, mode="append", flush_interval=2)
    with checkpoint as session:
        assert session.commit_id is None
        assert session.lead_time is None
        assert session.write(lead_time=1) is None
        assert session.write_count == 1
        # The pending write is not committed yet: facts describe committed rows.
        assert session.commit_id is None
        assert session.lead_time is None
        entry = session.write(lead_time=2)
        assert session.write_count == 2
        assert session.commit_id == entry.commit_id == checkpoint.catalog[-1].commit_id
        assert session.lead_time == 2
        assert session.exists


def test_lead_time_array_is_recorded_as_scalar(store: Path) -> None:
    checkpoint = Checkpoint("lt", path=store)
    lead = np.array([np.timedelta64(18, "h")])
    with checkpoint as session:
        entry = session.write(lead_time=lead)
        assert isinstance(entry.lead_time, np.timedelta64)
        assert not isinstance(entry.lead_time, np.ndarray)
        assert entry.lead_time == np.timedelta64(18, "h")
    reread = Checkpoint("lt", path=store).catalog[0]
    assert isinstance(reread.lead_time, np.timedelta64)
    assert reread.lead_time == np.timedelta64(18, "h")
    assert reread.metadata["lead_time"] == np.timedelta64(18, "h")


def test_metadata_values_round_trip(store: Path) -> None:
    when = dt.datetime(2024, 1, 1, 6)
    checkpoint = Checkpoint("rt", path=store)
    with checkpoint as session:
        session.write(
            lead_time=np.timedelta64(6, "h"),
            time=np.datetime64("2024-01-01T00:00"),
            start=when,
            members=[0, 1, 2],
            ratio=0.25,
            name="x",
            nested={"a": (1, 2)},
        )
    metadata = Checkpoint("rt", path=store).select(-1).metadata
    assert metadata["time"] == np.datetime64("2024-01-01T00:00")
    assert metadata["start"] == when
    assert metadata["members"] == [0, 1, 2]
    assert metadata["ratio"] == 0.25
    assert metadata["name"] == "x"
    assert metadata["nested"] == {"a": (1, 2)}


# --------------------------------------------------------------------------- entries


def test_entry_fields(store: Path) -> None:
    checkpoint = Checkpoint("ent", path=store, mode="append", level=1)
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    with checkpoint as session:
        for step in range(3):
            session.write(lead_time=np.timedelta64(6 * step, "h"), member=step)
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
    catalog = checkpoint.catalog
    sequences = [e.sequence for e in catalog]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3
    for index, entry in enumerate(catalog):
        assert entry.lead_time == np.timedelta64(6 * index, "h")
        assert entry.metadata["member"] == index
        assert entry.write_count == index + 1
        saved_at = dt.datetime.fromisoformat(entry.saved_at)
        if saved_at.tzinfo is None:
            saved_at = saved_at.replace(tzinfo=dt.timezone.utc)
        assert before <= saved_at <= after
        assert entry.rank == 0
        assert entry.world_size == 1
        assert entry.level == 1
        assert entry.state_ids == STATE_IDS_EMPTY
        assert isinstance(entry.commit_id, str) and entry.commit_id
        assert (store / "commits" / entry.commit_id).is_dir()
    assert len({e.commit_id for e in catalog}) == 3


def test_sequence_keeps_increasing_across_sessions_and_overwrites(store: Path) -> None:
    sequences = []
    for _ in range(3):
        with Checkpoint("seq", path=store) as session:
            sequences.append(session.write(lead_time=1).sequence)
    assert sequences == sorted(sequences) and len(set(sequences)) == 3


# --------------------------------------------------------------------------- display


def _table_lines(text: str) -> tuple[str, list[str]]:
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if "lead_time" in line]
    assert len(headers) == 1, text
    body = [line for line in lines[headers[0] + 1 :] if line.strip()]
    return lines[headers[0]], body


def test_str_shows_catalog_table(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = Checkpoint("show", path=store, mode="append")
    with checkpoint as session:
        for step in range(3):
            session.write(lead_time=np.timedelta64(6 * step, "h"), member=step)
    text = str(checkpoint)
    header, body = _table_lines(text)
    assert "lead_time" in header
    assert len(body) == 3
    for index, line in enumerate(body):
        cells = line.split()
        assert cells[0] == str(index)
        assert f"{6 * index}h" in cells or str(np.timedelta64(6 * index, "h")) in line
    print(checkpoint)
    assert capsys.readouterr().out == text + "\n"


def test_str_shows_sequences_shortened_and_leaves_mappings_out(store: Path) -> None:
    # An ensemble's completed_ensembles (a list of members) is a column; a
    # workflow's identity (a mapping) is left to `restartable show`.
    checkpoint = Checkpoint("show-lists", path=store, mode="append")
    with checkpoint as session:
        session.write(lead_time=np.timedelta64(6, "h"), completed_ensembles=[0, 1, 2], workflow={"name": "ensemble"})
        session.write(lead_time=np.timedelta64(12, "h"), completed_ensembles=list(range(40)))
    header, body = _table_lines(str(checkpoint))
    assert "completed_ensembles" in header.split() and "workflow" not in header
    assert "[0, 1, 2]" in body[0]
    assert "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9..." in body[1]


def test_str_of_empty_catalog(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = Checkpoint("show-empty", path=store)
    text = str(checkpoint)
    assert "catalog: empty" in text
    print(checkpoint)
    assert "catalog: empty" in capsys.readouterr().out


def test_str_reflects_rows_written_after_construction(store: Path) -> None:
    checkpoint = Checkpoint("show-late", path=store, mode="append")
    assert "catalog: empty" in str(checkpoint)
    with Checkpoint("show-late", path=store, mode="append") as session:
        session.write(lead_time=5)
        session.write(lead_time=7)
    _header, body = _table_lines(str(checkpoint))
    assert len(body) == 2
    assert "catalog: empty" not in str(checkpoint)


# --------------------------------------------------------------------------- NullCheckpoint


def test_null_checkpoint_is_a_no_op(tmp_path: Path) -> None:
    null = NullCheckpoint()
    assert not null
    assert bool(null) is False
    assert null.exists is False
    assert null.metadata == {}
    assert null.lead_time is None
    assert null.write(lead_time=1, anything="x") is None
    assert null.flush() is None
    assert null.flush(status="done") is None
    with null as session:
        assert session is null
        assert session.write(lead_time=2) is None
    assert null.metadata == {}
    with pytest.raises(KeyError):
        null.metadata_value("lead_time")
    # It wrote nothing anywhere.
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- resume


def test_resume_write_count_across_processes(store: Path) -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        from restartable import Checkpoint
        checkpoint = Checkpoint("resume", path={str(store)!r}, mode="append", flush_interval=2)
        with checkpoint as session:
            start = session.write_count
            for _ in range(int(sys.argv[1])):
                session.write(lead_time=session.write_count + 1)
            session.flush()
        print(json.dumps({{"start": start, "end": session.write_count}}))
        """
    )
    first = json.loads(run_python(code, "5").stdout)
    assert first == {"start": 0, "end": 5}
    second = json.loads(run_python(code, "3").stdout)
    assert second == {"start": 5, "end": 8}
    checkpoint = Checkpoint("resume", path=store, mode="append")
    assert checkpoint.catalog[-1].write_count == 8
    assert checkpoint.catalog[-1].lead_time == 8
    selected = checkpoint.select(-1)
    assert selected.write_count == 8
    # Commits fall on write counts divisible by flush_interval (plus the flushes).
    assert [e.write_count for e in checkpoint.catalog] == [2, 4, 5, 6, 8]


def test_selected_older_row_resumes_from_its_write_count(store: Path) -> None:
    checkpoint = Checkpoint("resume", path=store, mode="append")
    with checkpoint as session:
        for step in range(4):
            session.write(lead_time=step)
    with checkpoint.select(1) as session:
        assert session.write_count == 2
        entry = session.write(lead_time=99)
        assert entry.write_count == 3
    assert checkpoint.catalog[-1].write_count == 3


# --------------------------------------------------------------------------- imports


def test_import_is_lightweight() -> None:
    result = run_python(
        "import sys, restartable\n"
        "heavy = ['torch', 'xxhash', 'fsspec', 'zarr', 'xarray']\n"
        "print(sorted(m for m in heavy if m in sys.modules or any(k.startswith(m + '.') for k in sys.modules)))\n"
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- structured dtypes of many fields


@dataclass
class Table:
    rows: Any = None


def _wide_dtype(fields: int) -> np.dtype:
    return np.dtype([(f"a_rather_long_column_name_{i:05d}", "<f8" if i % 2 else "<i4") for i in range(fields)])


@pytest.mark.parametrize("packed", [False, True], ids=["own-file", "packed"])
@pytest.mark.parametrize("fields", [400, 3000], ids=["v1-header", "v2-header"])
def test_structured_dtype_of_many_fields_round_trips(
    store: Path, fields: int, packed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers past numpy's default 10,000-byte reading limit (and past 64 KiB: a version 2.0 header).

    In a pack, the description is the manifest's instead, as the ``repr`` of the field list.
    """
    if not packed:
        monkeypatch.setenv("RESTARTABLE_PACK_BELOW", "0")
    dtype = _wide_dtype(fields)
    rows = np.zeros(5, dtype=dtype)
    for i, name in enumerate(dtype.names[:50]):
        rows[name] = np.arange(5) * (i + 1)
    with Checkpoint("wide", path=store) as session:
        bind_checkpoint_state(Table()).rows = rows
        session.flush(lead_time=1)
    if packed:
        (entry,) = open_row(session.entry.path).arrays.entries
        assert entry is not None and entry["descr"].startswith("[(") and entry["file"] == "pack000000.bin"
    else:
        payload = next((Path(session.entry.path)).glob("p*.npy"))
        assert np.load(payload, max_header_size=1 << 20).dtype == dtype  # a plain .npy file still
    with Checkpoint("wide", path=store) as session:
        assert session.lead_time == 1, "the row was not read back"
        restored = bind_checkpoint_state(Table()).rows
    assert restored.dtype == dtype and restored.tobytes() == rows.tobytes()


def test_dtype_too_large_to_store_is_refused_at_write_with_its_path(store: Path) -> None:
    with Checkpoint("wide", path=store) as session:
        state = bind_checkpoint_state(Table())
        state.rows = np.zeros(2, dtype=_wide_dtype(10))
        session.flush(lead_time=1)
        state.rows = np.zeros(2, dtype=_wide_dtype(20000))
        with pytest.raises(CheckpointSerializationError) as info:
            session.flush(lead_time=2)
        assert "state.rows" in str(info.value) and "split a structured dtype" in str(info.value)
    with Checkpoint("wide", path=store) as session:
        assert session.lead_time == 1
        assert bind_checkpoint_state(Table()).rows.dtype == _wide_dtype(10)
