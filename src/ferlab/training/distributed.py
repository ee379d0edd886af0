"""Data parallel: under `torchrun --nproc-per-node N -m ferlab train ...` each process takes a 1/N
slice of every global batch (gloo on CPU, NCCL on GPUs), the processes sum their counts here, and
only rank 0 (`Dist.main`) writes files."""

import os
from dataclasses import dataclass

import torch
import torch.distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size())


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()
