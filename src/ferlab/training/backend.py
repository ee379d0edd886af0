"""How a run sets torch up on its device, apart from the model: deterministic kernels
(--deterministic, for an exact resume on CUDA) and where the training faces live (on a GPU for the
whole run when they fit). bf16 autocast (--amp auto) and channels_last are on by default wherever
the hardware runs them (ferlab.device); --compile is TrainConfig.compile, applied in build_parts.

What is exact where: on a CPU a killed run resumed with --resume ends exactly as an uninterrupted
one, always (the default kernels are deterministic). On CUDA only with --deterministic: cuDNN's and
cuBLAS's default kernels pick algorithms and reduction orders that vary from run to run.
"""

import os
from contextlib import contextmanager

import numpy as np
import torch

CUBLAS_WORKSPACE = ":4096:8"   # what cuBLAS needs to be deterministic (CUDA's reproducibility notes)


@contextmanager
def deterministic_kernels(enabled: bool):
    """--deterministic: deterministic algorithms (an op without one fails rather than varies), cuDNN
    deterministic and not benchmarking, CUBLAS_WORKSPACE_CONFIG (read when cuBLAS starts: `fit` enters
    this before its first CUDA op). torch's settings are restored after; the variable stays."""
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.deterministic, cudnn.benchmark = before[2], before[3]


def training_faces(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The (N, 48, 48) uint8 training faces as a tensor: on a GPU, copied there once for the whole run
    when they take under a quarter of its free memory (FER2013's 28,709 faces: 66 MB), instead of
    one copy per batch; elsewhere in host memory (a view of the array, no copy)."""
    faces = torch.from_numpy(images)
    if device.type == "cuda" and faces.nbytes < torch.cuda.mem_get_info(device)[0] // 4:
        return faces.to(device)
    return faces
