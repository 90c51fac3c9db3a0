"""Every example in restartable's docstrings runs as shown (``doctest``), one module at a time.

Modules are found by their source text (a ``>>>`` line), so that collecting
these tests imports nothing; each module's examples run in a fresh context
(``bind_checkpoint_state`` keeps a state for the most recently created
Checkpoint of its context, so one module's examples would otherwise change
what the next one's show), in a temporary working directory, with
``tempfile`` folders under ``tmp_path``.
"""

from __future__ import annotations

import contextvars
import doctest
import importlib
import io
import tempfile
from pathlib import Path

import pytest

import restartable

PACKAGE = Path(restartable.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(
    _module_name(path)
    for path in PACKAGE.rglob("*.py")
    if any(line.lstrip().startswith(">>> ") for line in path.read_text(encoding="utf-8").splitlines())
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_as_shown(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = importlib.import_module(name)
    tests = [test for test in doctest.DocTestFinder().find(module, name) if test.examples]
    assert tests, f"{name} has '>>> ' lines but doctest finds no example in it"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()

    def run_all() -> None:
        for test in tests:
            runner.run(test, out=report.write)

    contextvars.Context().run(run_all)
    results = runner.summarize(verbose=False)
    # Examples marked ``+SKIP`` (those that need an object store) are not attempted.
    assert results.failed == 0, (
        f"{results.failed} of {results.attempted} examples in {name} failed:\n{report.getvalue()}"
    )
