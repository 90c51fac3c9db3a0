"""A missing optional dependency is named with the extra that installs it, before any work starts.

The import-time checks run in fresh processes in which the modules are made
really missing: an import hook installed before anything else raises
:class:`ModuleNotFoundError` for them, as the import system does for a
package that is not installed. The rest runs in this process, with the
module set to ``None`` in ``sys.modules`` (the import system's own way to
make an import fail).
"""

from __future__ import annotations

import pickle
import re
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_python
from restartable import Checkpoint
from restartable._extras import EXTRAS, MissingExtraError, import_optional, missing, require

ROOT = Path(__file__).resolve().parent.parent

# Makes the modules named in argv[1] missing in this process, before anything imports them.
BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = set(sys.argv[1].split())

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    """
)

# Imports restartable (which must work), then runs argv[2]; prints what it raised.
IMPORT_THEN = BLOCK + textwrap.dedent(
    """
    import restartable
    from restartable import Checkpoint

    try:
        exec(sys.argv[2])
    except ImportError as exc:
        print(type(exc).__name__, isinstance(exc, ModuleNotFoundError), exc.name)
        print(exc)
    else:
        print("no error")
    """
)


def _raised(blocked: str, statement: str) -> list[str]:
    done = run_python(IMPORT_THEN, blocked, statement, timeout=60)
    return done.stdout.splitlines()


@pytest.mark.parametrize(
    ("blocked", "statement", "name", "message"),
    [
        (
            "torch",
            "import restartable.workflows",
            "torch",
            "restartable.workflows needs torch, which is not installed: pip install 'restartable[workflows]'",
        ),
        (
            "xarray",
            "from restartable.workflows import ensemble",
            "xarray",
            "restartable.workflows needs xarray, which is not installed: pip install 'restartable[workflows]'",
        ),
        (
            "torch xarray",
            "import restartable.components",
            "torch",
            "restartable.components needs torch and xarray, which are not installed: "
            "pip install 'restartable[workflows]'",
        ),
        (
            "fsspec s3fs",
            "from restartable.remote import RemoteCheckpoint",
            "fsspec",
            "restartable.remote.RemoteCheckpoint needs fsspec, which is not installed: "
            "pip install 'restartable[remote]'",
        ),
        (
            "earth2studio",
            "import restartable.earth2studio; restartable.earth2studio.install()",
            "earth2studio",
            "restartable.earth2studio.install() needs earth2studio, which is not installed: "
            "pip install 'restartable[earth2studio]'",
        ),
    ],
    ids=["workflows-torch", "workflows-xarray", "components", "remote", "earth2studio"],
)
def test_a_feature_names_the_missing_module_and_its_extra(
    blocked: str, statement: str, name: str, message: str
) -> None:
    assert _raised(blocked, statement) == [f"MissingExtraError True {name}", message]


def test_import_restartable_and_a_checkpoint_need_no_optional_module(tmp_path: Path) -> None:
    statement = (
        "import numpy as np\n"
        f"with Checkpoint('run', path={str(tmp_path / 'store')!r}) as ckpt:\n"
        "    ckpt.write(lead_time=1, state={'x': np.arange(3)})\n"
        "print(Checkpoint('run', path=" + repr(str(tmp_path / "store")) + ").select(-1).lead_time)\n"
        # The parts of the library that need none of them still import.
        "import restartable.cli, restartable.demo, restartable.remote.sync, restartable.iterators"
    )
    blocked = " ".join(sorted({module for modules in EXTRAS.values() for module in modules}))
    assert _raised(blocked, statement) == ["1", "no error"]


def test_demo_without_xarray_exits_2_with_one_line_before_starting_a_run(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = run_python(
        BLOCK + "from restartable.cli import main\nsys.exit(main(sys.argv[2:]))",
        "xarray",
        "demo",
        "--workdir",
        str(workdir),
        "--members",
        "2",
        check=False,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "restartable demo: error: the demo needs xarray, which is not installed: pip install 'restartable[workflows]'"
    ]
    # The working directory is prepared just before the first child starts: no run began.
    assert not workdir.exists()


def test_demo_from_python_checks_before_its_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from restartable.demo import run_demo

    for module in ("torch", "xarray", "zarr"):
        monkeypatch.setitem(sys.modules, module, None)
    workdir = tmp_path / "demo"
    with pytest.raises(ModuleNotFoundError) as raised:
        run_demo(members=2, steps=2, workdir=workdir)
    assert str(raised.value) == (
        "the demo needs torch, xarray and zarr, which are not installed: pip install 'restartable[workflows]'"
    )
    assert raised.value.name == "torch"
    assert not workdir.exists()


def test_zarr_io_without_zarr_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("xarray")
    from restartable.components import ZarrIO

    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(ImportError) as raised:
        ZarrIO(tmp_path / "out.zarr")
    assert str(raised.value) == "ZarrIO needs zarr, which is not installed: pip install 'restartable[workflows]'"
    assert not (tmp_path / "out.zarr").exists()


def test_a_url_without_its_filesystem_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(ModuleNotFoundError) as raised:
        Checkpoint("run", path="s3://bucket/runs")
    assert str(raised.value) == (
        "s3://bucket/runs needs s3fs, which is not installed: pip install 'restartable[remote]'"
    )
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(ModuleNotFoundError, match=re.escape("s3://bucket/runs needs fsspec, which is not")):
        Checkpoint("run", path="s3://bucket/runs")


def test_the_command_line_reports_a_missing_filesystem_library_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from restartable.cli import main

    monkeypatch.setitem(sys.modules, "s3fs", None)
    assert main(["ls", "s3://bucket/runs"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "restartable ls: error: s3://bucket/runs needs s3fs, which is not installed: pip install 'restartable[remote]'"
    ]


# --------------------------------------------------------------------------- the helpers themselves


def test_require_names_every_missing_module_and_catches_as_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "xarray", None)
    monkeypatch.setitem(sys.modules, "zarr", None)
    assert missing("json", "torch", "xarray") == ["torch", "xarray"]
    require("json", extra=None, feature="nothing")  # installed: no error
    with pytest.raises(ImportError) as raised:
        require("json", "torch", "xarray", "zarr", extra="workflows", feature="a forecast")
    assert isinstance(raised.value, ModuleNotFoundError)
    assert raised.value.name == "torch"
    assert str(raised.value) == (
        "a forecast needs torch, xarray and zarr, which are not installed: pip install 'restartable[workflows]'"
    )


def test_a_package_that_no_extra_brings_is_named_itself() -> None:
    with pytest.raises(MissingExtraError) as raised:
        require("restartable_absent", extra=None, feature="gs://bucket/runs")
    assert str(raised.value) == (
        "gs://bucket/runs needs restartable_absent, which is not installed: pip install restartable_absent"
    )


def test_an_unknown_extra_is_refused() -> None:
    with pytest.raises(ValueError) as raised:
        require("json", extra="workflow", feature="a forecast")
    assert str(raised.value) == f"restartable has no extra 'workflow'; its extras are {', '.join(sorted(EXTRAS))}"
    assert "workflows" in EXTRAS


def test_import_optional_reports_only_the_module_itself_as_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert import_optional("json", extra=None, feature="x").dumps([1]) == "[1]"
    with pytest.raises(MissingExtraError, match=r"^x needs restartable_no_such_module, "):
        import_optional("restartable_no_such_module", extra=None, feature="x")
    # Installed, but one of its own dependencies is missing: that error, naming that dependency.
    (tmp_path / "restartable_broken_plugin.py").write_text("import restartable_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as raised:
        import_optional("restartable_broken_plugin", extra=None, feature="x")
    assert not isinstance(raised.value, MissingExtraError)
    assert raised.value.name == "restartable_no_such_dependency"


def test_the_error_survives_pickling() -> None:
    error = MissingExtraError(["torch", "xarray"], "workflows", "restartable.workflows")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.name, copy.modules, copy.extra) == (
        MissingExtraError,
        str(error),
        "torch",
        ("torch", "xarray"),
        "workflows",
    )


def test_the_extras_table_is_pyprojects() -> None:
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    declared.pop("dev")
    # Every distribution these extras install is imported under its own name.
    packages = {
        extra: tuple(re.match(r"[A-Za-z0-9_.-]+", requirement)[0] for requirement in requirements)
        for extra, requirements in declared.items()
    }
    assert packages == EXTRAS
