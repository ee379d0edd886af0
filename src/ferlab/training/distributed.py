"""Data parallel: under `torchrun --nproc-per-node N -m ferlab train ...` each process takes a 1/N
slice of every global batch, the processes sum their counts here, and only rank 0 (`Dist.main`)
writes files.

On GPUs each process binds the GPU of its LOCAL_RANK (torchrun's rank on this machine: one process
per GPU), talks NCCL, sums on that GPU, and BatchNorm is SyncBatchNorm (statistics over the global
batch, as one process would have them). On CPUs the processes talk gloo and each keeps its own
BatchNorm statistics (SyncBatchNorm runs on GPUs only): a run of N CPU processes matches one process
within a tolerance, not exactly.
"""

import os
from dataclasses import dataclass, field

import torch
import torch.distributed
import torch.nn as nn

from ferlab.errors import FerlabError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))   # this process's device

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Rank 0 of a torchrun, or the only process: the one that writes the run directory (known
    from the environment, before init_distributed)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun's process group (WORLD_SIZE > 1) on `device`, each GPU process on
    cuda:LOCAL_RANK; one process: Dist() on `device`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=device)
    if device.type == "cuda":
        local, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= visible:
            raise FerlabError(f"torchrun started more processes on this machine than it has GPUs ({visible} GPU(s) "
                              "visible): --nproc-per-node at most the number of GPUs, or --device cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(), device=device)


def ddp_device_ids(d: Dist) -> list[int] | None:
    """DistributedDataParallel's device_ids: this process's GPU, or None on CPUs."""
    return [d.device.index] if d.device.type == "cuda" else None


def for_data_parallel(model: nn.Module, d: Dist) -> nn.Module:
    """The model wrapped for data parallel (several processes), its BatchNorm synchronised on GPUs
    (see the module's docstring); the model itself with one process."""
    if d.world == 1:
        return model
    if d.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=ddp_device_ids(d))


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    """Sum values over all processes, on the backend's device (NCCL: the GPU; gloo: the CPU), in float64."""
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t)
    return t.tolist()
