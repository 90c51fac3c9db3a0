"""earth2studio's ``run.deterministic``, ``diagnostic`` and ``ensemble`` on restartable's engine.

Under :func:`restartable.earth2studio.install`, ``earth2studio.run``'s
workflows are these: :mod:`restartable.workflows` with earth2studio's
behaviour where the two differ. A model that did not restore its rollout
state is rolled out again from lead time zero and every lead time is
written to the IO backend again, as earth2studio writes it
(``rewrite=True``); restartable's own workflows skip lead times already
written, since they are bitwise what was written.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .. import workflows

__all__ = ["deterministic", "diagnostic", "ensemble"]


def _as_earth2studio(workflow: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(workflow)
    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("rewrite", True)
        return workflow(*args, **kwargs)

    run.__module__ = __name__  # where it is defined (wraps copied the workflow's)
    signature = inspect.signature(workflow)
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(default=True) if p.name == "rewrite" else p for p in signature.parameters.values()]
    )
    return run


deterministic = _as_earth2studio(workflows.deterministic)
diagnostic = _as_earth2studio(workflows.diagnostic)
ensemble = _as_earth2studio(workflows.ensemble)
