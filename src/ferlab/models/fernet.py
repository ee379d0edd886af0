"""FERNet: ferlab's own CNN for 48x48 faces, built for accuracy per CPU-second.

A VGG-style stack of 3x3 conv-BN-ReLU layers in four stages (48, 24, 12, 6 px) with max
pooling between stages, global average pooling and one linear layer. Plain 3x3 convolutions
with BatchNorm map well onto oneDNN's bf16/AMX kernels and fold into single convs for
inference; the width and depth presets trade speed for accuracy.

`mixstyle=p` (training only) mixes the feature statistics of faces after the first two stages
(MixStyle, Zhou et al. 2021): early channels' per-face mean and spread carry the camera, the light
and the skin more than the expression, so swapping part of them between faces of a batch shows
the deeper layers kinds of faces the data sets do not hold. It has no weights and does nothing in
eval mode, so exports and the state dict are the same as without it.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ferlab.models.registry import register_model


@dataclass
class FERNetConfig:
    widths: tuple = (32, 64, 128, 256)
    depths: tuple = (2, 2, 2, 2)
    dropout: float = 0.3
    num_classes: int = 7
    in_chans: int = 1
    mixstyle: float = 0.0   # probability per training batch of MixStyle after stages 1 and 2; 0: off


def mix_style(x: torch.Tensor, alpha: float = 0.1, eps: float = 1e-6) -> torch.Tensor:
    """Each face's per-channel feature mean and std replaced by a Beta(alpha, alpha) blend of its own
    and those of another face of the batch (a random permutation); the statistics are not
    back-propagated through, as in the paper."""
    b = x.size(0)
    mu = x.mean((2, 3), keepdim=True).detach()
    sigma = (x.var((2, 3), keepdim=True) + eps).sqrt().detach()
    lam = torch.distributions.Beta(alpha, alpha).sample((b, 1, 1, 1)).to(x.device, x.dtype)
    perm = torch.randperm(b, device=x.device)
    mixed_mu, mixed_sigma = lam * mu + (1 - lam) * mu[perm], lam * sigma + (1 - lam) * sigma[perm]
    return (x - mu) / sigma * mixed_sigma + mixed_mu


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FERNet(nn.Module):
    def __init__(self, config: FERNetConfig):
        super().__init__()
        self.config = config
        layers, cin, stage_ends = [], config.in_chans, []
        for stage, (width, depth) in enumerate(zip(config.widths, config.depths)):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers.append(conv_bn_relu(cin, width))
                cin = width
            stage_ends.append(len(layers) - 1)
        self.mixstyle_after = set(stage_ends[:2])   # indices in self.features
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(cin, config.num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inputs are pixels in [0, 1]; centre them here so every caller feeds the same thing.
        x = (x - 0.5) * 4.0
        if not (self.training and self.config.mixstyle > 0):
            return self.head(self.features(x))
        mix = torch.rand(()) < self.config.mixstyle
        for i, layer in enumerate(self.features):
            x = layer(x)
            if mix and i in self.mixstyle_after:
                x = mix_style(x)
        return self.head(x)


def _fernet(preset_widths, preset_depths, **kwargs) -> FERNet:
    """Build a preset; `widths`/`depths` in kwargs override the preset's (e.g. tiny models in tests)."""
    widths, depths = kwargs.pop("widths", preset_widths), kwargs.pop("depths", preset_depths)
    return FERNet(FERNetConfig(widths=tuple(widths), depths=tuple(depths), **kwargs))


@register_model
def fernet_s(**kwargs) -> FERNet:
    """FERNet-S (ferlab's own): widths 32-256, two 3x3 convs per stage."""
    return _fernet((32, 64, 128, 256), (2, 2, 2, 2), **kwargs)


@register_model
def fernet_m(**kwargs) -> FERNet:
    """FERNet-M (ferlab's own): widths 32-256 with depth moved from 48 px to 12 and 6 px.

    One conv at 48 px instead of two and three per stage at 12 and 6 px: 1.9M parameters for
    about FERNet-S's training cost (423 vs 456 images/s, bf16, 2 cores), because the second
    48 px conv is the most expensive layer of FERNet-S. The bundled default is a FERNet-M.
    """
    return _fernet((32, 64, 128, 256), (1, 2, 3, 3), **kwargs)


@register_model
def fernet_l(**kwargs) -> FERNet:
    """FERNet-L (ferlab's own): widths 64-512, VGG-like depth, for long training."""
    return _fernet((64, 128, 256, 512), (2, 2, 3, 3), **kwargs)
