"""earth2studio's checkpoint test suite, rewritten against the bridged module.

restartable promises that with its bridge installed, earth2studio's own
``test/utils/test_checkpoint.py`` passes, apart from tests that read or write
earth2studio's private files (``catalog.json``, ``states/*/metadata.json``).
The file is not copied here: these are our own tests of the behaviours it
covers, run against :mod:`restartable.earth2studio.checkpoint` imported
directly (no ``install()``, no global state changed), with the semantics of
earth2studio 0.19.0 (``earth2studio/utils/checkpoint.py`` as installed:
``select(row)`` by position, levels 0/1/2, ``metadata_value``...).

Where restartable deliberately differs, and says so in its README, CHANGELOG,
docs or docstrings, the test checks restartable's behaviour and its name ends
in ``_restartable_difference``. Everywhere else the test states
earth2studio's behaviour, which restartable must have.

Mapping to earth2studio's tests (names as in earth2studio's suite):

test_checkpoint_contexts_and_no_checkpoint_session
    test_null_checkpoint_is_a_no_op, test_null_checkpoint_earth2studio_attributes,
    test_nested_context_returns_the_active_session
test_checkpoint_state_proxy_metadata_and_rebinding
    test_checkpoint_state_constructed_from_a_dataclass, test_checkpoint_state_labels,
    test_checkpoint_state_repr_is_the_dataclass_repr, test_proxy_properties_are_read_only,
    test_session_surface, test_session_compat_aliases, test_session_constructor,
    test_lead_time_tensors_and_arrays_are_normalized
test_bind_round_trip_hydrates_dataclass_and_catalog
    test_round_trip_of_supported_field_types, test_catalog_entry_contents,
    test_loose_nested_dataclass_restored_as_a_dict,
    test_print_shows_the_catalog, test_repr_shows_the_catalog,
    test_labels_are_not_metadata
test_duplicate_state_type_errors_but_different_selections_are_independent
    test_duplicate_state_type_collides, test_states_carried_into_the_next_session
test_write_interval_overwrite_and_manual_flush_prune_old_commits
    test_overwrite_with_flush_interval_keeps_only_the_final_commit,
    test_flush_interval_none_commits_only_on_flush, test_flush_with_nothing_pending,
    test_flush_of_unchanged_metadata_restartable_difference,
    test_write_merges_previous_row_metadata_restartable_difference
test_append_history_size_and_positional_selection
    test_append_history_size_and_positional_selection,
    test_append_without_history_size_keeps_every_row, test_select_row_and_index_error
test_bind_before_new_session_is_adopted_on_enter
    test_bind_before_new_session_is_adopted_on_enter, test_exported_names_and_types,
    test_levels_one_and_two_save_and_restore, test_level_zero_saves_no_state,
    test_level_zero_restores_nothing_from_a_level_two_row
test_bind_before_existing_session_warns_and_hydrates_late
    test_bind_before_existing_session_warns_and_restores_late
test_defensive_paths_and_catalog_rebuild (apart from its catalog.json / manifest edits)
    test_bind_requires_a_dataclass_instance, test_constructor_validation,
    test_constructor_defaults, test_checkpoint_name_restartable_difference,
    test_select_row_and_index_error, test_metadata_values_round_trip,
    test_unsupported_metadata_names_the_key, test_flush_with_nothing_pending,
    test_int_keyed_dicts_are_refused,
    test_dataclass_metadata_refused_restartable_difference,
    test_dataclass_metadata_error_names_the_key,
    test_metadata_one_element_values_are_normalized
test_artifacts_round_trip_and_unsupported_objects_reject
    test_metadata_values_round_trip, test_unsupported_metadata_names_the_key,
    test_unsupported_metadata_is_reported_at_commit, test_unsupported_state_value,
    test_session_compat_aliases
test_schema_mismatch_errors_before_hydration (by changing the dataclass, not metadata.json)
    test_schema_change_raises_before_restoring, test_nested_schema_change_raises
test_default_path_and_rank_directory_detection
    test_default_path_under_earth2studio_cache, test_default_path_without_the_variable,
    test_serial_store_has_no_rank_folder, test_rank_detected_from_the_environment,
    test_independent_ranks_with_consistent_false,
    test_consistent_ranks_resume_together_restartable_difference,
    test_world_size_change_refused_restartable_difference
(every test: exported error types and the devices tensors come back on)
    test_error_hierarchy_restartable_difference, test_restored_tensors_on_checkpoint_device,
    test_second_writer_is_locked_out_restartable_difference, test_pending_checkpoint_state,
    test_pending_checkpoint_state_earth2studio_fields

earth2studio's workflow tests (``test_deterministic_workflow_*``,
``test_diagnostic_*``, ``test_ensemble_workflow_*``) need ``install()``: they
belong to ``tests/test_earth2studio_bridge.py``, not to this module.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import typing
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import restartable
from restartable.earth2studio import checkpoint as e2c


@dataclass
class NestedState:
    label: str = "inner"
    count: int = 0


# Immutable defaults of ToyState, shared by every instance as plain class-level defaults.
_TIMESTAMP = np.datetime64("2026-06-08T00", "h")
_NO_DELTA = np.timedelta64(0, "h")
_CPU = torch.device("cpu")
_NP_FLOAT32 = np.dtype("float32")


@dataclass
class ToyState:
    calls: int = 0
    rng: torch.Tensor | None = None
    weights: np.ndarray = field(default_factory=lambda: np.asarray([1.0, 2.0], dtype=np.float32))
    timestamp: np.datetime64 = _TIMESTAMP
    delta: np.timedelta64 = _NO_DELTA
    tensor_device: torch.device = _CPU
    dtype: torch.dtype = torch.float32
    np_dtype: np.dtype = _NP_FLOAT32
    created: datetime = datetime(2024, 1, 1, tzinfo=timezone.utc)
    day: date = date(2024, 1, 2)
    window: timedelta = timedelta(hours=2)
    items: list = field(default_factory=lambda: [True, np.float32(2.0)])
    pair: tuple = ("left", 1)
    mapping: dict = field(default_factory=lambda: {"value": np.int64(3)})
    nested: NestedState = field(default_factory=NestedState)
    loose: object | None = None


@dataclass
class OtherState:
    value: int = 0


@dataclass
class TensorState:
    x: torch.Tensor | None = None


@dataclass
class BadState:
    value: object = field(default_factory=object)


@dataclass
class ObjectArrayState:
    value: np.ndarray = field(default_factory=lambda: np.asarray([object()], dtype=object))


@dataclass
class MetadataDataclass:
    x: int = 0


def _h(hours: int) -> np.timedelta64:
    return np.timedelta64(hours, "h")


def _sid(cls: type) -> str:
    """earth2studio's state id: the dataclass's module and qualified name."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _in_fresh_context(fn: Any) -> Any:
    """Run ``fn`` where no checkpoint was ever created (earlier tests set the context variables)."""
    return contextvars.Context().run(fn)


def _define(name: str, spec: list[tuple[Any, ...]]) -> type:
    """A dataclass of this module named ``name``: redefining it changes a saved schema."""
    cls = dataclasses.make_dataclass(name, spec)
    cls.__module__ = __name__
    cls.__qualname__ = name
    return cls


def _save_toy(path: Path, calls: int, hours: int = 6, **kwargs: Any) -> e2c.Checkpoint:
    checkpoint = e2c.Checkpoint("forecast", path=path, **kwargs)
    with checkpoint as ckpt:
        state = bind_state(ToyState())
        state.calls = calls
        ckpt.flush(lead_time=_h(hours))
    return checkpoint


bind_state = e2c.bind_checkpoint_state


# --------------------------------------------------------------------------- names and types


def test_exported_names_and_types() -> None:
    expected = {
        "Checkpoint",
        "CheckpointSession",
        "CheckpointEntry",
        "CheckpointState",
        "CheckpointLevel",
        "NullCheckpoint",
        "PendingCheckpointState",
        "bind_checkpoint_state",
        "default_checkpoint_path",
        "CheckpointError",
        "CheckpointStateCollision",
        "CheckpointSerializationError",
        "CheckpointStateSchemaError",
    }
    assert expected <= set(e2c.__all__)
    for name in e2c.__all__:
        assert hasattr(e2c, name), name
    # restartable's own classes under earth2studio's names: isinstance agrees under either name.
    assert issubclass(e2c.Checkpoint, restartable.Checkpoint)
    assert e2c.CheckpointSession is restartable.CheckpointSession
    assert e2c.CheckpointEntry is restartable.CheckpointEntry
    assert e2c.CheckpointState is restartable.CheckpointState
    assert e2c.NullCheckpoint is restartable.NullCheckpoint
    assert e2c.bind_checkpoint_state is restartable.bind_checkpoint_state
    assert set(typing.get_args(e2c.CheckpointLevel)) == {0, 1, 2}
    for error in (e2c.CheckpointStateCollision, e2c.CheckpointSerializationError, e2c.CheckpointStateSchemaError):
        assert issubclass(error, e2c.CheckpointError)
    # earth2studio's base error is a RuntimeError.
    assert issubclass(e2c.CheckpointError, RuntimeError)

    proxy = _in_fresh_context(lambda: bind_state(ToyState()))
    assert isinstance(proxy, e2c.CheckpointState)
    assert isinstance(proxy, restartable.CheckpointState)
    assert not isinstance(ToyState(), e2c.CheckpointState)


def test_error_hierarchy_restartable_difference() -> None:
    # README "earth2studio users": CheckpointSerializationError is also a TypeError,
    # CheckpointStateSchemaError and CheckpointCorruptError are also ValueErrors.
    assert issubclass(e2c.CheckpointSerializationError, TypeError)
    assert issubclass(e2c.CheckpointStateSchemaError, ValueError)
    assert issubclass(e2c.CheckpointCorruptError, ValueError)
    assert not issubclass(e2c.CheckpointStateCollision, (TypeError, ValueError))
    # Warnings are UserWarnings, so earth2studio's pytest.warns(UserWarning) still catches them.
    assert issubclass(e2c.CheckpointLateBindWarning, UserWarning)
    assert e2c.CheckpointLateBindWarning is restartable.CheckpointLateBindWarning


def test_pending_checkpoint_state(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    proxy = e2c.CheckpointState(ToyState())
    pending = e2c.PendingCheckpointState(checkpoint=checkpoint, state_id="tests.ToyState", state=proxy)
    assert dataclasses.is_dataclass(pending)
    assert pending.checkpoint is checkpoint
    assert pending.state is proxy
    assert pending.reusable is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        pending.reusable = True  # type: ignore[misc]


def test_pending_checkpoint_state_earth2studio_fields(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    proxy = e2c.CheckpointState(ToyState())
    pending = e2c.PendingCheckpointState(checkpoint, _sid(ToyState), proxy, False)
    assert pending.state_id == _sid(ToyState)
    assert pending.state is proxy


# --------------------------------------------------------------------------- the proxy


def test_checkpoint_state_constructed_from_a_dataclass() -> None:
    dataclass_state = ToyState()
    proxy = e2c.CheckpointState(dataclass_state)
    assert isinstance(proxy, e2c.CheckpointState)
    assert proxy.checkpoint_dataclass is dataclass_state
    assert proxy.checkpoint_device == torch.device("cpu")
    assert proxy.device == torch.device("cpu")
    assert proxy.checkpoint_flush_interval is None
    assert proxy.checkpoint_write_count == 0
    assert not proxy.checkpoint_is_flush_due
    assert proxy.checkpoint_lead_time is None
    assert proxy.checkpoint_metadata == {}
    assert not proxy.checkpoint_state_loaded
    assert not proxy.checkpoint_selected
    assert not proxy.checkpoint_enabled
    assert proxy.checkpoint_level == 0
    # Field access goes to the dataclass.
    proxy.calls = 3
    assert dataclass_state.calls == 3
    assert proxy.weights is dataclass_state.weights


def test_checkpoint_state_labels(tmp_path: Path) -> None:
    proxy = e2c.CheckpointState(ToyState())
    assert proxy.checkpoint_labels == {}
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        state = bind_state(ToyState())
        assert state.checkpoint_labels == ckpt.labels


def test_checkpoint_state_repr_is_the_dataclass_repr() -> None:
    proxy = e2c.CheckpointState(ToyState())
    assert repr(proxy) == repr(proxy.checkpoint_dataclass)


READ_ONLY = [
    "device",
    "checkpoint_dataclass",
    "checkpoint_device",
    "checkpoint_flush_interval",
    "checkpoint_write_count",
    "checkpoint_is_flush_due",
    "checkpoint_labels",
    "checkpoint_selected",
    "checkpoint_state_loaded",
    "checkpoint_lead_time",
    "checkpoint_metadata",
    "checkpoint_enabled",
    "checkpoint_level",
]


@pytest.mark.parametrize("name", READ_ONLY)
def test_proxy_properties_are_read_only(tmp_path: Path, name: str) -> None:
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        state = bind_state(ToyState())
        with pytest.raises(AttributeError):
            setattr(state, name, 1)
        assert name not in vars(state.checkpoint_dataclass)
        assert state.checkpoint_dataclass.calls == 0
        assert ckpt.bound_states[_sid(ToyState)] is state


def test_bind_requires_a_dataclass_instance(tmp_path: Path) -> None:
    def body() -> None:
        plain = ToyState()
        proxy = bind_state(plain)
        assert isinstance(proxy, e2c.CheckpointState)
        assert proxy.checkpoint_dataclass is plain
        assert not proxy.checkpoint_enabled  # no checkpoint was ever created in this context
        proxy.calls = 1
        assert plain.calls == 1
        assert bind_state(proxy) is proxy
        for value in (object(), ToyState, {"calls": 1}):
            with pytest.raises(TypeError):
                bind_state(value)

    _in_fresh_context(body)
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        with pytest.raises(TypeError):
            ckpt.bind(object())
        with pytest.raises(TypeError):
            bind_state(object())
        assert ckpt.bound_states == {}


# --------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "bad"},
        {"flush_interval": 0},
        {"flush_interval": -1},
        {"history_size": 0},
        {"history_size": -2},
        {"level": 3},
        {"level": -1},
        {"level": True},
    ],
    ids=lambda kwargs: "-".join(f"{k}={v}" for k, v in kwargs.items()),
)
def test_constructor_validation(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        e2c.Checkpoint("bad", path=tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_constructor_defaults(tmp_path: Path) -> None:
    parameters = inspect.signature(e2c.Checkpoint).parameters
    assert list(parameters)[:9] == [
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
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    assert checkpoint.name == "forecast"
    assert checkpoint.path == tmp_path
    assert checkpoint.mode == "overwrite"
    assert checkpoint.flush_interval == 1
    assert checkpoint.history_size == 1  # overwrite keeps one row
    assert checkpoint.level == 2
    assert checkpoint.rank == 0 and checkpoint.world_size == 1
    assert checkpoint.device == torch.device("cpu")
    assert isinstance(checkpoint.device, torch.device)
    assert checkpoint.active is None
    assert checkpoint.catalog == ()

    append = e2c.Checkpoint("forecast", path=str(tmp_path), mode="append", flush_interval=None, level=0)
    assert append.path == tmp_path  # str paths become Paths
    assert append.history_size is None
    assert append.flush_interval is None
    assert append.level == 0
    assert e2c.Checkpoint("forecast", path=tmp_path, mode="append", history_size=3).history_size == 3
    assert e2c.Checkpoint("forecast", path=tmp_path, mode="overwrite", history_size=3).history_size == 1


@pytest.mark.parametrize("name", ["a/b", "..", ""])
def test_checkpoint_name_restartable_difference(tmp_path: Path, name: str) -> None:
    # CHANGELOG: checkpoint names may not contain path separators or be '.'/'..'.
    with pytest.raises(ValueError, match="name"):
        e2c.Checkpoint(name, path=tmp_path)


# --------------------------------------------------------------------------- default path


def test_default_path_under_earth2studio_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(tmp_path / "e2s"))
    assert e2c.default_checkpoint_path("forecast") == tmp_path / "e2s" / "checkpoints" / "forecast"
    checkpoint = e2c.Checkpoint("forecast")
    assert checkpoint.path == tmp_path / "e2s" / "checkpoints" / "forecast"
    with checkpoint as ckpt:
        entry = ckpt.flush(lead_time=_h(0))
    assert entry is not None
    assert Path(entry.path).is_relative_to(tmp_path / "e2s" / "checkpoints" / "forecast")
    assert len(e2c.Checkpoint("forecast").catalog) == 1
    # Only the bridged module moves the store: restartable's own stays in its cache.
    assert restartable.Checkpoint("forecast").path == restartable.default_checkpoint_path("forecast")
    assert not restartable.default_checkpoint_path("forecast").is_relative_to(tmp_path / "e2s")


def test_default_path_without_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EARTH2STUDIO_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".cache" / "earth2studio" / "checkpoints" / "forecast"
    assert e2c.default_checkpoint_path("forecast") == expected
    assert e2c.Checkpoint("forecast").path == expected


# --------------------------------------------------------------------------- levels


def test_level_zero_saves_no_state(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, level=0)
    with checkpoint as ckpt:
        assert ckpt.catalog.level == 0
        state = bind_state(ToyState())
        assert state.checkpoint_level == 0
        assert state.checkpoint_enabled
        state.calls = 5
        entry = ckpt.flush(lead_time=_h(6), step=3)
    assert entry.state_ids == ()
    assert entry.lead_time == _h(6)
    assert entry.metadata["step"] == 3  # progress and explicit metadata are still recorded

    for level in (0, 2):
        with e2c.Checkpoint("forecast", path=tmp_path, level=level).select(-1) as ckpt:
            restored = bind_state(ToyState())
            assert ckpt.exists
            assert not restored.checkpoint_state_loaded
            assert restored.calls == 0


def test_level_zero_restores_nothing_from_a_level_two_row(tmp_path: Path) -> None:
    _save_toy(tmp_path, calls=5, level=2)
    with e2c.Checkpoint("forecast", path=tmp_path, level=0) as ckpt:
        restored = bind_state(ToyState())
        assert ckpt.exists and ckpt.lead_time == _h(6)
        assert not restored.checkpoint_state_loaded
        assert restored.calls == 0
    with e2c.Checkpoint("forecast", path=tmp_path, level=2) as ckpt:
        assert bind_state(ToyState()).calls == 5


@pytest.mark.parametrize("level", [1, 2])
def test_levels_one_and_two_save_and_restore(tmp_path: Path, level: int) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, level=level)
    with checkpoint as ckpt:
        state = bind_state(ToyState())
        other = bind_state(OtherState())
        assert state.checkpoint_level == level
        state.calls = 4
        other.value = 9
        entry = ckpt.flush(lead_time=_h(6))
    assert set(entry.state_ids) == {_sid(ToyState), _sid(OtherState)}
    with e2c.Checkpoint("forecast", path=tmp_path, level=level) as ckpt:
        restored = bind_state(ToyState())
        assert restored.checkpoint_state_loaded
        assert restored.calls == 4
        assert bind_state(OtherState()).value == 9


# --------------------------------------------------------------------------- modes, intervals


def test_overwrite_with_flush_interval_keeps_only_the_final_commit(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="overwrite", flush_interval=2)
    with checkpoint as ckpt:
        state = bind_state(ToyState())
        state.calls = 1
        assert ckpt.write(lead_time=_h(6)) is None
        assert checkpoint.catalog == ()
        state.calls = 2
        first = ckpt.write(lead_time=_h(12))
        assert first is not None and first.write_count == 2 and first.lead_time == _h(12)
        state.calls = 3
        assert ckpt.write(lead_time=_h(18)) is None
        final = ckpt.flush()

    assert final.write_count == 3
    assert final.lead_time == _h(18)
    assert final.commit_id != first.commit_id
    assert [entry.commit_id for entry in checkpoint.catalog] == [final.commit_id]
    commits = [path.name for path in (Path(checkpoint.rank_path) / "commits").iterdir()]
    assert commits == [final.commit_id]

    with checkpoint as ckpt:
        state = bind_state(ToyState())
        assert ckpt.lead_time == _h(18)
        assert ckpt.write_count == 3
        assert state.calls == 3


def test_append_history_size_and_positional_selection(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append", flush_interval=1, history_size=2)
    for hours in (6, 12, 18):
        with checkpoint as ckpt:
            bind_state(ToyState()).calls = hours
            ckpt.write(lead_time=_h(hours))

    catalog = checkpoint.catalog
    assert len(catalog) == 2
    assert [entry.lead_time for entry in catalog] == [_h(12), _h(18)]
    assert [entry.write_count for entry in catalog] == [2, 3]
    assert checkpoint.select(-1).lead_time == _h(18)
    assert checkpoint.select(-2).lead_time == _h(12)
    assert checkpoint.select(0).lead_time == _h(12)
    assert len(list((Path(checkpoint.rank_path) / "commits").iterdir())) == 2
    with checkpoint.select(-2) as ckpt:
        assert bind_state(ToyState()).calls == 12
    with checkpoint as ckpt:
        assert ckpt.lead_time == _h(18)
        assert bind_state(ToyState()).calls == 18


def test_append_without_history_size_keeps_every_row(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append")
    with checkpoint as ckpt:
        for hours in range(0, 30, 6):
            ckpt.write(lead_time=_h(hours))
    assert [entry.lead_time for entry in checkpoint.catalog] == [_h(h) for h in range(0, 30, 6)]
    assert [entry.write_count for entry in checkpoint.catalog] == [1, 2, 3, 4, 5]


def test_flush_interval_none_commits_only_on_flush(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, flush_interval=None)
    with checkpoint as ckpt:
        state = bind_state(ToyState())
        assert state.checkpoint_flush_interval is None
        for hours in (6, 12, 18):
            state.calls = hours
            assert ckpt.write(lead_time=_h(hours)) is None
            assert not state.checkpoint_is_flush_due
        assert state.checkpoint_write_count == 3
        assert checkpoint.catalog == ()
        assert not ckpt.exists
        entry = ckpt.flush()
        assert entry is not None and entry.write_count == 3 and entry.lead_time == _h(18)
        assert ckpt.exists and ckpt.commit_id == entry.commit_id
        assert ckpt.flush() is None
    assert len(checkpoint.catalog) == 1


def test_flush_with_nothing_pending(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append")
    with checkpoint as ckpt:
        assert ckpt.flush() is None
        assert checkpoint.catalog == ()
        first = ckpt.flush(lead_time=torch.tensor([6]))  # metadata alone is a commit
        assert first is not None and first.lead_time == 6 and first.write_count == 0
        assert ckpt.flush() is None
        second = ckpt.write(lead_time=torch.tensor([7]))
        assert second is not None and second.lead_time == 7 and second.write_count == 1
    assert [entry.lead_time for entry in checkpoint.catalog] == [6, 7]


def test_flush_of_unchanged_metadata_restartable_difference(tmp_path: Path) -> None:
    # CHANGELOG: flush(**metadata) commits nothing when the row already records
    # exactly that metadata (earth2studio commits another row).
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append")
    with checkpoint as ckpt:
        assert ckpt.flush(lead_time=_h(6)) is not None
        assert ckpt.flush(lead_time=_h(6)) is None
        assert ckpt.flush(lead_time=_h(12)) is not None
    assert len(checkpoint.catalog) == 2


def test_flush_of_metadata_of_another_type_is_a_change_and_warns_nothing(tmp_path: Path) -> None:
    # An int and a timedelta64 are never "the same metadata"; comparing them
    # would make numpy (2.5) warn about unit-less timedelta64 casts.
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append")
    with checkpoint as ckpt, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.flush(lead_time=6) is not None
        assert ckpt.flush(lead_time=6) is None
        assert ckpt.flush(lead_time=_h(6)) is not None
        assert ckpt.flush(lead_time=_h(6)) is None
        assert ckpt.flush(lead_time=6.0) is not None
        assert ckpt.flush(step=np.int64(3)) is not None
        assert ckpt.flush(step=np.int64(3)) is None
    assert [entry.lead_time for entry in checkpoint.catalog] == [6, _h(6), 6.0, 6.0]
    assert [type(entry.lead_time) for entry in checkpoint.catalog] == [int, np.timedelta64, float, float]


def test_write_merges_previous_row_metadata_restartable_difference(tmp_path: Path) -> None:
    # README "Differences worth knowing": write(**metadata) merges its keywords
    # into the previous row's metadata (earth2studio's row holds only the keys
    # written in the session that committed it).
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    with checkpoint as ckpt:
        ckpt.flush(lead_time=_h(6), completed_ensembles=[0])
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        entry = ckpt.write(step=2)
    assert entry.metadata == {"lead_time": _h(6), "completed_ensembles": [0], "step": 2}


# --------------------------------------------------------------------------- catalog


def test_catalog_entry_contents(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append")
    with checkpoint as ckpt:
        bind_state(ToyState())
        bind_state(OtherState())
        ckpt.write(lead_time=_h(6))
        committed = ckpt.write(lead_time=_h(12), member=3)
        assert ckpt.commit_id == committed.commit_id

    catalog = checkpoint.catalog
    assert isinstance(catalog, tuple)
    assert all(isinstance(entry, e2c.CheckpointEntry) for entry in catalog)
    first, second = catalog
    assert second == committed
    assert [first.write_count, second.write_count] == [1, 2]
    assert [first.lead_time, second.lead_time] == [_h(6), _h(12)]
    assert second.metadata == {"lead_time": _h(12), "member": 3}
    assert set(second.state_ids) == {_sid(ToyState), _sid(OtherState)}
    assert (second.rank, second.world_size) == (0, 1)
    assert first.commit_id != second.commit_id
    assert second.commit_id in {path.name for path in (Path(checkpoint.rank_path) / "commits").iterdir()}
    assert datetime.fromisoformat(first.saved_at) <= datetime.fromisoformat(second.saved_at)
    assert datetime.fromisoformat(second.saved_at).tzinfo is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        second.write_count = 5  # type: ignore[misc]
    # The catalog is re-read from disk: another Checkpoint object sees the same rows.
    assert e2c.Checkpoint("forecast", path=tmp_path).catalog == catalog
    checkpoint.refresh()
    assert checkpoint.catalog == catalog


def test_labels_are_not_metadata(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    with checkpoint as ckpt:
        assert ckpt.labels == {}
        entry = ckpt.write(lead_time=_h(6))
        assert ckpt.metadata == {"lead_time": _h(6)}
        assert ckpt.labels == {}
    assert entry.labels == {}
    assert checkpoint.select(-1).labels == {}


def test_select_row_and_index_error(tmp_path: Path) -> None:
    empty = e2c.Checkpoint("forecast", path=tmp_path / "empty", mode="append")
    with pytest.raises(IndexError):
        empty.select(-1)
    with pytest.raises(IndexError):
        empty.select(0)

    checkpoint = e2c.Checkpoint("forecast", path=tmp_path / "rows", mode="append")
    with checkpoint as ckpt:
        for hours in (6, 12, 18):
            ckpt.write(lead_time=_h(hours))
    for row, hours in [(0, 6), (1, 12), (2, 18), (-1, 18), (-3, 6)]:
        selected = checkpoint.select(row)
        assert isinstance(selected, e2c.CheckpointSession)
        assert selected.exists and bool(selected)
        assert not selected.is_active
        assert selected.lead_time == _h(hours)
        assert selected.commit_id == checkpoint.catalog[row].commit_id
    for row in (3, -4):
        with pytest.raises(IndexError):
            checkpoint.select(row)


def test_metadata_values_round_trip(tmp_path: Path) -> None:
    metadata = {
        "day": date(2024, 1, 1),
        "window": timedelta(hours=2),
        "device": torch.device("cpu"),
        "dtype": torch.float32,
        "np_dtype": np.dtype("float32"),
        "values": [np.int64(1)],
        "meta": {"ok": np.float32(1.0), "name": "sample"},
        "time": np.datetime64("2024-01-01T00", "h"),
        "mask": torch.tensor([True, False]),
        "scores": np.asarray([1.0, 2.0], dtype=np.float32),
        "pair": ("left", 1),
    }
    with e2c.Checkpoint("metadata", path=tmp_path) as ckpt:
        ckpt.flush(lead_time=np.asarray([1, 2]), **metadata)

    selected = e2c.Checkpoint("metadata", path=tmp_path).select(-1)
    assert selected.exists
    restored = selected.metadata
    assert np.array_equal(restored["lead_time"], np.asarray([1, 2]))  # more than one element: kept whole
    assert restored["day"] == date(2024, 1, 1)
    assert restored["window"] == timedelta(hours=2)
    assert restored["device"] == torch.device("cpu")
    assert restored["dtype"] == torch.float32
    assert restored["np_dtype"] == np.dtype("float32")
    assert restored["values"] == [1]
    assert restored["meta"] == {"ok": 1.0, "name": "sample"}
    assert restored["time"] == np.datetime64("2024-01-01T00", "h")
    assert isinstance(restored["mask"], torch.Tensor)
    assert torch.equal(restored["mask"], torch.tensor([True, False]))
    assert np.array_equal(restored["scores"], np.asarray([1.0, 2.0], dtype=np.float32))
    assert restored["scores"].dtype == np.float32
    assert tuple(restored["pair"]) == ("left", 1)
    assert selected.metadata_value("meta") == {"ok": 1.0, "name": "sample"}
    with pytest.raises(KeyError):
        selected.metadata_value("missing")


def test_lead_time_tensors_and_arrays_are_normalized(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append", flush_interval=None)
    with checkpoint as ckpt:
        assert ckpt.write(lead_time=torch.tensor([6])) is None
        entry = ckpt.flush()
        assert entry.lead_time == 6 and isinstance(entry.lead_time, int)
        entry = ckpt.flush(lead_time=np.asarray([np.timedelta64(12, "h")]))
        assert entry.lead_time == _h(12)
        assert np.ndim(entry.lead_time) == 0


def test_metadata_one_element_values_are_normalized(tmp_path: Path) -> None:
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        entry = ckpt.flush(lead_time=_h(0), step=np.asarray([3]), scale=torch.tensor([2.0]))
    for key, value in (("step", 3), ("scale", 2.0)):
        assert np.ndim(entry.metadata[key]) == 0, (key, entry.metadata[key])
        assert not isinstance(entry.metadata[key], (np.ndarray, torch.Tensor))
        assert entry.metadata[key] == value


# --------------------------------------------------------------------------- sessions


def test_session_surface(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, flush_interval=2, level=1)
    with checkpoint as ckpt:
        assert isinstance(ckpt, e2c.CheckpointSession)
        assert ckpt.catalog is checkpoint
        assert ckpt.catalog.level == 1
        assert ckpt.is_active and checkpoint.active is ckpt
        assert not ckpt.exists and not ckpt
        assert ckpt.commit_id is None
        assert ckpt.lead_time is None
        assert ckpt.metadata == {}
        assert ckpt.write_count == 0
        assert ckpt.device == torch.device("cpu")
        with pytest.raises(KeyError):
            ckpt.metadata_value("lead_time")

        state = ckpt.bind(ToyState())
        assert isinstance(state, e2c.CheckpointState)
        assert ckpt.bound_states == {_sid(ToyState): state}
        assert bind_state(state.checkpoint_dataclass) is state
        assert state.checkpoint_metadata == {}

        assert ckpt.write(lead_time=_h(6)) is None
        assert ckpt.write_count == 1
        assert state.checkpoint_is_flush_due
        # write_count is settable (earth2studio's ensemble workflow resets it).
        ckpt.write_count = 0
        assert state.checkpoint_write_count == 0
        assert not state.checkpoint_is_flush_due
        assert ckpt.write(lead_time=_h(12)) is None
        entry = ckpt.write(lead_time=_h(18))
        assert entry is not None and entry.write_count == 2
        assert ckpt.exists and ckpt
        assert ckpt.commit_id == entry.commit_id
        assert ckpt.lead_time == _h(18)
        assert ckpt.metadata_value("lead_time") == _h(18)
        assert state.checkpoint_lead_time == _h(18)
        assert state.checkpoint_metadata == {"lead_time": _h(18)}
        assert state.checkpoint_selected
    assert not ckpt.is_active
    assert checkpoint.active is None

    selected = checkpoint.select(-1)
    assert selected.catalog is checkpoint
    assert not selected.is_active
    assert selected.write_count == 2
    assert selected.metadata == {"lead_time": _h(18)}
    with selected:
        assert selected.is_active
        assert checkpoint.active is selected
        restored = bind_state(ToyState())
        assert list(selected.bound_states.values()) == [restored]
        assert restored.checkpoint_state_loaded
    assert not selected.is_active


def test_nested_context_returns_the_active_session(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append", flush_interval=1)
    with checkpoint as ckpt:
        ckpt.write(lead_time=_h(0))
    with checkpoint.select(-1) as selected:
        with checkpoint as active:
            assert active is selected
            assert active.write(lead_time=_h(6)) is not None
            assert active.flush() is None
        assert selected.is_active  # leaving the inner context keeps the outer one active
        assert checkpoint.active is selected
    assert checkpoint.active is None
    assert [entry.lead_time for entry in checkpoint.catalog] == [_h(0), _h(6)]


def test_session_compat_aliases(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    with checkpoint as ckpt:
        assert ckpt.artifacts == {}
        entry = ckpt.flush(lead_time=_h(6), sample=3)
    selected = checkpoint.select(-1)
    assert selected.artifacts == selected.metadata
    assert selected.artifact("sample") == 3
    with pytest.raises(KeyError):
        selected.artifact("missing")
    assert set(entry.metadata_keys) == {"lead_time", "sample"}
    assert entry.artifacts == entry.metadata_keys


@pytest.mark.parametrize("case", ["new-session", "from-entry"])
def test_session_constructor(tmp_path: Path, case: str) -> None:
    checkpoint = _save_toy(tmp_path, calls=5)
    if case == "new-session":
        session = e2c.CheckpointSession(checkpoint)
        assert not session.exists
        with session:
            assert session.is_active
        return
    session = e2c.CheckpointSession(checkpoint, checkpoint.catalog[-1])
    with session:
        restored = bind_state(ToyState())
        assert restored.checkpoint_state_loaded
        assert restored.calls == 5


# --------------------------------------------------------------------------- binding


def test_bind_before_new_session_is_adopted_on_enter(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, flush_interval=2)
    dataclass_state = ToyState()
    state = bind_state(dataclass_state)
    assert isinstance(state, e2c.CheckpointState)
    assert state.checkpoint_dataclass is dataclass_state
    assert bind_state(dataclass_state) is state
    assert state.checkpoint_enabled
    assert state.checkpoint_level == 2
    assert state.checkpoint_flush_interval == 2
    assert state.checkpoint_write_count == 0
    assert not state.checkpoint_selected
    with pytest.raises(AttributeError):
        state.checkpoint_level = 0  # type: ignore[misc]
    state.calls = 5

    # A new session: the pending state is adopted without a warning (warnings are errors here).
    with checkpoint as ckpt:
        assert list(ckpt.bound_states.values()) == [state]
        assert not state.checkpoint_selected
        assert not state.checkpoint_state_loaded
        assert state.checkpoint_write_count == 0
        assert not state.checkpoint_is_flush_due
        ckpt.write(lead_time=_h(3))
        assert state.checkpoint_write_count == 1
        assert state.checkpoint_is_flush_due
        ckpt.flush(lead_time=_h(6))
    assert dataclass_state.calls == 5

    with e2c.Checkpoint("forecast", path=tmp_path).select(-1):
        restored = bind_state(ToyState())
        assert restored.checkpoint_selected
        assert restored.checkpoint_state_loaded
        assert restored.checkpoint_lead_time == _h(6)
        assert restored.calls == 5
    assert restored.calls == 5
    assert not restored.checkpoint_selected
    assert not restored.checkpoint_state_loaded


def test_bind_before_existing_session_warns_and_restores_late(tmp_path: Path) -> None:
    _save_toy(tmp_path, calls=9)

    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    state = bind_state(ToyState())
    assert state.calls == 0
    assert not state.checkpoint_state_loaded
    with pytest.warns(UserWarning, match="bound before an existing checkpoint session") as record:
        with checkpoint.select(-1) as ckpt:
            assert ckpt.exists
            assert state.checkpoint_state_loaded
            assert state.checkpoint_selected
            assert state.calls == 9
            assert list(ckpt.bound_states.values()) == [state]
    assert {type(warning.message) for warning in record} == {e2c.CheckpointLateBindWarning}


def test_states_carried_into_the_next_session(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    with checkpoint as ckpt:
        state = bind_state(ToyState())
        state.calls = 2
        ckpt.flush(lead_time=_h(6))
    # The next session of the same checkpoint re-adopts the state without a
    # warning, and a new instance of the same type takes its place.
    with checkpoint as ckpt:
        assert list(ckpt.bound_states.values()) == [state]
        assert state.checkpoint_selected
        replacement = bind_state(ToyState())
        assert replacement is not state
        assert replacement.calls == 2
        assert ckpt.bound_states[_sid(ToyState)] is replacement
        replacement.calls = 3
        ckpt.flush(lead_time=_h(12))
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        assert bind_state(ToyState()).calls == 3


def test_duplicate_state_type_collides(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append")
    with checkpoint as ckpt:
        first = bind_state(ToyState())
        first.calls = 1
        with pytest.raises(e2c.CheckpointStateCollision):
            bind_state(ToyState())
        with pytest.raises(e2c.CheckpointStateCollision):
            ckpt.bind(ToyState())
        assert bind_state(first) is first
        assert bind_state(first.checkpoint_dataclass) is first
        assert bind_state(OtherState()).checkpoint_enabled  # another type is independent
        entry = ckpt.flush(lead_time=_h(0))
    assert set(entry.state_ids) == {_sid(ToyState), _sid(OtherState)}
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        assert bind_state(ToyState()).calls == 1


def test_round_trip_of_supported_field_types(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="overwrite")
    with checkpoint as ckpt:
        state = bind_state(ToyState())
        state.calls = 7
        state.rng = torch.arange(4, dtype=torch.uint8)
        state.weights = np.asarray([3.0, 4.0], dtype=np.float32)
        state.delta = np.timedelta64(6, "h")
        state.tensor_device = torch.device("meta")
        state.dtype = torch.bfloat16
        state.np_dtype = np.dtype("int16")
        state.created = datetime(2025, 3, 4, 5, 6, tzinfo=timezone.utc)
        state.day = date(2025, 3, 4)
        state.window = timedelta(minutes=90)
        state.items = [False, np.float32(2.5)]
        state.pair = ("right", 2)
        state.mapping = {"value": np.int64(4)}
        state.nested.count = 2
        ckpt.write(lead_time=_h(6))

    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        restored = bind_state(ToyState())
        assert ckpt.exists
        assert ckpt.lead_time == _h(6)
        assert ckpt.commit_id is not None
        assert restored.checkpoint_state_loaded
        assert restored.calls == 7
        assert torch.equal(restored.rng, torch.arange(4, dtype=torch.uint8))
        assert restored.rng.dtype == torch.uint8
        assert np.array_equal(restored.weights, np.asarray([3.0, 4.0], dtype=np.float32))
        assert restored.weights.dtype == np.float32
        assert restored.timestamp == np.datetime64("2026-06-08T00", "h")
        assert restored.delta == np.timedelta64(6, "h")
        assert restored.tensor_device == torch.device("meta")
        assert restored.dtype == torch.bfloat16
        assert restored.np_dtype == np.dtype("int16")
        assert restored.created == datetime(2025, 3, 4, 5, 6, tzinfo=timezone.utc)
        assert restored.day == date(2025, 3, 4)
        assert restored.window == timedelta(minutes=90)
        assert restored.items == [False, 2.5]
        assert restored.pair == ("right", 2)
        assert isinstance(restored.pair, tuple)
        assert restored.mapping == {"value": 4}
        assert restored.nested == NestedState(count=2)
        assert restored.loose is None


def test_loose_nested_dataclass_restored_as_a_dict(tmp_path: Path) -> None:
    # earth2studio restores a dataclass held in a field that does not hold
    # one now (here ``object | None``, None by default) as a dict of its
    # fields; a field that holds a dataclass is restored in place.
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        state = bind_state(ToyState())
        state.loose = NestedState(count=5)
        state.nested.count = 2
        ckpt.flush(lead_time=_h(0))
    with e2c.Checkpoint("forecast", path=tmp_path):
        restored = bind_state(ToyState())
        assert restored.loose == {"label": "inner", "count": 5}
        assert restored.nested == NestedState(count=2)


def test_loose_nested_dataclass_restored_as_dataclass_restartable_difference(tmp_path: Path) -> None:
    # restartable's own Checkpoint rebuilds the dataclass from a type the
    # caller already has (docs/architecture.md, codec); the bridge does not.
    with restartable.Checkpoint("forecast", path=tmp_path) as ckpt:
        bind_state(ToyState()).loose = NestedState(count=5)
        ckpt.flush(lead_time=_h(0))
    with restartable.Checkpoint("forecast", path=tmp_path):
        restored = bind_state(ToyState())
        assert restored.loose == NestedState(count=5)


SCHEMA_CHANGES = {
    "field-added": [("calls", int, 0), ("extra", int, 0)],
    "type-changed": [("calls", float, 0.0)],
    "field-renamed": [("count", int, 0)],
    "field-removed": [],
}


@pytest.mark.parametrize("change", list(SCHEMA_CHANGES))
def test_schema_change_raises_before_restoring(tmp_path: Path, change: str) -> None:
    original = _define("EvolvingState", [("calls", int, 0)])
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        bind_state(original()).calls = 4
        ckpt.flush(lead_time=_h(6))
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        assert bind_state(original()).calls == 4

    changed = _define("EvolvingState", SCHEMA_CHANGES[change])
    instance = changed()
    before = dataclasses.asdict(instance)
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        with pytest.raises(e2c.CheckpointStateSchemaError):
            bind_state(instance)
        assert ckpt.bound_states == {}
    assert dataclasses.asdict(instance) == before


def test_nested_schema_change_raises(tmp_path: Path) -> None:
    inner = _define("EvolvingInner", [("a", int, 0)])
    outer = _define("EvolvingOuter", [("calls", int, 0), ("inner", inner, field(default_factory=inner))])
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        state = bind_state(outer())
        state.calls, state.inner.a = 7, 3
        ckpt.flush(lead_time=_h(6))

    inner2 = _define("EvolvingInner", [("a", int, 0), ("b", int, 0)])
    outer2 = _define("EvolvingOuter", [("calls", int, 0), ("inner", inner2, field(default_factory=inner2))])
    instance = outer2()
    with e2c.Checkpoint("forecast", path=tmp_path):
        with pytest.raises(e2c.CheckpointStateSchemaError):
            bind_state(instance)
    assert instance.calls == 0 and instance.inner == inner2()


# --------------------------------------------------------------------------- unsupported values


UNSUPPORTED = {
    "object": lambda: object(),
    "object-array": lambda: np.asarray([object()], dtype=object),
    "nested-object": lambda: {"bad": object()},
    "object-in-list": lambda: [1, object()],
}


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
def test_unsupported_metadata_names_the_key(tmp_path: Path, kind: str) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    with checkpoint as ckpt:
        with pytest.raises(e2c.CheckpointSerializationError, match="Invalid checkpoint metadata 'meta'"):
            ckpt.write(lead_time=_h(6), meta=UNSUPPORTED[kind]())
        assert ckpt.write_count == 0  # a failed write is not recorded
        assert not ckpt.exists
        with pytest.raises(e2c.CheckpointSerializationError, match="Invalid checkpoint metadata 'meta'"):
            ckpt.flush(meta=UNSUPPORTED[kind]())
        assert checkpoint.catalog == ()
        entry = ckpt.write(lead_time=_h(6))  # the session is still usable
    assert entry.write_count == 1
    assert entry.metadata == {"lead_time": _h(6)}


def test_unsupported_metadata_is_reported_at_commit(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, flush_interval=2)
    with checkpoint as ckpt:
        assert ckpt.write(meta=object()) is None  # deferred: nothing is encoded yet
        with pytest.raises(e2c.CheckpointSerializationError, match="Invalid checkpoint metadata 'meta'"):
            ckpt.write(lead_time=_h(6))
        assert ckpt.write_count == 1
        assert checkpoint.catalog == ()


@pytest.mark.parametrize("state_type", [BadState, ObjectArrayState])
def test_unsupported_state_value(tmp_path: Path, state_type: type) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    with checkpoint as ckpt:
        bind_state(state_type())
        with pytest.raises(e2c.CheckpointSerializationError, match="value"):
            ckpt.flush(lead_time=_h(0))
        with pytest.raises(e2c.CheckpointSerializationError):
            ckpt.write(lead_time=_h(0))
        assert ckpt.write_count == 0
    assert checkpoint.catalog == ()


def test_int_keyed_dicts_are_refused(tmp_path: Path) -> None:
    # earth2studio refuses non-string dictionary keys, in metadata and in
    # state, with CheckpointSerializationError naming the metadata key.
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    with checkpoint as ckpt:
        with pytest.raises(e2c.CheckpointSerializationError, match="Invalid checkpoint metadata 'meta'"):
            ckpt.flush(meta={1: 2}, lead_time=_h(0))
        bind_state(ToyState()).mapping = {1: "x"}
        with pytest.raises(e2c.CheckpointSerializationError, match="mapping"):
            ckpt.flush(lead_time=_h(0))
    assert checkpoint.catalog == ()


def test_int_keyed_dict_metadata_restartable_difference(tmp_path: Path) -> None:
    # CHANGELOG (codec): restartable's own Checkpoint stores int-keyed
    # dicts, tagged; the bridge refuses them as earth2studio does.
    with restartable.Checkpoint("forecast", path=tmp_path) as ckpt:
        ckpt.flush(meta={1: 2, 3: "x"}, lead_time=_h(0))
    assert restartable.Checkpoint("forecast", path=tmp_path).select(-1).metadata_value("meta") == {1: 2, 3: "x"}


def test_dataclass_metadata_refused_restartable_difference(tmp_path: Path) -> None:
    # CHANGELOG: metadata may not hold dataclasses (catalog readers may lack
    # the type; bind it as state). earth2studio stores them.
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path)
    with checkpoint as ckpt:
        with pytest.raises(e2c.CheckpointSerializationError, match="bind it with bind_checkpoint_state"):
            ckpt.flush(meta=MetadataDataclass(1))
        assert ckpt.write_count == 0
    assert checkpoint.catalog == ()


def test_dataclass_metadata_error_names_the_key(tmp_path: Path) -> None:
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        with pytest.raises(e2c.CheckpointSerializationError) as excinfo:
            ckpt.flush(meta=MetadataDataclass(1))
    assert "Invalid checkpoint metadata 'meta'" in str(excinfo.value)


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["cpu", "meta", "cuda"])
def test_restored_tensors_on_checkpoint_device(tmp_path: Path, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    with e2c.Checkpoint("forecast", path=tmp_path) as ckpt:
        bind_state(TensorState()).x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        ckpt.flush(lead_time=_h(0))

    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, device=device)
    assert checkpoint.device == torch.device(device)
    with checkpoint as ckpt:
        assert ckpt.device == torch.device(device)
        state = bind_state(TensorState())
        assert state.device == torch.device(device)
        assert state.checkpoint_device == torch.device(device)
        assert state.x.device.type == torch.device(device).type
        assert state.x.shape == (2, 3) and state.x.dtype == torch.float32
        if device != "meta":
            assert torch.equal(state.x.cpu(), torch.arange(6, dtype=torch.float32).reshape(2, 3))


# --------------------------------------------------------------------------- ranks


def test_serial_store_has_no_rank_folder(tmp_path: Path) -> None:
    serial = e2c.Checkpoint("serial", path=tmp_path / "serial", rank=0, world_size=1)
    with serial as ckpt:
        ckpt.flush(lead_time=_h(0))
    assert serial.rank_path == serial.path
    assert (serial.path / "commits").is_dir()
    assert not any(path.name.startswith("rank_") for path in serial.path.iterdir())
    assert serial.catalog[0].rank == 0 and serial.catalog[0].world_size == 1


def test_rank_detected_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(tmp_path))
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    checkpoint = e2c.Checkpoint("forecast")
    assert checkpoint.rank == 2
    assert checkpoint.world_size == 4
    assert checkpoint.rank_path == tmp_path / "checkpoints" / "forecast" / "rank_000002"
    with checkpoint as ckpt:
        entry = ckpt.flush(lead_time=_h(0))
    assert Path(entry.path).is_relative_to(checkpoint.rank_path)
    assert [path.name for path in checkpoint.path.iterdir()] == ["rank_000002"]
    assert checkpoint.catalog[0].rank == 2
    assert checkpoint.catalog[0].world_size == 4

    explicit = e2c.Checkpoint("other", path=tmp_path / "explicit", rank=1, world_size=3)
    assert explicit.rank_path == tmp_path / "explicit" / "rank_000001"


def _two_ranks(path: Path, consistent: bool) -> None:
    for rank, hours in ((0, (6, 12)), (1, (6,))):
        checkpoint = e2c.Checkpoint(
            "forecast", path=path, mode="append", rank=rank, world_size=2, consistent=consistent
        )
        with checkpoint as ckpt:
            state = bind_state(OtherState())
            for h in hours:
                state.value = h
                ckpt.write(lead_time=_h(h))


def test_independent_ranks_with_consistent_false(tmp_path: Path) -> None:
    # earth2studio's ranks are independent: each resumes from its own newest
    # row. In restartable that is consistent=False (the default agrees on a
    # common row; see the next test).
    _two_ranks(tmp_path, consistent=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rank_000000", "rank_000001"]
    for rank, hours in ((0, [6, 12]), (1, [6])):
        checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append", rank=rank, world_size=2, consistent=False)
        assert [entry.lead_time for entry in checkpoint.catalog] == [_h(h) for h in hours]
        assert {entry.rank for entry in checkpoint.catalog} == {rank}
        assert {entry.world_size for entry in checkpoint.catalog} == {2}
        assert checkpoint.select(-1).lead_time == _h(hours[-1])
        with checkpoint as ckpt:
            assert ckpt.lead_time == _h(hours[-1])
            assert ckpt.write_count == len(hours)
            assert bind_state(OtherState()).value == hours[-1]


def test_consistent_ranks_resume_together_restartable_difference(tmp_path: Path) -> None:
    # README "Multi-rank runs" / Checkpoint(consistent=True), the default:
    # every rank resumes from the newest row all ranks committed.
    _two_ranks(tmp_path, consistent=True)
    for rank in (0, 1):
        checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append", rank=rank, world_size=2)
        with checkpoint as ckpt:
            assert ckpt.lead_time == _h(6)
            assert bind_state(OtherState()).value == 6


def test_world_size_change_refused_restartable_difference(tmp_path: Path) -> None:
    # README: a store written with another world size is refused (CheckpointWorldSizeError).
    with e2c.Checkpoint("forecast", path=tmp_path, rank=0, world_size=1) as ckpt:
        ckpt.flush(lead_time=_h(0))
    with pytest.raises(e2c.CheckpointWorldSizeError):
        with e2c.Checkpoint("forecast", path=tmp_path, rank=0, world_size=2):
            pass
    assert not any(path.name.startswith("rank_") for path in tmp_path.iterdir())


def test_second_writer_is_locked_out_restartable_difference(tmp_path: Path) -> None:
    # README "Differences worth knowing": entering a session takes the writer
    # lock; reading (catalog, select) takes none.
    first = e2c.Checkpoint("forecast", path=tmp_path)
    second = e2c.Checkpoint("forecast", path=tmp_path)
    with first as ckpt:
        ckpt.flush(lead_time=_h(6))
        with pytest.raises(e2c.CheckpointLockedError):
            with second:
                pass
        assert second.select(-1).lead_time == _h(6)
    with second as ckpt:
        assert ckpt.lead_time == _h(6)


# --------------------------------------------------------------------------- NullCheckpoint


def test_null_checkpoint_is_a_no_op(tmp_path: Path) -> None:
    null = e2c.NullCheckpoint()
    with null as ckpt:
        assert ckpt is null
        assert not ckpt
        assert not ckpt.exists
        assert not ckpt.is_active
        assert ckpt.level == 0
        assert ckpt.lead_time is None
        assert ckpt.metadata == {}
        assert ckpt.labels == {}
        assert ckpt.write_count == 0
        assert ckpt.device == torch.device("cpu")
        assert ckpt.write(lead_time=_h(0)) is None
        assert ckpt.flush() is None
        assert ckpt.flush(lead_time=_h(6)) is None
        assert ckpt.write_count == 0
        assert ckpt.metadata == {}
    # It binds nothing and writes nothing anywhere.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("attribute", ["catalog", "checkpoint_device", "write_count-setter"])
def test_null_checkpoint_earth2studio_attributes(attribute: str) -> None:
    null = e2c.NullCheckpoint()
    if attribute == "catalog":
        assert null.catalog is null
        assert null.catalog.level == 0
    elif attribute == "checkpoint_device":
        assert null.checkpoint_device == torch.device("cpu")
    else:
        null.write_count = 5
        assert null.write_count == 0


# --------------------------------------------------------------------------- display


def test_print_shows_the_catalog(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append")
    text = str(checkpoint)
    assert "forecast" in text
    assert "catalog: empty" in text
    with checkpoint as ckpt:
        ckpt.write(lead_time=_h(6), member=3)
    text = str(checkpoint)
    assert "catalog: empty" not in text
    assert "member" in text
    assert "6" in text.splitlines()[-1]


def test_repr_shows_the_catalog(tmp_path: Path) -> None:
    checkpoint = e2c.Checkpoint("forecast", path=tmp_path, mode="append")
    assert 'Checkpoint("forecast")' in repr(checkpoint)
    assert "catalog: empty" in repr(checkpoint)
    with checkpoint as ckpt:
        ckpt.write(lead_time=_h(6), member=3)
    text = repr(checkpoint)
    assert "member" in text
    assert "6 hours" in text
