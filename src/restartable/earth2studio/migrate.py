"""Convert an earth2studio checkpoint store into a restartable store.

earth2studio 0.19 keeps, per rank folder, ``catalog.json`` (the row order),
``commits/<commit_id>/manifest.json`` (metadata and state index, JSON) with
``metadata/*.npy`` arrays, and ``states/<hash>/metadata.json`` plus ``.npy``
arrays for each bound dataclass. :func:`import_earth2studio` reads that with
JSON and ``numpy.load(allow_pickle=False)`` only, checks every row (manifest
parses, every referenced array loads with the recorded dtype and shape,
every state record is there), and commits each whole row, in catalog order,
as a restartable row through the ordinary engine. A damaged row is reported
and skipped, never copied.

earth2studio's schema hashes are not comparable with restartable's, so
migrated states carry no schema hash: on restore, the saved field names
must match the dataclass's (types are not checked). Sequence numbers follow
the catalog order; write counts, metadata and state values are kept.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import codec
from ..store import RowStore, RowWriter, Snapshot, open_store

_RANK = re.compile(r"^rank_\d{6}$")


class _Damaged(Exception):
    """The row cannot be converted whole."""


@dataclass
class ImportReport:
    """What :func:`import_earth2studio` did."""

    imported: list[str] = field(default_factory=list)
    """earth2studio commit ids converted, as ``<rank folder>/<commit id>`` for multi-rank stores."""
    damaged: list[tuple[str, str]] = field(default_factory=list)
    """Rows skipped, with the reason."""

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "damaged": [{"row": r, "reason": why} for r, why in self.damaged]}


def _rank_folders(source: Path) -> list[tuple[str, Path]]:
    if (source / "commits").is_dir() or (source / "catalog.json").is_file():
        return [("", source)]
    ranks = sorted(p for p in source.iterdir() if p.is_dir() and _RANK.match(p.name)) if source.is_dir() else []
    if not ranks:
        raise FileNotFoundError(
            f"{source} is not an earth2studio checkpoint store (no catalog.json, commits/ or rank_* folders)"
        )
    return [(p.name, p) for p in ranks]


def _commit_order(rank_path: Path) -> list[str]:
    """Commit ids in catalog order (``catalog.json``), else by their manifests' ``saved_at``."""
    commits = rank_path / "commits"
    present = sorted(p.name for p in commits.iterdir() if p.is_dir()) if commits.is_dir() else []
    try:
        listed = [str(item["commit_id"]) for item in json.loads((rank_path / "catalog.json").read_text())["entries"]]
    except (OSError, ValueError, KeyError, TypeError):
        listed = []
    ordered = [c for c in listed if c in present]

    def saved_at(commit: str) -> str:
        try:
            return str(json.loads((commits / commit / "manifest.json").read_text()).get("saved_at", ""))
        except (OSError, ValueError):
            return ""

    # Commits the catalog does not list (it is rewritten after each commit) go last, by time.
    return ordered + sorted((c for c in present if c not in ordered), key=saved_at)


class _Reader:
    """earth2studio's value payloads to Python values, pickle-free."""

    def __init__(self, torch_ok: bool) -> None:
        self.torch_ok = torch_ok

    def value(self, payload: Any, base: Path) -> Any:
        if not isinstance(payload, dict) or "kind" not in payload:
            raise _Damaged(f"a value record is not an earth2studio payload: {payload!r:.80}")
        kind = payload["kind"]
        try:
            if kind == "none":
                return None
            if kind in ("bool", "int", "float", "str"):
                return payload["value"]
            if kind == "datetime":
                return _dt.datetime.fromisoformat(payload["value"])
            if kind == "date":
                return _dt.date.fromisoformat(payload["value"])
            if kind == "timedelta":
                return _dt.timedelta(
                    days=payload["days"], seconds=payload["seconds"], microseconds=payload["microseconds"]
                )
            if kind == "np_datetime64":
                return np.datetime64(payload["value"], payload["unit"])
            if kind == "np_timedelta64":
                return np.timedelta64(payload["value"], payload["unit"])
            if kind == "np_dtype":
                return np.dtype(payload["value"])
            if kind in ("torch_device", "torch_dtype"):
                torch = self._torch()
                if kind == "torch_device":
                    return torch.device(payload["value"])
                dtype = codec.torch_dtype_named(torch, str(payload["value"]).split(".")[-1])
                if dtype is None:
                    raise _Damaged(f"unknown torch dtype {payload['value']!r}")
                return dtype
            if kind in ("tensor", "ndarray"):
                return self.array(payload, base, kind)
            if kind == "list":
                return [self.value(item, base) for item in payload["items"]]
            if kind == "tuple":
                return tuple(self.value(item, base) for item in payload["items"])
            if kind == "dict":
                return {str(key): self.value(item, base) for key, item in payload["items"].items()}
            if kind == "dataclass":
                return _Migrated(
                    str(payload["state_id"]), {name: self.value(item, base) for name, item in payload["fields"].items()}
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise _Damaged(f"a {kind!r} value record is malformed ({exc!r})") from exc
        raise _Damaged(f"unknown value kind {kind!r}")

    def array(self, payload: dict[str, Any], base: Path, kind: str) -> Any:
        relative = Path(str(payload["path"]))
        if relative.is_absolute() or ".." in relative.parts:
            raise _Damaged(f"array path {relative} leaves the commit directory")
        path = base / relative
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError as exc:
            raise _Damaged(f"{path} is missing") from exc
        except (OSError, ValueError) as exc:
            raise _Damaged(f"{path} cannot be read: {exc}") from exc
        if list(array.shape) != list(payload["shape"]) or str(array.dtype) != str(payload["dtype"]):
            raise _Damaged(
                f"{path} holds {array.dtype}{list(array.shape)}, its record says {payload['dtype']}{payload['shape']}"
            )
        if kind == "tensor" and self.torch_ok:
            return self._torch().from_numpy(array)
        return array

    @staticmethod
    def _torch() -> Any:
        import torch

        return torch


@dataclass
class _Migrated:
    """A saved dataclass whose class is not at hand: its qualified name and field values."""

    type_name: str
    fields: dict[str, Any]


def _as_encodable(value: Any, cache: dict[tuple[str, tuple[str, ...]], type]) -> Any:
    """Replace :class:`_Migrated` records by instances of stand-in dataclasses with the saved names."""
    if isinstance(value, _Migrated):
        names = tuple(value.fields)
        key = (value.type_name, names)
        cls = cache.get(key)
        if cls is None:
            module, _, qualname = value.type_name.rpartition(".")
            cls = dataclasses.make_dataclass(qualname.rsplit(".", 1)[-1] or "State", list(names))
            cls.__module__, cls.__qualname__ = module or "__main__", qualname or cls.__qualname__
            cache[key] = cls
        return cls(**{name: _as_encodable(item, cache) for name, item in value.fields.items()})
    if isinstance(value, list):
        return [_as_encodable(item, cache) for item in value]
    if isinstance(value, tuple):
        return tuple(_as_encodable(item, cache) for item in value)
    if isinstance(value, dict):
        return {key: _as_encodable(item, cache) for key, item in value.items()}
    return value


def _drop_schemas(document: Any) -> Any:
    """Saved dataclasses of a migrated row carry no schema hash (see the module docstring)."""
    if isinstance(document, list):
        return [_drop_schemas(item) for item in document]
    if isinstance(document, dict):
        result = {key: _drop_schemas(item) for key, item in document.items()}
        if result.get(codec.TAG) == "dataclass":
            result["schema"] = None
        return result
    return document


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise _Damaged(f"{path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise _Damaged(f"{path} is unreadable: {exc}") from exc


def _read_row(commit: Path, reader: _Reader) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, _Migrated]]]:
    """(manifest, metadata, [(state id, state)]) of one earth2studio commit; raises _Damaged."""
    manifest = _read_json(commit / "manifest.json")
    if not isinstance(manifest, dict) or "commit_id" not in manifest:
        raise _Damaged(f"{commit / 'manifest.json'} is not an earth2studio commit manifest")
    metadata = {
        name: reader.value(payload, commit / "metadata") for name, payload in (manifest.get("metadata") or {}).items()
    }
    metadata.update(
        {
            name: reader.value(payload, commit / "artifacts")
            for name, payload in (manifest.get("artifacts") or {}).items()
        }
    )
    if "lead_time" in manifest and "lead_time" not in metadata:
        metadata["lead_time"] = reader.value(
            {"kind": "none"} if manifest["lead_time"] is None else _json_payload(manifest["lead_time"]), commit
        )
    states = []
    for state_id, record in (manifest.get("states") or {}).items():
        relative = Path(str(record.get("path", "")))
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise _Damaged(f"state {state_id} points outside the commit ({relative})")
        state_dir = commit / relative
        saved = _read_json(state_dir / "metadata.json")
        if (
            not isinstance(saved, dict)
            or saved.get("state_id") != state_id
            or not isinstance(saved.get("fields"), dict)
        ):
            raise _Damaged(f"{state_dir / 'metadata.json'} does not describe state {state_id}")
        fields_ = {name: reader.value(payload, state_dir) for name, payload in saved["fields"].items()}
        states.append((state_id, _Migrated(state_id, fields_)))
    return manifest, metadata, states


def _json_payload(value: Any) -> dict[str, Any]:
    """A JSON-encoded label value of older manifests, as a value payload."""
    if isinstance(value, dict) and "kind" in value:
        return value
    if isinstance(value, bool):
        return {"kind": "bool", "value": value}
    if isinstance(value, int):
        return {"kind": "int", "value": value}
    if isinstance(value, float):
        return {"kind": "float", "value": value}
    if isinstance(value, str):
        return {"kind": "str", "value": value}
    raise _Damaged(f"unsupported lead_time record {value!r:.80}")


def import_earth2studio(
    source: str | Path, destination: str | Path | RowStore, *, name: str | None = None
) -> ImportReport:
    """Convert the earth2studio store ``source`` into a new restartable store at ``destination``.

    ``destination`` is a directory, a URL (``s3://...``) or a
    :class:`~restartable.store.RowStore`.

    Every whole row is committed in catalog order; damaged rows are listed
    in :attr:`ImportReport.damaged` and skipped. ``destination`` must not
    hold rows yet.

    Raises
    ------
    FileNotFoundError
        ``source`` is not an earth2studio store.
    FileExistsError
        ``destination`` already holds restartable rows.
    """
    source = Path(source).expanduser()
    root = open_store(destination)
    folders = _rank_folders(source)
    for rank_name, _ in folders:
        target = root.child(rank_name) if rank_name else root
        if target.list_rows():
            raise FileExistsError(f"{target} already holds rows; import into a new directory")
    reader = _Reader(torch_ok="torch" in sys.modules or _torch_available())
    report = ImportReport()
    cache: dict[tuple[str, tuple[str, ...]], type] = {}
    for rank_name, rank_path in folders:
        writer = RowWriter(root.child(rank_name) if rank_name else root, keep=None)
        try:
            for commit_id in _commit_order(rank_path):
                label = f"{rank_name}/{commit_id}" if rank_name else commit_id
                try:
                    manifest, metadata, states = _read_row(rank_path / "commits" / commit_id, reader)
                    snapshot = _snapshot(manifest, metadata, states, cache, name or source.name)
                except _Damaged as exc:
                    report.damaged.append((label, str(exc)))
                    continue
                writer.persist(snapshot)
                report.imported.append(label)
        finally:
            writer.close()
    return report


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _snapshot(
    manifest: dict[str, Any],
    metadata: dict[str, Any],
    states: list[tuple[str, _Migrated]],
    cache: dict[tuple[str, tuple[str, ...]], type],
    name: str,
) -> Snapshot:
    values = [metadata] + [_as_encodable(state, cache) for _, state in states]
    try:
        encoded = codec.encode(values, root="values")
    except Exception as exc:  # a value earth2studio could store but restartable cannot
        raise _Damaged(f"cannot convert: {exc}") from exc
    metadata_doc, *state_docs = encoded.document
    records = [
        {"id": state_id, "schema": None, "level": 2, "value": _drop_schemas(doc)}
        for (state_id, _), doc in zip(states, state_docs, strict=True)
    ]
    body = {
        "checkpoint": str(manifest.get("checkpoint") or name),
        "rank": int(manifest.get("rank", 0)),
        "world_size": int(manifest.get("world_size", 1)),
        "level": 2 if records else 0,
        "mode": str(manifest.get("mode", "overwrite")),
        "write_count": int(manifest.get("write_count", 0)),
        "metadata": metadata_doc,
        "states": records,
        "migrated_from": {
            "format": "earth2studio",
            "commit_id": str(manifest["commit_id"]),
            "saved_at": str(manifest.get("saved_at", "")),
        },
    }
    return Snapshot(body=body, payloads=encoded.payloads)
