"""Catalog entries: :class:`CheckpointEntry`, read from a committed row's manifest.

Also the value helpers of the session: :func:`normalize_metadata` (metadata
as the catalog records it: ``lead_time`` given as a one-element array or
tensor becomes its element, object arrays are refused) and
:func:`fingerprint` (a state record's content, to compare what it wrote
with what it restored).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import codec
from .._text import shown
from ..errors import CheckpointCorruptError, CheckpointSerializationError
from ..store import RowPath

if TYPE_CHECKING:
    from ..store import Row


@dataclasses.dataclass(frozen=True)
class CheckpointEntry:
    """One committed row of a catalog.

    Attributes
    ----------
    commit_id:
        Name of the row directory, ``<sequence:012d>-<uuid>``.
    sequence:
        Commit sequence number, increasing within a rank directory.
    lead_time:
        The ``lead_time`` metadata of the row, if any.
    metadata:
        All metadata recorded with ``write``/``flush``.
    write_count:
        Number of ``write`` calls of the session when the row was committed.
    saved_at:
        UTC time of the commit, ISO 8601.
    rank, world_size:
        The rank that wrote the row and the world size at the time.
    level:
        Checkpoint level at the time of the commit.
    state_ids:
        Qualified names of the bound states saved in the row.
    path:
        The row directory.
    pinned:
        Whether the row was committed with :meth:`CheckpointSession.pin`.
    labels:
        The session's labels when the row was committed (``session.labels``:
        a mapping the caller may set, kept apart from metadata).
    all_ranks:
        In a multi-rank run, whether every rank has a row with this sequence
        number (read from the other ranks' folders); ``None`` otherwise.
    """

    commit_id: str
    sequence: int
    lead_time: Any
    metadata: Mapping[str, Any]
    write_count: int
    saved_at: str
    rank: int
    world_size: int
    level: int
    state_ids: tuple[str, ...]
    path: RowPath
    pinned: bool = False
    all_ranks: bool | None = None
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def metadata_keys(self) -> tuple[str, ...]:
        """Names of the metadata values (earth2studio's field)."""
        return tuple(self.metadata)

    @property
    def artifacts(self) -> tuple[str, ...]:
        """earth2studio's older name for :attr:`metadata_keys`."""
        return self.metadata_keys


def entry_from_row(row: Row) -> CheckpointEntry:
    """The catalog entry of a committed row (its manifest's catalog record, metadata decoded).

    Raises
    ------
    CheckpointCorruptError
        The manifest lacks a valid catalog record.
    """
    body = row.body
    manifest = str(row.path / "manifest.json")
    problem = _record_problem(body)
    if problem is not None:
        raise CheckpointCorruptError(
            f"{manifest} lacks a valid catalog record: {problem}", row=str(row.path), file=manifest
        )
    try:
        metadata = codec.decode(body["metadata"], row.read_payload, root="metadata")
        labels = codec.decode(body["labels"], row.read_payload, root="labels") if "labels" in body else {}
        return CheckpointEntry(
            commit_id=row.commit_id,
            sequence=row.sequence,
            lead_time=metadata.get("lead_time"),
            metadata=metadata,
            write_count=int(body["write_count"]),
            saved_at=str(body["saved_at"]),
            rank=int(body["rank"]),
            world_size=int(body["world_size"]),
            level=int(body["level"]),
            state_ids=tuple(record["id"] for record in body["states"]),
            path=row.path,
            pinned=bool(body.get("pinned", False)),
            labels=labels,
        )
    except CheckpointCorruptError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointCorruptError(
            f"{manifest} lacks a valid catalog record ({exc!r})", row=str(row.path), file=manifest
        ) from exc


# The catalog's fields of a manifest body, by the type each must have.
_INTEGER_FIELDS = ("write_count", "rank", "world_size", "level")


def _record_problem(body: Mapping[str, Any]) -> str | None:
    """What is wrong with the shape of a row's catalog record, or ``None``.

    Checked before anything is used, so that a hand-edited (and re-signed)
    manifest is refused as a whole rather than failing halfway through a
    restore: every state record is ``{"id": str, "schema": str | None,
    "level": int, "value": ...}`` with ids unique, and the counters are
    integers.
    """
    for key in _INTEGER_FIELDS:
        if type(body.get(key)) is not int:
            return f"{key!r} is {shown(body.get(key))}, not an integer"
    if not isinstance(body.get("saved_at"), str):
        return "'saved_at' is not a string"
    if "metadata" not in body:
        return "'metadata' is missing"
    if "pinned" in body and not isinstance(body["pinned"], bool):
        return "'pinned' is not true or false"
    states = body.get("states")
    if not isinstance(states, list):
        return "'states' is not a list"
    seen: set[str] = set()
    for index, record in enumerate(states):
        if not isinstance(record, dict):
            return f"states[{index}] is a {type(record).__name__}, not an object"
        state_id = record.get("id")
        if not isinstance(state_id, str) or not state_id:
            return f"states[{index}] has id {shown(state_id)}, not a non-empty string"
        if state_id in seen:
            return f"states[{index}] repeats the id {state_id!r}"
        seen.add(state_id)
        if "value" not in record:
            return f"state {state_id!r} has no value"
        if "schema" not in record or not (record["schema"] is None or isinstance(record["schema"], str)):
            return f"state {state_id!r} has no schema, or one that is not a string or null"
        if type(record.get("level")) is not int:
            return f"state {state_id!r} has a level that is not an integer"
    return None


def normalize_metadata(metadata: Mapping[str, Any], every_key: bool = False) -> dict[str, Any]:
    """Metadata as the catalog records it, checked as ``write()`` receives it.

    Every value is kept as given, except ``lead_time`` (with ``every_key``:
    any key, as earth2studio does): a one-element array or tensor there is
    recorded as its element, since workflows pass ``coords["lead_time"]``
    and the catalog shows and compares lead times as scalars.

    Raises
    ------
    CheckpointSerializationError
        A value is an array of dtype ``object``: its items could only be
        stored with pickle, and unwrapping a one-element one would store its
        item instead (``np.array([None], dtype=object)`` as ``None``).

    Examples
    --------
    >>> import numpy as np
    >>> normalize_metadata({"lead_time": np.array([6]), "step": np.array([3])})
    {'lead_time': np.int64(6), 'step': array([3])}
    """
    normalized = {}
    for key, value in metadata.items():
        if isinstance(value, np.ndarray) and value.dtype.hasobject:
            raise CheckpointSerializationError(
                f"Invalid checkpoint metadata {key!r}: an array of dtype {value.dtype} cannot be stored without "
                "pickle; store a list, or an array of a plain dtype",
                path=f"metadata[{key!r}]",
            )
        normalized[key] = normalize_value(value) if every_key or key == "lead_time" else value
    return normalized


def normalize_value(value: Any) -> Any:
    """A one-element array or tensor as its element; any other value as it is."""
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(-1)[0]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.detach().cpu().reshape(-1)[0].item()
    return value


def fingerprint(record: dict[str, Any] | None, row: Row | None) -> str | None:
    """A state record's content, with each array reference replaced by its file's checksum."""
    if record is None or row is None:
        return None

    def resolve(doc: Any) -> Any:
        if isinstance(doc, list):
            return [resolve(item) for item in doc]
        if isinstance(doc, dict):
            index = doc.get("i")
            if doc.get(codec.TAG) in ("ndarray", "tensor") and type(index) is int:
                identity = row.payload_identity(index)
                if identity is not None:
                    return {**doc, "i": list(identity)}
            return {key: resolve(value) for key, value in doc.items()}
        return doc

    return json.dumps(resolve(record.get("value")), sort_keys=True, default=str)
