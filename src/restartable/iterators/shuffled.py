"""The reference checkpointable iterator: epoch-wise shuffling over an array or ``.npy`` shards."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ShuffledArrayIterator"]

STATE_FORMAT = "restartable.ShuffledArrayIterator"
STATE_VERSION = 1

# Fields of the state that must match the iterator a state is restored into:
# a different dataset, batching or number of shards would silently change the
# order. ``shard_index`` may differ (the state is the same on every rank) and
# so may ``num_epochs`` (a run may be extended).
_CONFIG_FIELDS = ("num_elements", "element_shape", "dtype", "batch_size", "shuffle", "num_shards", "drop_remainder")


class _ArraySource:
    """Elements are the rows (axis 0) of one array."""

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim == 0:
            raise ValueError("data must have at least one dimension (elements along axis 0), got a 0-d array")
        if array.dtype.hasobject:
            raise ValueError("data with object dtype is not supported")
        self.array = array
        self.length = int(array.shape[0])
        self.element_shape = tuple(int(n) for n in array.shape[1:])
        self.dtype = array.dtype

    def take(self, indices: np.ndarray) -> np.ndarray:
        taken: np.ndarray = self.array[indices]
        return taken

    def describe(self) -> str:
        return f"array of {self.length} elements"


class _ShardSource:
    """Elements are the rows of the ``*.npy`` files of a directory, in file-name order, memory-mapped."""

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise ValueError(f"{directory} is not a directory of .npy shards")
        self.paths = sorted(p for p in directory.iterdir() if p.suffix == ".npy" and p.is_file())
        if not self.paths:
            raise ValueError(f"{directory} holds no .npy files")
        self.directory = directory
        self.shards: list[np.ndarray] = []
        for path in self.paths:
            # mmap: only the elements a batch needs are read; allow_pickle=False
            # refuses object arrays, so nothing is ever unpickled.
            shard = np.load(path, mmap_mode="r", allow_pickle=False)
            if shard.ndim == 0:
                raise ValueError(f"shard {path} is a 0-d array; elements are taken along axis 0")
            self.shards.append(shard)
        first = self.shards[0]
        for path, shard in zip(self.paths, self.shards, strict=True):
            if shard.shape[1:] != first.shape[1:] or shard.dtype != first.dtype:
                raise ValueError(
                    f"shard {path} holds elements of shape {shard.shape[1:]} and dtype {shard.dtype}, "
                    f"but {self.paths[0]} holds {first.shape[1:]} and {first.dtype}"
                )
        lengths = [int(s.shape[0]) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.length = int(self.offsets[-1])
        self.element_shape = tuple(int(n) for n in first.shape[1:])
        self.dtype = first.dtype

    def take(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.element_shape), dtype=self.dtype)
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        for shard in np.unique(shard_of):
            where = shard_of == shard
            out[where] = self.shards[shard][indices[where] - self.offsets[shard]]
        return out

    def describe(self) -> str:
        return f"{len(self.paths)} .npy shard(s) of {self.directory} ({self.length} elements)"


def _positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


class ShuffledArrayIterator:
    """Batches of a dataset in a fresh random order every epoch, sharded by rank, checkpointable.

    Parameters
    ----------
    data:
        A numpy array (elements along axis 0) or a directory of ``.npy``
        shards, read memory-mapped and concatenated along axis 0 in file-name
        order (every shard must have the same element shape and dtype).
    batch_size:
        Elements per batch; each batch is an array of ``batch_size`` elements
        (the last batch of an epoch may be smaller unless ``drop_remainder``).
        ``None`` yields single elements. Batches never straddle epochs.
    seed:
        An int (or ``SeedSequence``) seeds a fresh ``numpy.random.default_rng``;
        a ``numpy.random.Generator`` is used as is (and advanced). Every rank
        must use the same seed: the ranks draw the same permutation and each
        takes its share of it.
    shuffle:
        Draw a new permutation at the start of every epoch; ``False`` keeps
        the data's order.
    num_shards, shard_index:
        Split every epoch among ``num_shards`` ranks: rank ``shard_index``
        takes positions ``shard_index, shard_index + num_shards, ...`` of the
        epoch's permutation. Each rank gets ``len(data) // num_shards``
        elements per epoch; the ``len(data) % num_shards`` elements at the
        end of each epoch's permutation are skipped (different ones each
        epoch when shuffling), so every rank runs the same number of steps.
    num_epochs:
        ``None`` (the default) iterates forever; an int stops
        (``StopIteration``) after that many epochs.
    drop_remainder:
        Drop the last, smaller batch of each epoch.

    The state (:meth:`get_state`) is a dict of ints, strings, bools and the
    bit generator's state (a dict of ints and, for some bit generators,
    arrays): the epoch, the number of elements of the epoch already yielded
    and the random state at the start of the epoch, from which the epoch's
    permutation is drawn again on :meth:`set_state`. It holds no data and no
    permutation, so its size does not grow with the dataset. It is the same
    on every rank, so a state can be restored into an iterator with another
    ``shard_index`` (but not another ``num_shards``).

    Example
    -------
    >>> import numpy as np
    >>> it = ShuffledArrayIterator(np.arange(10), batch_size=4, seed=0)
    >>> first = next(it)
    >>> state = it.get_state()
    >>> rest = [next(it) for _ in range(5)]
    >>> again = ShuffledArrayIterator(np.arange(10), batch_size=4, seed=123)
    >>> again.set_state(state)
    >>> all((a == b).all() for a, b in zip(rest, (next(again) for _ in range(5))))
    True
    """

    def __init__(
        self,
        data: np.ndarray | str | os.PathLike[str],
        batch_size: int | None = None,
        *,
        seed: int | np.random.Generator | np.random.SeedSequence | None = 0,
        shuffle: bool = True,
        num_shards: int = 1,
        shard_index: int = 0,
        num_epochs: int | None = None,
        drop_remainder: bool = False,
    ) -> None:
        if isinstance(data, np.ndarray):
            self._source: _ArraySource | _ShardSource = _ArraySource(data)
        elif isinstance(data, (str, os.PathLike)):
            self._source = _ShardSource(Path(data))
        else:
            raise ValueError(f"data must be a numpy array or a directory of .npy shards, got {type(data).__qualname__}")
        self.batch_size = _positive_int("batch_size", batch_size, allow_none=True)
        checked_num_shards = _positive_int("num_shards", num_shards)
        assert checked_num_shards is not None
        self.num_shards = checked_num_shards
        if (
            isinstance(shard_index, bool)
            or not isinstance(shard_index, (int, np.integer))
            or not 0 <= shard_index < self.num_shards
        ):
            raise ValueError(f"shard_index must be in [0, num_shards={self.num_shards}), got {shard_index!r}")
        self.shard_index = int(shard_index)
        self.num_epochs = _positive_int("num_epochs", num_epochs, allow_none=True)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self.elements_per_epoch = self._source.length // self.num_shards
        minimum = self.batch_size if (self.drop_remainder and self.batch_size) else 1
        if self.elements_per_epoch < minimum:
            raise ValueError(
                f"each of the {self.num_shards} shard(s) gets {self.elements_per_epoch} element(s) of the "
                f"{self._source.describe()} per epoch; at least {minimum} are needed"
            )
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._start_epoch(0)

    # ------------------------------------------------------------------ facts

    @property
    def epoch(self) -> int:
        """The current epoch (0-based)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Elements of the current epoch already yielded by this rank."""
        return self._position

    @property
    def num_elements(self) -> int:
        """Elements in the whole dataset (all shards, all ranks)."""
        return self._source.length

    @property
    def batches_per_epoch(self) -> int:
        """Batches (or elements, with ``batch_size=None``) this rank yields per epoch."""
        if self.batch_size is None:
            return self.elements_per_epoch
        if self.drop_remainder:
            return self.elements_per_epoch // self.batch_size
        return -(-self.elements_per_epoch // self.batch_size)

    # ------------------------------------------------------------------ iteration

    def _epoch_order(self) -> np.ndarray:
        n = self._source.length
        order = self._rng.permutation(n) if self.shuffle else np.arange(n, dtype=np.int64)
        usable = self.elements_per_epoch * self.num_shards
        return order[:usable][self.shard_index :: self.num_shards]

    def _start_epoch(self, epoch: int) -> None:
        # The state at the start of the epoch is kept, not the permutation:
        # set_state draws the same permutation again from it.
        self._epoch_rng_state = self._rng.bit_generator.state
        self._epoch = epoch
        self._position = 0
        self._order = self._epoch_order()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        need = self.batch_size if (self.drop_remainder and self.batch_size) else 1
        while len(self._order) - self._position < need:
            if self.num_epochs is not None and self._epoch + 1 >= self.num_epochs:
                raise StopIteration
            self._start_epoch(self._epoch + 1)
        start = self._position
        if self.batch_size is None:
            self._position += 1
            return self._source.take(self._order[start : start + 1])[0]
        stop = min(start + self.batch_size, len(self._order))
        self._position = stop
        return self._source.take(self._order[start:stop])

    # ------------------------------------------------------------------ state

    def _config(self) -> dict[str, Any]:
        return {
            "num_elements": self._source.length,
            "element_shape": list(self._source.element_shape),
            "dtype": self._source.dtype.str,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "num_shards": self.num_shards,
            "drop_remainder": self.drop_remainder,
        }

    def get_state(self) -> dict[str, Any]:
        """Epoch, position and random state (pickle-free: ints, str, bools, dicts, arrays)."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "position": self._position,
            "rng_state": copy.deepcopy(self._epoch_rng_state),
            "shard_index": self.shard_index,
            "num_epochs": self.num_epochs,
            **self._config(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where the iterator that returned ``state`` was.

        Raises ``ValueError`` when the state belongs to another kind of
        iterator or to a different dataset, batching or number of shards.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("the state was not saved by a ShuffledArrayIterator")
        if int(state.get("version", 0)) > STATE_VERSION:
            raise ValueError(f"the state has version {state.get('version')}, newer than this restartable understands")
        mine = self._config()
        for name in _CONFIG_FIELDS:
            if state.get(name) != mine[name]:
                raise ValueError(
                    f"cannot restore a ShuffledArrayIterator state saved with {name}={state.get(name)!r} into one "
                    f"with {name}={mine[name]!r}: the order of the elements would change"
                )
        epoch, position = state.get("epoch"), state.get("position")
        if not (
            isinstance(epoch, (int, np.integer))
            and isinstance(position, (int, np.integer))
            and not isinstance(epoch, bool)
            and not isinstance(position, bool)
            and epoch >= 0
            and 0 <= position <= self.elements_per_epoch
        ):
            raise ValueError(f"invalid epoch {epoch!r} or position {position!r} in the state")
        epoch, position = int(epoch), int(position)
        rng_state = state.get("rng_state")
        expected = type(self._rng.bit_generator).__name__
        if not isinstance(rng_state, dict) or rng_state.get("bit_generator") != expected:
            found = rng_state.get("bit_generator") if isinstance(rng_state, dict) else rng_state
            raise ValueError(f"the state holds a {found!r} random state, but this iterator's generator uses {expected}")
        self._rng.bit_generator.state = copy.deepcopy(rng_state)
        self._start_epoch(epoch)
        self._position = position

    def __repr__(self) -> str:
        return (
            f"ShuffledArrayIterator({self._source.describe()}, batch_size={self.batch_size}, "
            f"shard {self.shard_index}/{self.num_shards}, epoch={self._epoch}, position={self._position})"
        )
