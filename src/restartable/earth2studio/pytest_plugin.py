"""A pytest plugin that runs a test suite with the bridge installed.

Run any earth2studio test suite (earth2studio's own, or a project's that
uses earth2studio) on restartable's engine, unchanged::

    python -m pytest -p restartable.earth2studio.pytest_plugin path/to/tests

The bridge is installed when pytest loads the plugin, before any test
module is collected, exactly as ``restartable.earth2studio.install()`` as
the first line of a script.
"""

from __future__ import annotations

from typing import Any

from . import install


def pytest_configure(config: Any) -> None:
    install()


def pytest_report_header(config: Any) -> str:
    return "restartable.earth2studio: bridge installed (earth2studio.utils.checkpoint is restartable's)"
