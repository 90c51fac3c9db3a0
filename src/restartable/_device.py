"""Device names: :func:`resolve_device`, with no dependency on the rest of restartable.

Kept apart so that :mod:`restartable.state` (the proxy's ``device``) and the
catalog (:mod:`restartable.catalog`) share it without importing each other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["resolve_device"]


def resolve_device(device: Any) -> Any:
    """A ``torch.device`` when torch is installed, else the device's name."""
    try:
        import torch
    except ImportError:
        return str(device)
    return torch.device(device)
