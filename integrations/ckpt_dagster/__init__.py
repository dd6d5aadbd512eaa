"""ckpt for Dagster: op outputs and assets as verified checkpoints that re-executions resume from.

- :class:`CheckpointIOManager`: a ``ConfigurableIOManager`` over any ckpt store. Op outputs are
  keyed by run family (root run id), step, output and mapping key; assets by asset key and
  partition. While a step runs, ``@ckpt_core.checkpointed`` calls inside the op body checkpoint
  into the same run family.
- :func:`checkpoint_cleanup_sensor`: deletes a run family's op outputs after a successful run,
  never asset values.

Key layout and the reasons behind it: :mod:`ckpt_dagster.keys`.
"""

from .io_manager import CheckpointIOManager
from .lifecycle import checkpoint_cleanup_sensor
from .metadata import KEYS as METADATA_KEYS

__all__ = ["METADATA_KEYS", "CheckpointIOManager", "checkpoint_cleanup_sensor"]
