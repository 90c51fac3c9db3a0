"""Encoding a session into a :class:`~restartable.store.Snapshot`: the caller-thread half of a commit.

The snapshot holds the row's catalog record (checkpoint facts, metadata,
labels) and, at level 1 and above, the bound states, encoded by
:mod:`restartable.codec` into one JSON document and its array payloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import codec
from ..errors import CheckpointSerializationError
from ..state import unwrap
from ..store import Snapshot


def encode_snapshot(
    *,
    checkpoint_name: str,
    rank: int,
    world_size: int,
    level: int,
    mode: str,
    int_keys: bool,
    write_count: int,
    metadata: dict[str, Any],
    labels: Mapping[str, Any],
    bound_states: Mapping[str, Any],
    copy: Any = False,
) -> Snapshot:
    """Encode metadata, labels and (at ``level >= 1``) the bound states, by state id.

    ``copy`` is the codec's: ``False``, ``True`` or a host buffer pool that
    array payloads are copied into (asynchronous commits).

    Raises
    ------
    CheckpointSerializationError
        A value cannot be encoded (the message names the metadata key, the
        label or the bound state), or metadata holds a dataclass.
    """
    values: list[tuple[Any, str]] = [(metadata, "metadata"), (dict(labels), "labels")]
    records = []
    if level >= 1:
        for sid, proxy in bound_states.items():
            instance = unwrap(proxy)
            values.append((instance, "state"))
            records.append({"id": sid, "schema": codec.schema_hash(type(instance)), "level": level})
    try:
        encoded = codec.encode([value for value, _ in values], root="values", copy=copy, int_keys=int_keys)
    except CheckpointSerializationError:
        # Re-encode one by one only to name the culprit with its own root.
        for index, (value, root) in enumerate(values):
            try:
                codec.encode(value, root=root, int_keys=int_keys)
            except CheckpointSerializationError as exc:
                if index == 0:
                    raise CheckpointSerializationError(
                        f"Invalid checkpoint metadata {_metadata_key(exc.path)!r}: {exc}", path=exc.path
                    ) from None
                if index == 1:
                    raise CheckpointSerializationError(f"Invalid checkpoint label: {exc}", path=exc.path) from None
                raise CheckpointSerializationError(
                    f"{exc} of bound state {records[index - 2]['id']}", path=exc.path
                ) from None
        raise
    metadata_doc, labels_doc, *state_docs = encoded.document
    _refuse_metadata_dataclasses(metadata_doc)
    for record, doc in zip(records, state_docs, strict=True):
        record["value"] = doc
    body = {
        "checkpoint": checkpoint_name,
        "rank": rank,
        "world_size": world_size,
        "level": level,
        "mode": mode,
        "write_count": write_count,
        "metadata": metadata_doc,
        "states": records,
    }
    if labels:
        body["labels"] = labels_doc
    return Snapshot(body=body, payloads=encoded.payloads)


def _metadata_key(path: str | None) -> str:
    """The metadata key of a codec path like ``metadata['lead_time'][2]``."""
    if path and path.startswith("metadata[") and "]" in path:
        head = path[len("metadata[") : path.index("]")]
        return head.strip("'\"")
    return path or "?"


def _refuse_metadata_dataclasses(metadata_doc: Any) -> None:
    """Metadata is read by every catalog reader, which may lack the user's types."""
    if isinstance(metadata_doc, dict) and "v" in metadata_doc:
        items = list(metadata_doc["v"].items())
    elif isinstance(metadata_doc, dict) and "items" in metadata_doc:
        items = [(key, value) for key, value in metadata_doc["items"]]
    else:
        items = [("?", metadata_doc)]
    for key, value in items:
        _refuse_dataclasses(value, key)


def _refuse_dataclasses(doc: Any, key: Any) -> None:
    if isinstance(doc, dict):
        if doc.get(codec.TAG) == "dataclass":
            raise CheckpointSerializationError(
                f"Invalid checkpoint metadata {key!r}: cannot checkpoint a {doc['type']} in metadata: catalog "
                "readers may not have that type; bind it with bind_checkpoint_state instead",
                path=f"metadata[{key!r}]",
            )
        children: Any = doc.values()
    elif isinstance(doc, list):
        children = doc
    else:
        return
    for child in children:
        _refuse_dataclasses(child, key)
