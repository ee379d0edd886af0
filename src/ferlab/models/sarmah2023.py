"""sarmah2023: traditional VGG-style CNNs tuned by random search (baseline, 5-conv and 8-conv).

A. J. Sarmah, N. Bhattacharyya, R. K. Jain, P. Maroti, "Emotion Recognition Through Facial
Expressions Using CNN", 2023 (section III).

The paper's architectures are drawn in figures we do not have (Fig. 3 for the baseline, Fig. 7
for the final 8-conv model). What the text fixes: a baseline of 4 conv + 2 dense layers; 5-conv
and 8-conv families tuned by Keras Tuner's RandomSearch over

    1. kernels (filters) in the first conv layer: 32-256, step 32
    2. the maximum number of kernels in the other conv layers: 64-512, step 64
    3. dropout in the conv layers: 0-0.5, step 0.05
    4. dropout in the dense layers: 0-0.5, step 0.05

(`SARMAH2023_SEARCH_SPACE`, for the tuner), and the final 8-conv model's size: 5,228,487
parameters. Everything else is our choice, documented here:

- Layer: conv 3x3 "same" (with bias, Keras' default) -> BN -> ReLU. Stages end in a 2x2 max pool
  followed by the conv dropout; four stages take 48 -> 3. Keras defaults throughout
  (glorot_uniform, zero bias, BN momentum 0.99 / eps 1e-3; see keras_init).
- Widths ("maximum no. of kernels in the other layers"): the first conv has `first_filters`;
  every later conv in stage s (s = 0..3) has min(max_filters, first_filters * 2**s), i.e. widths
  double per stage, VGG-style, and `max_filters` caps them. The cap binds only when
  first_filters * 8 > max_filters (e.g. first 32 never reaches a 512 cap: 32-64-128-256).
- 8-conv: two convs per stage; head: global average pooling -> dense 1024 -> BN -> ReLU ->
  dense dropout -> dense 7. With first_filters=64, max_filters=512 (64-64-128-128-256-256-512-512)
  this has exactly 5,228,487 parameters as Keras counts them (5,222,599 learnable + 5,888 BN
  moving statistics), the paper's number. It was the only exact hit when we enumerated
  VGG-style layouts (convs per stage, widths from the search space, 3x3 or 5x5 first kernel,
  flatten or GAP, one or two dense layers of 64-1024 with or without BN), so it is probably
  close to Fig. 7 -- but a matching count does not prove it is Fig. 7.
- 5-conv: one conv in each of the first three stages and two in the last, same head:
  64-128-256-512-512 by default, 4,452,103 parameters Keras-style.
- Dropout defaults (the paper does not report the tuned values): conv 0.25, dense 0.5.
- Baseline (sarmah2023_base, Fig. 3 not available): the layout of a widely copied Keras FER2013
  tutorial that matches "4 conv + 2 dense": conv 64 3x3, conv 128 5x5, conv 512 3x3,
  conv 512 3x3 (each conv-BN-ReLU-maxpool-dropout 0.25), flatten (3x3x512), dense 256 and
  dense 512 (each dense-BN-ReLU-dropout 0.25), dense 7: 4,478,727 parameters Keras-style.
- The softmax is left to the loss (logits out); input is pixels in [0, 1].
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ferlab.models.keras_init import batch_norm1d, batch_norm2d, conv2d, init_keras_
from ferlab.models.registry import register_model

# The paper's random-search space: name -> (low, high, step), both ends included.
SARMAH2023_SEARCH_SPACE = {
    "first_filters": (32, 256, 32),
    "max_filters": (64, 512, 64),
    "conv_dropout": (0.0, 0.5, 0.05),
    "dense_dropout": (0.0, 0.5, 0.05),
}


@dataclass
class Sarmah2023Config:
    stages: tuple = ((64, 64), (128, 128), (256, 256), (512, 512))  # conv widths; a stage ends in maxpool + dropout
    kernel_sizes: tuple = ()  # one per conv; empty = all 3x3
    global_pool: bool = True  # global average pooling (True) or flatten (False) before the dense layers
    dense: tuple = (1024,)  # hidden dense widths
    conv_dropout: float = 0.25
    dense_dropout: float = 0.5
    num_classes: int = 7
    in_chans: int = 1


def conv_bn_relu(cin: int, cout: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(conv2d(cin, cout, kernel_size), batch_norm2d(cout), nn.ReLU())


def dense_bn_relu(fin: int, fout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(fin, fout), batch_norm1d(fout), nn.ReLU(), nn.Dropout(dropout))


class Sarmah2023(nn.Module):
    def __init__(self, config: Sarmah2023Config):
        super().__init__()
        self.config = c = config
        n_convs = sum(len(s) for s in c.stages)
        kernel_sizes = list(c.kernel_sizes) or [3] * n_convs
        if len(kernel_sizes) != n_convs:
            raise ValueError(f"{len(kernel_sizes)} kernel sizes for {n_convs} convs")
        stages, cin = [], c.in_chans
        for widths in c.stages:
            layers = []
            for width in widths:
                layers.append(conv_bn_relu(cin, width, kernel_sizes.pop(0)))
                cin = width
            stages.append(nn.Sequential(*layers, nn.MaxPool2d(2), nn.Dropout(c.conv_dropout)))
        self.features = nn.Sequential(*stages)
        side = 48 // 2 ** len(c.stages)
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if c.global_pool else [nn.Flatten()]
        fin = cin if c.global_pool else cin * side * side
        for width in c.dense:
            head.append(dense_bn_relu(fin, width, c.dense_dropout))
            fin = width
        head.append(nn.Linear(fin, c.num_classes))
        self.head = nn.Sequential(*head)
        init_keras_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def family_stages(convs_per_stage: tuple, first_filters: int, max_filters: int) -> tuple:
    """Conv widths per stage: the first conv has first_filters, later ones min(max, first * 2**stage)."""
    stages = []
    for s, n in enumerate(convs_per_stage):
        width = min(max_filters, first_filters * 2**s)
        stages.append(tuple(first_filters if s == 0 and i == 0 else width for i in range(n)))
    return tuple(stages)


def _family(convs_per_stage, first_filters=64, max_filters=512, conv_dropout=0.25, dense_dropout=0.5, **kwargs) -> Sarmah2023:
    stages = family_stages(convs_per_stage, first_filters, max_filters)
    return Sarmah2023(Sarmah2023Config(stages=stages, conv_dropout=conv_dropout, dense_dropout=dense_dropout, **kwargs))


@register_model
def sarmah2023_base(**kwargs) -> Sarmah2023:
    """Sarmah 2023 baseline: 4 conv + 2 dense (layout chosen, the paper's figure is missing)."""
    defaults = dict(stages=((64,), (128,), (512,), (512,)), kernel_sizes=(3, 5, 3, 3), global_pool=False,
                    dense=(256, 512), conv_dropout=0.25, dense_dropout=0.25)
    return Sarmah2023(Sarmah2023Config(**{**defaults, **kwargs}))


@register_model
def sarmah2023_5conv(**kwargs) -> Sarmah2023:
    """Sarmah 2023 5-conv VGG-style family (searchable filters and dropouts)."""
    return _family((1, 1, 1, 2), **kwargs)


@register_model
def sarmah2023_8conv(**kwargs) -> Sarmah2023:
    """Sarmah 2023 8-conv VGG-style family, the final model (5,228,487 Keras params as in the paper)."""
    return _family((2, 2, 2, 2), **kwargs)
