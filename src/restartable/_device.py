"""Device names: :func:`resolve_device` and :func:`check_device`, with no dependency on the rest of restartable.

Kept apart so that :mod:`restartable.state` (the proxy's ``device``) and the
catalog (:mod:`restartable.catalog`) share it without importing each other.
Neither imports torch unless it is installed (and ``check_device("cpu")``
not even then): ``import restartable`` needs numpy only.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from typing import Any

__all__ = ["check_device", "resolve_device"]

# What check_device accepts, for its messages.
ACCEPTED_DEVICES = "'cpu', 'cuda', 'cuda:<index>', 'meta', another torch device available here, or a torch.device"


def resolve_device(device: Any) -> Any:
    """A ``torch.device`` when torch is installed, else the device's name."""
    try:
        import torch
    except ImportError:
        return str(device)
    return torch.device(device)


def check_device(device: Any) -> None:
    """Refuse a device that restored tensors could not be placed on in this process.

    Called where a device is given (``Checkpoint(device=...)``), so that a
    typo or a GPU that is not there fails at once with a message naming the
    value, rather than at the first restore, where a failure would look like
    a damaged row. ``"cpu"`` and ``"meta"`` are always available; any other
    device type needs torch and its backend's ``is_available()`` (for
    ``"cuda"``, ``torch.cuda.is_available()``), and an index below the
    backend's ``device_count()``.

    Raises
    ------
    ValueError
        The device is not a device name, or is not usable here; the message
        names the value and what is accepted.

    Examples
    --------
    >>> check_device("cpu")
    >>> check_device("bogus")
    Traceback (most recent call last):
    ...
    ValueError: device 'bogus' is not a device: use 'cpu', 'cuda', 'cuda:<index>', 'meta', ...
    """
    if type(device) is str and device == "cpu":
        return  # the default: nothing to import
    torch = sys.modules.get("torch")
    if torch is None and importlib.util.find_spec("torch") is not None:
        import torch
    if torch is None:
        if type(device) is str and re.fullmatch(r"cpu(:[0-9]+)?", device):
            return
        raise ValueError(
            f"device {device!r} needs torch, which is not installed: use device='cpu' (the default), "
            "or install torch for other devices"
        )
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ValueError(f"device must be a str, an int or a torch.device, got {device!r}: use {ACCEPTED_DEVICES}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        if isinstance(device, int):  # an index on the current accelerator: torch says why there is none
            raise ValueError(f"device {device!r} is not usable here ({exc}); use {ACCEPTED_DEVICES}") from None
        raise ValueError(f"device {device!r} is not a device: use {ACCEPTED_DEVICES}") from None
    if parsed.type in ("cpu", "meta"):
        return
    backend = getattr(torch, parsed.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        why = (
            f"torch.{parsed.type}.is_available() is False (no device visible to this process, or torch was "
            f"built without {parsed.type} support)"
            if callable(is_available)
            else f"torch has no {parsed.type} backend that reports being available"
        )
        raise ValueError(f"device {device!r} is not usable here: {why}; use device='cpu', or run where one is")
    device_count = getattr(backend, "device_count", None)
    if parsed.index is not None and callable(device_count) and parsed.index >= device_count():
        count = device_count()
        raise ValueError(
            f"device {device!r} is not usable here: this process sees {count} {parsed.type} device(s), "
            f"{parsed.type}:0 to {parsed.type}:{count - 1}; use one of those, or device='cpu'"
        )
