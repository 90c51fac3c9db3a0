"""The row manifest: a self-checksummed JSON file listing a row's files.

On disk a manifest is a JSON object with exactly two keys, written in this
order::

    {"checksum":"<xxh3_64 of BODY>","manifest":BODY}

``BODY`` is the canonical JSON of the manifest body. A reader checks the
checksum over the exact bytes of ``BODY`` before parsing it, so a flipped
byte anywhere in the manifest (a digit of a lead time, a file size) is
caught, and the file stays plain JSON for any other tool.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .._text import shown
from .files import checksum_bytes

FORMAT = "restartable-row"
# The newest row format this library reads and writes: 2 added packs
# (restartable.store.packs). A row without packs is still written as 1.
FORMAT_VERSION = 2
UNPACKED_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# A manifest of a million payloads is about 100 MB; anything far beyond is
# not a manifest, and reading it would only exhaust memory.
MAX_MANIFEST_BYTES = 1 << 30

_PREFIX = b'{"checksum":"'
_MIDDLE = b'","manifest":'
_SUFFIX = b"}\n"
_HEX16 = re.compile(rb"[0-9a-f]{16}")


class ManifestError(Exception):
    """The manifest is missing, unparsable, or fails its checksum."""


def dump_manifest(body: dict[str, Any]) -> bytes:
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode("ascii")
    return _PREFIX + checksum_bytes(data).encode("ascii") + _MIDDLE + data + _SUFFIX


def load_manifest(raw: bytes, kind: str = FORMAT, version: int = FORMAT_VERSION) -> dict[str, Any]:
    """Check and parse a manifest whose body has ``format == kind``.

    The same self-checksummed framing serves every small record the
    library writes (rows, remote saves, links between attempts).
    """
    head = len(_PREFIX) + 16 + len(_MIDDLE)
    if not (raw.startswith(_PREFIX) and raw.endswith(_SUFFIX) and raw[head - len(_MIDDLE) : head] == _MIDDLE):
        raise ManifestError("not a restartable manifest (wrong framing; truncated?)")
    expected = raw[len(_PREFIX) : len(_PREFIX) + 16]
    if not _HEX16.fullmatch(expected):
        raise ManifestError("checksum field is damaged")
    data = raw[head : len(raw) - len(_SUFFIX)]
    actual = checksum_bytes(data)
    if actual.encode("ascii") != expected:
        raise ManifestError(f"checksum {actual} does not match the recorded {expected.decode('ascii')}")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # A matching checksum proves integrity, not authorship: anyone can
        # sign a manifest, for example one nested a thousand levels deep.
        raise ManifestError(f"unparsable JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(body, dict) or body.get("format") != kind:
        raise ManifestError(f"not a {kind} record")
    found = body.get("format_version")
    if type(found) is not int or found < 1:
        raise ManifestError(f"format_version {shown(found)} is not a positive integer")
    if found > version:
        raise ManifestError(
            f"written in format version {found}, newer than this restartable understands ({version}); "
            "upgrade restartable"
        )
    return body
