"""Recomputing BatchNorm statistics in the state a model is scored in.

Why: a BN layer gathers its running statistics in training mode. Behind a dropout layer, those
statistics include dropout's rescaled, higher-variance activations, which eval mode never sees
(the "variance shift" of Li et al., CVPR 2019). Keras' BN momentum of 0.99 also lets the statistics
lag behind fast-changing early weights. In short runs of the papers' models both can make an eval-mode
model that fits its training faces in train mode predict one class. Recomputing the statistics in
the state the model is scored in removes both effects without changing any learned weight.
Used by `ferlab train --recalibrate-bn` (every epoch) and `ferlab evaluate --recalibrate-bn`.
"""

import numpy as np
import torch

from ferlab.device import to_input


def batchnorm_layers(model) -> list[torch.nn.Module]:
    """The model's BatchNorm layers; none for a model that is not a PyTorch module (an ONNX one)."""
    if not isinstance(model, torch.nn.Module):
        return []
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, images_u8: np.ndarray, *, batch_size: int = 64, device="cpu") -> int:
    """Replace every BatchNorm layer's running mean and variance by their average over `images_u8`
    (uint8 faces, no augmentation), computed with dropout off; returns the number of BN layers."""
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    device = torch.device(device)
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None   # a cumulative average over the batches, not an exponential one
        m.train()
    images = torch.from_numpy(np.ascontiguousarray(images_u8))
    for start in range(0, len(images), batch_size):
        model(to_input(images[start:start + batch_size], device, channels_last=True))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    return len(norms)
