"""Behaviour of component state bound with ``bind_checkpoint_state``, as the
seed checkpointing guide describes it (restore, levels, proxy properties,
collisions, schema changes, serialization errors, devices, RNG restarts)."""

from __future__ import annotations

import contextvars
import importlib.util
import json
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import run_python
from restartable import (
    Checkpoint,
    CheckpointError,
    CheckpointLateBindWarning,
    CheckpointSerializationError,
    CheckpointStateCollision,
    CheckpointStateSchemaError,
    bind_checkpoint_state,
)


@dataclass
class CounterState:
    steps: int = 0
    history: list = field(default_factory=list)


@dataclass
class TensorState:
    x: torch.Tensor | None = None
    note: str = ""


@dataclass
class OtherState:
    value: float = 0.0


@dataclass
class UnsupportedState:
    history: list = field(default_factory=list)


def sid(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Component:
    """A restart-aware component that binds its state in its constructor."""

    def __init__(self) -> None:
        self.state = bind_checkpoint_state(CounterState())

    def step(self) -> None:
        self.state.steps += 1
        self.state.history = [*self.state.history, self.state.steps]


def in_fresh_context(fn: Any) -> Any:
    """Run ``fn`` where no checkpoint has ever been created or entered."""
    return contextvars.Context().run(fn)


def save_counter(store: Path, steps: int, *, level: int = 2, mode: str = "overwrite", **metadata: Any) -> Checkpoint:
    checkpoint = Checkpoint("state", path=store, level=level, mode=mode)
    with checkpoint as session:
        state = bind_checkpoint_state(CounterState())
        for _ in range(steps):
            state.steps += 1
            state.history = [*state.history, state.steps]
            session.write(**metadata)
    return checkpoint


# --------------------------------------------------------------------------- without a checkpoint


def test_plain_proxy_without_checkpoint() -> None:
    def body() -> None:
        instance = CounterState(steps=3)
        proxy = bind_checkpoint_state(instance)
        assert proxy.checkpoint_enabled is False
        assert proxy.checkpoint_level == 0
        assert proxy.checkpoint_state_loaded is False
        assert proxy.checkpoint_metadata == {}
        assert proxy.checkpoint_lead_time is None
        assert proxy.device == torch.device("cpu")
        # Field reads and writes go to the dataclass.
        assert proxy.steps == 3
        proxy.steps = 7
        proxy.history.append("a")
        assert instance.steps == 7
        assert instance.history == ["a"]
        instance.steps = 9
        assert proxy.steps == 9
        with pytest.raises(AttributeError):
            proxy.no_such_field  # noqa: B018

    in_fresh_context(body)


@pytest.mark.parametrize(
    "name",
    [
        "checkpoint_enabled",
        "checkpoint_level",
        "checkpoint_state_loaded",
        "checkpoint_metadata",
        "checkpoint_lead_time",
        "checkpoint_write_count",
        "checkpoint_selected",
        "device",
    ],
)
def test_checkpoint_attributes_are_read_only(name: str, store: Path) -> None:
    def body() -> None:
        proxy = bind_checkpoint_state(CounterState())
        before = getattr(proxy, name)
        with pytest.raises(AttributeError):
            setattr(proxy, name, "changed")
        assert getattr(proxy, name) == before

    in_fresh_context(body)
    # Read-only inside a session as well.
    with Checkpoint("ro", path=store):
        proxy = bind_checkpoint_state(TensorState())
        with pytest.raises(AttributeError):
            setattr(proxy, name, 1)


@pytest.mark.parametrize("value", [object(), {"steps": 1}, [1, 2], CounterState, 3])
def test_non_dataclass_raises_type_error(value: Any, store: Path) -> None:
    with pytest.raises(TypeError):
        in_fresh_context(lambda: bind_checkpoint_state(value))
    with Checkpoint("bad", path=store):
        with pytest.raises(TypeError):
            bind_checkpoint_state(value)


# --------------------------------------------------------------------------- restore


def test_bound_inside_session_of_existing_row_restores_immediately(store: Path) -> None:
    save_counter(store, 3, lead_time=np.timedelta64(18, "h"), member=2)
    checkpoint = Checkpoint("state", path=store)
    with checkpoint.select(-1):
        state = bind_checkpoint_state(CounterState())
        assert state.checkpoint_enabled is True
        assert state.checkpoint_state_loaded is True
        assert state.checkpoint_selected is True
        assert state.steps == 3
        assert state.history == [1, 2, 3]
        assert state.checkpoint_metadata == {"lead_time": np.timedelta64(18, "h"), "member": 2}
        assert state.checkpoint_lead_time == np.timedelta64(18, "h")


def test_bound_in_new_session_is_not_loaded(store: Path) -> None:
    checkpoint = Checkpoint("fresh", path=store)
    with checkpoint:
        state = bind_checkpoint_state(CounterState(steps=5))
        assert state.checkpoint_enabled is True
        assert state.checkpoint_state_loaded is False
        assert state.checkpoint_selected is False
        assert state.checkpoint_metadata == {}
        assert state.checkpoint_lead_time is None
        assert state.steps == 5


def test_restore_updates_the_instance_in_place(store: Path) -> None:
    save_counter(store, 2)
    instance = CounterState()
    with Checkpoint("state", path=store):
        proxy = bind_checkpoint_state(instance)
        assert proxy.checkpoint_dataclass is instance
        assert instance.steps == 2


def test_state_bound_before_session_is_restored_late_with_warning(store: Path) -> None:
    save_counter(store, 4, lead_time=4)
    checkpoint = Checkpoint("state", path=store)
    component = Component()  # binds before any session of `checkpoint` opened
    assert component.state.steps == 0
    assert component.state.checkpoint_enabled is True
    with pytest.warns(CheckpointLateBindWarning):
        with checkpoint as session:
            assert component.state.checkpoint_state_loaded is True
            assert component.state.steps == 4
            assert component.state.history == [1, 2, 3, 4]
            assert component.state.checkpoint_lead_time == 4
            component.step()
            session.write(lead_time=5)
    with Checkpoint("state", path=store).select(-1):
        again = bind_checkpoint_state(CounterState())
        assert again.steps == 5


def test_state_bound_before_session_of_empty_catalog_is_saved_without_warning(store: Path) -> None:
    checkpoint = Checkpoint("early", path=store)
    component = Component()
    with checkpoint as session:
        assert component.state.checkpoint_state_loaded is False
        component.step()
        entry = session.write()
    assert entry.state_ids == (sid(CounterState),)
    with Checkpoint("early", path=store).select(-1):
        assert bind_checkpoint_state(CounterState()).steps == 1


# --------------------------------------------------------------------------- levels


def test_level_zero_saves_no_state(store: Path) -> None:
    checkpoint = Checkpoint("l0", path=store, level=0)
    with checkpoint as session:
        state = bind_checkpoint_state(CounterState())
        assert state.checkpoint_level == 0
        state.steps = 10
        entry = session.write(lead_time=1)
    assert entry.state_ids == ()
    assert checkpoint.catalog[0].state_ids == ()
    assert checkpoint.catalog[0].level == 0
    # Metadata is still recorded at level 0.
    assert checkpoint.catalog[0].lead_time == 1
    with Checkpoint("l0", path=store, level=0).select(-1):
        restored = bind_checkpoint_state(CounterState())
        assert restored.checkpoint_state_loaded is False
        assert restored.steps == 0


def test_level_zero_restores_nothing_from_a_level_two_row(store: Path) -> None:
    save_counter(store, 3, level=2)
    with Checkpoint("state", path=store, level=0).select(-1) as session:
        assert session.exists
        state = bind_checkpoint_state(CounterState())
        assert state.checkpoint_state_loaded is False
        assert state.steps == 0


@pytest.mark.parametrize("level", [1, 2])
def test_levels_one_and_two_save_and_restore(store: Path, level: int) -> None:
    checkpoint = save_counter(store, 3, level=level)
    entry = checkpoint.catalog[-1]
    assert entry.level == level
    assert entry.state_ids == (sid(CounterState),)
    with Checkpoint("state", path=store, level=level).select(-1):
        state = bind_checkpoint_state(CounterState())
        assert state.checkpoint_level == level
        assert state.checkpoint_state_loaded is True
        assert state.steps == 3
        assert state.history == [1, 2, 3]


# --------------------------------------------------------------------------- proxy properties


def test_proxy_session_properties(store: Path) -> None:
    checkpoint = Checkpoint("props", path=store, flush_interval=2, level=1, mode="append")
    with checkpoint as session:
        state = bind_checkpoint_state(CounterState())
        assert state.checkpoint_level == 1
        assert state.checkpoint_flush_interval == 2
        assert state.checkpoint_write_count == 0
        assert state.checkpoint_selected is False
        due = []
        for _ in range(5):
            due.append(state.checkpoint_is_flush_due)
            session.write()
            assert state.checkpoint_write_count == session.write_count
        assert due == [False, True, False, True, False]
        assert state.checkpoint_write_count == 5
    with Checkpoint("props", path=store, flush_interval=2, level=1).select(-1):
        state = bind_checkpoint_state(CounterState())
        assert state.checkpoint_selected is True
        assert state.checkpoint_write_count == 4
        assert state.checkpoint_is_flush_due is False


def test_flush_due_is_false_without_interval(store: Path) -> None:
    with Checkpoint("props", path=store, flush_interval=None) as session:
        state = bind_checkpoint_state(CounterState())
        assert state.checkpoint_flush_interval is None
        for _ in range(3):
            assert state.checkpoint_is_flush_due is False
            session.write()


# --------------------------------------------------------------------------- identity


def test_two_instances_of_same_type_collide(store: Path) -> None:
    with Checkpoint("col", path=store) as session:
        bind_checkpoint_state(CounterState())
        with pytest.raises(CheckpointStateCollision) as info:
            bind_checkpoint_state(CounterState())
        assert isinstance(info.value, CheckpointError)
        assert "CounterState" in str(info.value)
        # The first binding is still the one that is saved.
        entry = session.write()
        assert entry.state_ids == (sid(CounterState),)


def test_distinct_dataclass_types_coexist(store: Path) -> None:
    checkpoint = Checkpoint("two", path=store)
    with checkpoint as session:
        counter = bind_checkpoint_state(CounterState())
        other = bind_checkpoint_state(OtherState())
        counter.steps = 2
        other.value = 1.5
        entry = session.write()
    assert set(entry.state_ids) == {sid(CounterState), sid(OtherState)}
    with Checkpoint("two", path=store).select(-1):
        assert bind_checkpoint_state(OtherState()).value == 1.5
        assert bind_checkpoint_state(CounterState()).steps == 2


def test_component_reused_across_sessions_keeps_being_saved(store: Path) -> None:
    checkpoint = Checkpoint("reuse", path=store, mode="append")
    with checkpoint as session:
        component = Component()
        component.step()
        session.write(lead_time=1)
    # Same component, next session: no warning, no collision, still saved.
    with checkpoint as session:
        assert component.state.checkpoint_enabled is True
        component.step()
        entry = session.write(lead_time=2)
        assert entry.state_ids == (sid(CounterState),)
    with Checkpoint("reuse", path=store).select(-1):
        assert bind_checkpoint_state(CounterState()).steps == 2
    # A fresh instance of the same component in a later session replaces the old one.
    with checkpoint as session:
        fresh = Component()
        assert fresh.state.checkpoint_state_loaded is True
        assert fresh.state.steps == 2
        fresh.step()
        component.state.steps = 1000  # the old, replaced instance is no longer saved
        entry = session.write(lead_time=3)
        assert entry.state_ids == (sid(CounterState),)
    with Checkpoint("reuse", path=store).select(-1):
        restored = bind_checkpoint_state(CounterState())
        assert restored.steps == 3
        assert restored.history == [1, 2, 3]


# --------------------------------------------------------------------------- schema changes


SCHEMA_V1 = """
from dataclasses import dataclass

@dataclass
class ModelState:
    step: int = 0
"""

SCHEMA_VARIANTS = {
    "extra_field": """
from dataclasses import dataclass

@dataclass
class ModelState:
    step: int = 0
    extra: float = 0.0
""",
    "changed_type": """
from dataclasses import dataclass

@dataclass
class ModelState:
    step: str = ""
""",
    "renamed_field": """
from dataclasses import dataclass

@dataclass
class ModelState:
    count: int = 0
""",
}


def load_module(monkeypatch: pytest.MonkeyPatch, path: Path, name: str, source: str) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", sorted(SCHEMA_VARIANTS))
def test_schema_change_raises_schema_error(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    name = f"restartable_schema_{variant}"
    v1 = load_module(monkeypatch, tmp_path / "v1" / f"{name}.py", name, SCHEMA_V1)
    checkpoint = Checkpoint("schema", path=store)
    with checkpoint as session:
        state = bind_checkpoint_state(v1.ModelState())
        state.step = 7
        session.write()
    v2 = load_module(monkeypatch, tmp_path / "v2" / f"{name}.py", name, SCHEMA_VARIANTS[variant])
    assert v2.ModelState is not v1.ModelState
    assert f"{v2.ModelState.__module__}.{v2.ModelState.__qualname__}" == f"{name}.ModelState"
    with Checkpoint("schema", path=store).select(-1):
        with pytest.raises(CheckpointStateSchemaError) as info:
            bind_checkpoint_state(v2.ModelState())
    assert isinstance(info.value, ValueError)
    assert "ModelState" in str(info.value)
    # The row is untouched and still restores into the original definition.
    load_module(monkeypatch, tmp_path / "v3" / f"{name}.py", name, SCHEMA_V1)
    v3 = sys.modules[name]
    with Checkpoint("schema", path=store).select(-1):
        assert bind_checkpoint_state(v3.ModelState()).step == 7


def test_schema_change_is_detected_across_processes(store: Path, tmp_path: Path) -> None:
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    writer = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(module_dir)!r})
        from pathlib import Path
        Path({str(module_dir / "proc_schema_mod.py")!r}).write_text(
            "from dataclasses import dataclass\\n@dataclass\\nclass S:\\n    a: int = 0\\n")
        from proc_schema_mod import S
        from restartable import Checkpoint, bind_checkpoint_state
        with Checkpoint("proc", path={str(store)!r}) as session:
            s = bind_checkpoint_state(S())
            s.a = 3
            session.write()
        """
    )
    run_python(writer)
    reader = textwrap.dedent(
        f"""
        import sys
        sys.dont_write_bytecode = True
        sys.path.insert(0, {str(module_dir)!r})
        from pathlib import Path
        Path({str(module_dir / "proc_schema_mod.py")!r}).write_text(
            "from dataclasses import dataclass\\n@dataclass\\nclass S:\\n    a: int = 0\\n    b: list = None\\n")
        import importlib; importlib.invalidate_caches()
        from proc_schema_mod import S
        from restartable import Checkpoint, CheckpointStateSchemaError, bind_checkpoint_state
        with Checkpoint("proc", path={str(store)!r}).select(-1):
            try:
                bind_checkpoint_state(S())
            except CheckpointStateSchemaError as exc:
                print("SCHEMA", isinstance(exc, ValueError))
            else:
                print("RESTORED")
        """
    )
    # Drop any cached bytecode of the first definition.
    for cache in module_dir.glob("__pycache__"):
        for pyc in cache.iterdir():
            pyc.unlink()
    assert run_python(reader).stdout.strip() == "SCHEMA True"


def test_future_annotations_do_not_change_the_schema(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "restartable_schema_future"
    v1 = load_module(monkeypatch, tmp_path / "a" / f"{name}.py", name, SCHEMA_V1)
    with Checkpoint("future", path=store) as session:
        bind_checkpoint_state(v1.ModelState(step=4))
        session.write()
    v2 = load_module(
        monkeypatch, tmp_path / "b" / f"{name}.py", name, "from __future__ import annotations\n" + SCHEMA_V1
    )
    with Checkpoint("future", path=store).select(-1):
        assert bind_checkpoint_state(v2.ModelState()).step == 4


# --------------------------------------------------------------------------- serialization


def test_unsupported_value_raises_and_commits_nothing(store: Path) -> None:
    save_counter(store, 1, mode="append")
    checkpoint = Checkpoint("state", path=store, mode="append")
    before = [e.commit_id for e in checkpoint.catalog]
    with checkpoint as session:
        state = bind_checkpoint_state(UnsupportedState())
        state.history = [1, 2.0, "three", object()]
        with pytest.raises(CheckpointSerializationError) as info:
            session.write(lead_time=2)
    error = info.value
    assert isinstance(error, TypeError)
    assert "state.history[3]" in str(error)
    assert error.path is not None and error.path.startswith("state.history[3]")
    assert [e.commit_id for e in checkpoint.catalog] == before
    assert len(list((store / "commits").iterdir())) == len(before)
    assert not [p for p in store.iterdir() if p.name.startswith(".staging-")]


def test_unsupported_nested_value_names_the_path(store: Path) -> None:
    with Checkpoint("nested", path=store) as session:
        state = bind_checkpoint_state(UnsupportedState())
        state.history = [{"ok": 1}, {"rng": (1, lambda: None)}]
        with pytest.raises(CheckpointSerializationError) as info:
            session.write()
    assert "state.history[1]['rng'][1]" in str(info.value)
    assert Checkpoint("nested", path=store).catalog == ()


def test_unsupported_metadata_raises_and_commits_nothing(store: Path) -> None:
    checkpoint = Checkpoint("meta", path=store)
    with checkpoint as session:
        with pytest.raises(CheckpointSerializationError) as info:
            session.write(lead_time=1, handle=object())
    assert "handle" in str(info.value)
    assert checkpoint.catalog == ()


# --------------------------------------------------------------------------- tensors and devices


def test_tensors_round_trip_on_checkpoint_device(store: Path) -> None:
    original = torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5
    with Checkpoint("tensors", path=store, device="cpu") as session:
        state = bind_checkpoint_state(TensorState())
        assert state.device == torch.device("cpu")
        state.x = original.clone().to(state.device)
        state.note = "saved"
        session.write()
    with Checkpoint("tensors", path=store, device="cpu").select(-1):
        restored = bind_checkpoint_state(TensorState())
        assert isinstance(restored.x, torch.Tensor)
        assert restored.x.device == torch.device("cpu")
        assert restored.x.dtype == torch.float32
        assert torch.equal(restored.x, original)
        assert restored.note == "saved"
    # Restored tensors are placed on the device of the restoring checkpoint.
    with Checkpoint("tensors", path=store, device="meta").select(-1):
        on_meta = bind_checkpoint_state(TensorState())
        assert on_meta.device == torch.device("meta")
        assert on_meta.x.device == torch.device("meta")
        assert on_meta.x.shape == (3, 4)
        assert on_meta.x.dtype == torch.float32


def test_tensor_state_of_various_dtypes(store: Path) -> None:
    values = {
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "int64": torch.arange(5),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "strided": torch.arange(16.0).reshape(4, 4).t(),
    }
    with Checkpoint("dtypes", path=store) as session:
        state = bind_checkpoint_state(UnsupportedState())
        state.history = list(values.values())
        session.write()
    with Checkpoint("dtypes", path=store).select(-1):
        restored = bind_checkpoint_state(UnsupportedState()).history
    for got, want in zip(restored, values.values(), strict=True):
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        assert torch.equal(got, want)


# --------------------------------------------------------------------------- the seed guide's example


NOISE_MODULE = """
from dataclasses import dataclass

import torch

from restartable import bind_checkpoint_state


@dataclass
class NoiseState:
    rng_state: torch.Tensor | None = None


def add_noise(x, generator):
    return x + torch.randn(x.shape, generator=generator)


class NoisePerturbation:
    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.checkpoint = bind_checkpoint_state(NoiseState())

        if self.checkpoint.rng_state is not None:
            self.generator.set_state(self.checkpoint.rng_state)

    def __call__(self, x):
        y = add_noise(x, generator=self.generator)
        if self.checkpoint.checkpoint_level >= 1:
            self.checkpoint.rng_state = self.generator.get_state()
        return y
"""

NOISE_RUN = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import torch
from noise_component import NoisePerturbation
from restartable import Checkpoint

store, out, phase = sys.argv[2], sys.argv[3], sys.argv[4]
nsteps = 6
x = torch.zeros(4, 3)
if phase == "full":
    p = NoisePerturbation(torch.Generator().manual_seed(1234))
    np.save(out, np.stack([p(x).numpy() for _ in range(nsteps)]))
    sys.exit(0)

checkpoint = Checkpoint("noise", path=store)
with checkpoint as ckpt:
    p = NoisePerturbation(torch.Generator().manual_seed(1234))
    start = 0 if ckpt.lead_time is None else ckpt.lead_time + 1
    noise = []
    for step in range(start, nsteps):
        noise.append(p(x).numpy())
        ckpt.write(lead_time=step)
        if phase == "crash" and step == 2:
            # Die without any cleanup, as a pre-empted job would.
            np.save(out, np.stack(noise))
            os._exit(17)
    np.save(out, np.stack(noise))
    print(json.dumps({"start": start, "loaded": p.checkpoint.checkpoint_state_loaded}))
"""


def test_seed_noise_perturbation_resumes_identical_noise_across_processes(store: Path, tmp_path: Path) -> None:
    (tmp_path / "noise_component.py").write_text(NOISE_MODULE)
    script = tmp_path / "noise_run.py"
    script.write_text(NOISE_RUN)

    def run(phase: str, out: str, check: bool = True) -> Any:
        return run_python(
            "import runpy, sys; sys.argv = ['noise_run.py', *sys.argv[1:]]; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')",
            str(tmp_path),
            str(store),
            str(tmp_path / out),
            phase,
            check=check,
            warm=True,
        )

    run("full", "full.npy")
    full = np.load(tmp_path / "full.npy")
    crashed = run("crash", "part1.npy", check=False)
    assert crashed.returncode == 17, crashed.stderr
    part1 = np.load(tmp_path / "part1.npy")
    resumed = run("resume", "part2.npy")
    info = json.loads(resumed.stdout)
    assert info == {"start": 3, "loaded": True}
    part2 = np.load(tmp_path / "part2.npy")

    assert part1.shape[0] == 3 and part2.shape[0] == 3
    np.testing.assert_array_equal(part1, full[:3])
    # The restart continues the uninterrupted run's noise bit for bit...
    np.testing.assert_array_equal(part2, full[3:])
    # ...which a freshly seeded generator would not have done.
    assert not np.array_equal(part2[0], full[0])
    catalog = Checkpoint("noise", path=store).catalog
    assert len(catalog) == 1
    assert catalog[0].lead_time == 5
    assert catalog[0].state_ids == ("noise_component.NoiseState",)


def test_seed_noise_perturbation_in_process(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_module(monkeypatch, tmp_path / "noise_component.py", "noise_component", NOISE_MODULE)
    x = torch.zeros(5)
    reference = module.NoisePerturbation(torch.Generator().manual_seed(7))
    expected = [reference(x) for _ in range(4)]
    with Checkpoint("noise", path=store) as ckpt:
        p = module.NoisePerturbation(torch.Generator().manual_seed(7))
        assert not p.checkpoint.checkpoint_state_loaded
        for step in range(2):
            assert torch.equal(p(x), expected[step])
            ckpt.write(lead_time=step)
    with Checkpoint("noise", path=store).select(-1):
        p = module.NoisePerturbation(torch.Generator().manual_seed(7))
        assert p.checkpoint.checkpoint_state_loaded
        assert torch.equal(p(x), expected[2])
        assert torch.equal(p(x), expected[3])
