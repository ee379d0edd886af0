"""Where and in what precision models run: the device, bf16 autocast, the CPU's features, and the
one conversion of uint8 faces into model input.

Training, evaluation and the Recognizer all ask these questions; they live here rather than in
the training engine so that running a model never imports the code that trains one.
"""

import os
import platform

import torch

from ferlab.errors import FerlabError
from ferlab.spec import PIXEL_DIVISOR


def resolve_device(name: str = "auto") -> torch.device:
    """auto, cpu, cuda, cuda:N (or mps where torch has it) -> torch.device; FerlabError, in one line
    naming the option, for a device this torch or machine cannot run on."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise FerlabError(f"--device {name}: unknown device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise FerlabError(f"--device {name}: CUDA is not available ({why}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FerlabError(f"--device {name}: no such GPU ({torch.cuda.device_count()} visible)")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise FerlabError(f"--device {name}: not available with this torch (use auto, cpu or cuda)")


def native_bf16(device: torch.device) -> bool:
    """True where the hardware runs bf16 natively (AVX-512 BF16/AMX CPUs, Ampere+ GPUs). Elsewhere
    bf16 is emulated: measured 7.6x slower than fp32 for FERNet-M inference on an AVX2-only CPU."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it natively, else None (fp32)."""
    if amp == "fp32":
        return None
    supported = native_bf16(device)
    if amp == "bf16" and not supported:
        raise FerlabError(f"--amp bf16 is not supported on this {device.type}")
    return torch.bfloat16 if supported else None


def describe_machine(device: torch.device | None = None) -> str:
    """What a measured time depends on, in one line: CPU model, cores, native bf16 or not, torch, threads.
    The same run takes 2.5-3x longer on an AVX2-only CPU (fp32) than on one with AMX (bf16 autocast)."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    bf16 = "native bf16" if native_bf16(device) else "no native bf16: fp32"
    return f"{cpu}, {os.cpu_count()} CPUs, {bf16}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def to_input(images_u8: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 48, 48) -> float (B, 1, 48, 48) in [0, 1] on the device."""
    x = images_u8.to(device, non_blocking=True).unsqueeze(1).float().div_(PIXEL_DIVISOR)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
