"""bah2022: a VGG-style CNN with three identity residual blocks, and the "basic" CNN without them.

I. Bah, Y. Xue, "Facial expression recognition using adapted residual based deep neural
network", Intelligence & Robotics 2(1), 2022 (section 2.1 and Table 1).

    48x48x1 -> conv block 16 (5x5, no pool) -> conv block 32 -> residual 32
            -> conv block 64 -> conv block 128 -> residual 128
            -> conv block 256 -> conv block 512 -> residual 512
            -> global average pooling -> dense 7
    conv block: conv-ReLU-BN, conv-ReLU-BN, [maxpool 2], dropout (0.3; 0.4 in the last block)
    residual:   conv-BN-ReLU, conv-BN, + input, ReLU   (identity shortcut, no 1x1 conv)

bah2022_resnet is exactly Table 1: 9,773,111 parameters as Keras counts them, 9,766,391
trainable (= PyTorch's learnable count) and 6,720 BN moving statistics; every layer's count
and output shape matches the table (tests/test_models.py pins them). bah2022_basic, the
paper's first-phase network, is the same without the three residual blocks: 4,734,455
parameters Keras-style, 4,730,423 learnable.

Where the paper is ambiguous, and what is built here:

- Kernel sizes. The text names a 5x5 kernel only for "the first convolution", but Table 1's
  conv2d_2 has 6,416 = 5*5*16*16 + 16 parameters: the first two convs are 5x5 (padding 2) and
  all the others 3x3, padding "same". We follow the table.
- Pooling. The text says every pair of conv layers is followed by BN, max pooling and dropout;
  Table 1 has no pooling after the first pair (dropout_1 at 48x48), so five 2x2 poolings take
  48 to 1 (3x3 -> 1x1 floors, as Keras' "valid" pooling does). We follow the table.
- BN placement: "after the activation in the simple Convolutional Blocks and before the
  activation in the Residual blocks". Table 1 shows Activation layers only inside residual
  blocks, so the plain convs carry activation="relu" themselves: conv -> ReLU -> BN.
- Dropout: "0.3 for the early layers ... and 0.4 for the last Convolutional Block": dropout_1
  to dropout_5 are 0.3, dropout_6 (after the 512-filter block) is 0.4. No dropout in residual
  blocks or before the dense layer, as in Table 1.
- he_normal is stated for "the convolutional layers"; it is used for all 18 convs, residual
  ones included, with zero biases (stated). The dense layer keeps Keras' glorot_uniform.
  he_normal is Keras' truncated version (see keras_init); BN is Keras' (momentum 0.99, eps 1e-3).
- The final residual block works on a 1x1 map, where its 3x3 "same" convs see only their centre
  tap; the table's parameter counts still include all nine taps, and so does this port.
- The softmax is left to the loss (logits out). Input: pixels in [0, 1] ("normalized to make the
  pixel values range from 0 to 1").
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ferlab.models.keras_init import batch_norm2d, conv2d, init_keras_
from ferlab.models.registry import register_model


@dataclass
class Bah2022Config:
    widths: tuple = (16, 32, 64, 128, 256, 512)  # one conv block (two convs) per width
    kernel_sizes: tuple = (5, 3, 3, 3, 3, 3)
    pools: tuple = (False, True, True, True, True, True)
    dropouts: tuple = (0.3, 0.3, 0.3, 0.3, 0.3, 0.4)
    residual_after: tuple = (1, 3, 5)  # an identity residual block after these conv blocks
    residual: bool = True
    num_classes: int = 7
    in_chans: int = 1


class ConvBlock(nn.Sequential):
    """Two conv(ReLU) -> BN layers, then max pooling (optional) and dropout."""

    def __init__(self, cin: int, cout: int, kernel_size: int, pool: bool, dropout: float):
        super().__init__(
            conv2d(cin, cout, kernel_size), nn.ReLU(), batch_norm2d(cout),
            conv2d(cout, cout, kernel_size), nn.ReLU(), batch_norm2d(cout),
            nn.MaxPool2d(2) if pool else nn.Identity(),
            nn.Dropout(dropout),
        )


class ResidualBlock(nn.Module):
    """relu(x + bn(conv(relu(bn(conv(x)))))): Table 1's conv, BN, activation, conv, BN, add, activation."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv2d(channels, channels, 3)
        self.bn1 = batch_norm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv2d(channels, channels, 3)
        self.bn2 = batch_norm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relu1(self.bn1(self.conv1(x)))
        r = self.bn2(self.conv2(r))
        return self.relu2(x + r)


class Bah2022(nn.Module):
    def __init__(self, config: Bah2022Config):
        super().__init__()
        self.config = c = config
        blocks, cin = [], c.in_chans
        for i, (width, k, pool, p) in enumerate(zip(c.widths, c.kernel_sizes, c.pools, c.dropouts)):
            blocks.append(ConvBlock(cin, width, k, pool, p))
            cin = width
            if c.residual and i in c.residual_after:
                blocks.append(ResidualBlock(width))
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, c.num_classes))
        init_keras_(self, conv_init="he_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model
def bah2022_resnet(**kwargs) -> Bah2022:
    """Bah & Xue 2022: 12 convs + 3 identity residual blocks, GAP (Table 1, 9,773,111 Keras params)."""
    return Bah2022(Bah2022Config(**kwargs))


@register_model
def bah2022_basic(**kwargs) -> Bah2022:
    """Bah & Xue 2022 first-phase "basic" CNN: Table 1 without the residual blocks."""
    return Bah2022(Bah2022Config(residual=False, **kwargs))
