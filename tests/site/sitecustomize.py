"""Start-up hook of every Python process the test suite starts: earth2studio imports in seconds.

``conftest`` puts this directory on ``PYTHONPATH``, so Python's ``site``
imports this module at start-up in each child process of a test (never in
a user's process: it is not part of the package).

Why: earth2studio's optional-dependency helpers
(``earth2studio.utils.imports``) call ``inspect.stack()`` once per decorated
class or function at import time, only to read ``stack()[1].filename``.
``inspect.stack()`` builds source context for every frame and, for each of
the import machinery's frozen frames, scans all of ``sys.modules`` (some
3,000 entries once torch is loaded). That makes ``import earth2studio.run``
cost 30 s of CPU here, of which 20 s is that scan; a suite that starts a
dozen such processes spends minutes on it.

What: when (and only if) a process imports ``earth2studio``, ``inspect.stack``
is wrapped so that a call *from* ``earth2studio.utils.imports`` gets the
same frames with the same ``filename``, ``lineno`` and ``function`` but no
source context, which that module never reads. Every other caller gets
``inspect.stack()`` unchanged. Nothing is imported at start-up, so a child
that checks what is in ``sys.modules`` sees what a plain interpreter has.
"""

from __future__ import annotations

import sys

_EARTH2STUDIO_HELPERS = "earth2studio.utils.imports"


class _FirstEarth2StudioImport:
    """A meta-path entry that finds nothing: it wraps ``inspect.stack`` on first sight of earth2studio.

    It stays on ``sys.meta_path`` afterwards (a string comparison per import):
    the import system and the earth2studio bridge iterate that very list, and
    an entry removing itself would make them skip the finder after it.
    """

    def __init__(self) -> None:
        self.wrapped = False

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "earth2studio" and not self.wrapped:
            self.wrapped = True
            _wrap_inspect_stack()
        return None


def _wrap_inspect_stack() -> None:
    import inspect

    def stack(context: int = 1) -> list[inspect.FrameInfo]:
        caller = sys._getframe(1)
        if caller.f_globals.get("__name__") != _EARTH2STUDIO_HELPERS:
            return inspect.getouterframes(caller, context)
        frames = []
        frame = caller
        while frame is not None:
            code = frame.f_code
            frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
            frame = frame.f_back
        return frames

    stack.__doc__ = inspect.stack.__doc__
    inspect.stack = stack


sys.meta_path.insert(0, _FirstEarth2StudioImport())
