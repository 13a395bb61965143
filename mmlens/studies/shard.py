"""Which samples this process computes when a study runs under ``torchrun`` (data parallel).

The shard comes from the environment ``torchrun`` (or ``accelerate launch``) sets: ``RANK`` and
``WORLD_SIZE``. Sample ``i`` belongs to rank ``i % WORLD_SIZE``, a deterministic split that
does not depend on timing. The only communication is a barrier, over a ``gloo`` process group
(CPU, no GPU needed) initialised from ``MASTER_ADDR``/``MASTER_PORT`` on first use; results
travel through the run folder, so every rank must see the same ``--out`` (one machine or a
shared file system). Without ``WORLD_SIZE`` (or with 1) nothing distributed is touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from mmlens.errors import MMLensError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's rank among ``world_size`` processes of one study.

    Attributes:
        rank: 0-based rank; rank 0 writes the merged outputs.
        world_size: Number of processes.
    """

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise MMLensError(f"rank {self.rank} of world size {self.world_size}: need 0 <= RANK < WORLD_SIZE.")

    @classmethod
    def from_env(cls) -> Shard:
        """The shard ``torchrun`` describes in ``RANK``/``WORLD_SIZE`` (rank 0 of 1 when unset).

        Raises:
            MMLensError: The variables are not integers or are inconsistent.
        """
        try:
            return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
        except ValueError:
            raise MMLensError(f"RANK={os.environ.get('RANK')!r}, WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: "
                              "both must be integers (torchrun sets them).") from None  # fmt: skip

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def select(self, items: Sequence[T]) -> list[T]:
        """This rank's items: ``items[rank::world_size]``."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op in one process).

        Raises:
            MMLensError: ``WORLD_SIZE`` > 1 without ``MASTER_ADDR``/``MASTER_PORT`` (not
                launched by torchrun).
        """
        if self.world_size == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
                raise MMLensError(f"WORLD_SIZE={self.world_size} but MASTER_ADDR/MASTER_PORT are not set: launch "
                                  "with torchrun --nproc_per_node N -m mmlens.cli ... (or unset WORLD_SIZE).")  # fmt: skip
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=timedelta(hours=24))
        dist.barrier()


def close() -> None:
    """Tear down the process group a barrier opened (call once at the end of a command)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
