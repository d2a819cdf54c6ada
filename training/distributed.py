"""Training on several processes (``torchrun``): the world of one run, its process group,
and the few collectives the training loop needs.

``torchrun`` starts one process per device (or per CPU share) and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each; without
them the run is one process (:data:`SINGLE`) and nothing here talks to anyone. The
backend follows the device: NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPUs --
the same code either way.

Rank 0 is the *main* rank: it reads the data (and shares it, :meth:`World.share`),
decides when the time budget is spent and when validation stops training, writes the
artifact, publishes releases and logs; the others train their share of each batch and
stay quiet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from training.errors import TrainingError

log = logging.getLogger(__name__)

T = TypeVar("T")

# how long a rank waits for the others at a collective: the followers wait while the main
# rank reads the event log and validates, so this is generous
TIMEOUT = timedelta(minutes=30)
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class WorldError(TrainingError):
    """The torchrun environment is incomplete or inconsistent."""


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, requested: str = "auto") -> torch.device:
        """The device of this rank: ``auto`` is CUDA when there is one; on CUDA, the
        device of this rank's ``LOCAL_RANK``."""
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(requested)
        if device.type != "cuda" or not self.distributed:
            return device
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise WorldError(f"LOCAL_RANK {self.local_rank} but this host has {count} CUDA "
                             "devices: start at most one process per device (--nproc-per-node)")
        return torch.device("cuda", self.local_rank)

    def broadcast_float(self, value: float) -> float:
        """The main rank's `value` on every rank."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def mean_float(self, value: float) -> float:
        """The mean of every rank's `value`, on every rank."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.size

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """The main rank's parameters and buffers on every rank, in place."""
        if not self.distributed:
            return
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def broadcast_flag(self, flag: bool) -> bool:
        """The main rank's `flag` on every rank."""
        return self.broadcast_float(1.0 if flag else 0.0) > 0.5

    def share(self, make: Callable[[], T]) -> T:
        """``make()`` run on the main rank only, its result on every rank (pickled): the
        data of a run is read once, so every rank trains on the same snapshot."""
        if not self.distributed:
            return make()
        box: list[object] = [make() if self.main else None]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        return box[0]  # type: ignore[return-value]

    def gather_rows(self, rows: torch.Tensor, values: torch.Tensor, width: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's `rows` ([<= width]) and `values` ([len(rows), H]) concatenated,
        on every rank (padding rows dropped)."""
        if not self.distributed:
            return rows, values
        padded = torch.full((width,), -1, dtype=torch.int64, device=rows.device)
        padded[: len(rows)] = rows
        block = values.new_zeros((width, values.shape[1]))
        block[: len(rows)] = values
        all_rows = [torch.empty_like(padded) for _ in range(self.size)]
        all_values = [torch.empty_like(block) for _ in range(self.size)]
        dist.all_gather(all_rows, padded)
        dist.all_gather(all_values, block)
        got_rows, got_values = torch.cat(all_rows), torch.cat(all_values)
        real = got_rows >= 0
        return got_rows[real], got_values[real]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = World()


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in `env` (default: ``os.environ``); :data:`SINGLE`
    when none of ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` is set. WorldError names what is
    missing or inconsistent."""
    env = os.environ if env is None else env
    present = [name for name in ENV if name in env]
    if not present:
        return SINGLE
    missing = [name for name in ENV if name not in env]
    if missing:
        raise WorldError(f"{', '.join(present)} set but not {', '.join(missing)}: start "
                         "distributed training with torchrun, which sets all of them")
    try:
        rank, size, local = (int(env[name]) for name in ENV)
    except ValueError as error:
        raise WorldError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {error}") from error
    if size < 1 or not 0 <= rank < size or not 0 <= local <= rank:
        raise WorldError(f"RANK {rank}, LOCAL_RANK {local}, WORLD_SIZE {size}: need "
                         "0 <= LOCAL_RANK <= RANK < WORLD_SIZE")
    if size > 1:
        absent = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if absent:
            raise WorldError(f"WORLD_SIZE {size} without {' and '.join(absent)}: the ranks "
                             "cannot find one another (torchrun sets them)")
    return World(rank=rank, size=size, local_rank=local)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def joined(world: World, device: torch.device) -> Iterator[None]:
    """The process group of `world` on `device`'s backend for the duration, destroyed on
    leaving (the ranks last meet at the end of training, :func:`training.train.train`:
    the main rank's evaluation and writing after it need no one). Nothing to do for one
    process."""
    if not world.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend_for(device)
    try:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                                timeout=TIMEOUT)
    except (RuntimeError, ValueError) as error:  # torch's DistError is a RuntimeError
        raise WorldError(
            f"rank {world.rank} of {world.size} could not join the others at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
            f"({backend}): {error}") from error
    log.info("rank %s of %s joined (%s on %s)", world.rank, world.size, backend, device)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

