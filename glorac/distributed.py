"""torch.distributed set-up for ``torchrun`` (NCCL on GPU, Gloo on CPU), and no-op otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    # How a multi-process run holds the model: "ddp" (each process the whole model) or
    # "fsdp" (the frozen base sharded over the processes, glorac.sharding).
    sharding: str = "ddp"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """The frozen base is sharded over the processes (FSDP)."""
        return self.active and self.sharding == "fsdp"


def setup(device: str | None = None, sharding: str = "ddp") -> Dist:
    """Join the process group when launched by torchrun; pick the device for this rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, device=dev, sharding=sharding)


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def all_gather_objects(d: Dist, obj):
    """Every rank's ``obj``, in rank order (a list of one on a single process)."""
    if not d.active:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out
