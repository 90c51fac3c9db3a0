"""Where a catalog lives by default.

With ``world_size > 1`` each rank writes its rows under ``rank_<rank:06d>/``
of the store: :func:`restartable.store._layout.rank_folder_name`, the one
place that spells that name.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_checkpoint_path(name: str) -> Path:
    """``$RESTARTABLE_CACHE/checkpoints/<name>``, else ``~/.cache/restartable/checkpoints/<name>``."""
    base = os.environ.get("RESTARTABLE_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "restartable"
    return root / "checkpoints" / name
