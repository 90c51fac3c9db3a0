"""Iterator and pipeline checkpoints (datarax's API) on restartable's engine.

::

    from restartable.iterators import PipelineCheckpoint, ShuffledArrayIterator

    stream = ShuffledArrayIterator(data, batch_size=32, seed=0, num_shards=world, shard_index=rank)
    ckpt = PipelineCheckpoint(f"checkpoints/data/rank_{rank}")
    if ckpt.get_latest_step() is not None:
        ckpt.restore_latest(stream)
    start = (ckpt.get_latest_step() or 0)
    for step, batch in enumerate(stream, start=start + 1):
        train(batch)
        ckpt.save_to_step(stream, step, interval=1000, keep=5)

Every save is a row of the same storage engine as :class:`restartable.Checkpoint`
(crash-safe commit, checksums, fallback past damaged rows), so the
``restartable`` command line lists and verifies these directories too.
"""

from .checkpoint import IteratorCheckpoint, PipelineCheckpoint
from .handler import EngineHandler, IteratorCheckpointHandler
from .protocol import Checkpointable, CheckpointableIterator, StateDictAdapter
from .shuffled import ShuffledArrayIterator

__all__ = [
    "Checkpointable",
    "CheckpointableIterator",
    "EngineHandler",
    "IteratorCheckpoint",
    "IteratorCheckpointHandler",
    "PipelineCheckpoint",
    "ShuffledArrayIterator",
    "StateDictAdapter",
]
