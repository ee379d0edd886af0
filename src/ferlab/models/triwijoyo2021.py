"""triwijoyo2021: a three-block CNN with batch normalization, and its no-BN ablation.

B. K. Triwijoyo, A. Adil, A. Anggrawan, "Convolutional Neural Network with Batch Normalization
for Classification of Emotional Expressions Based on Facial Images", 2021 (Table 1).

    48x48x1 -> 3 x [conv, ReLU, conv, ReLU, BN, maxpool 2] with 64 / 128 / 256 filters
            -> flatten (6x6x256 = 9216) -> dense 128 -> BN -> ReLU -> dropout 0.2 -> dense 7
    2,787,015 parameters as Keras counts them (2,785,863 learnable + 1,152 BN moving statistics).

Where the paper is ambiguous, and what is built here:

- Block 3's kernel size. Table 1 says 5x5 with padding 2 for all six convs, but block 3's
  parameter counts, 295,168 = 3*3*128*256 + 256 and 590,080 = 3*3*256*256 + 256, are those of
  3x3 convs (5x5 would be 819,456 and 1,638,656), and only they add up to the stated total.
  We follow the parameter column: block 3 uses 3x3 convs with padding 1, which keeps the 12x12
  output size the table gives. Blocks 1-2 are 5x5 with padding 2, as both columns agree.
- Table 1's "Batch Size" column (64/128/256) is the number of filters; its pooling stride "1"
  contradicts the halving output sizes (48 -> 24 -> 12 -> 6): the pooling is 2x2 with stride 2.
- The text (eq. 11) puts BN before the activation and drops the conv bias; the table puts BN
  after the second ReLU of each block and its parameter counts include the biases. We follow
  the table. Its row 16 lists BN with "dropout 0.2, ReLU": dense -> BN -> ReLU -> dropout.
- The softmax (row 18) is left to the loss: the model returns logits.
- Not stated, so Keras defaults: glorot_uniform weights, zero biases, BN momentum 0.99 /
  epsilon 1e-3 (see keras_init). Input is pixels in [0, 1], as Keras users feed x / 255.
- The no-BN variant (the paper's ablation, Figure 3c-d) removes all four BN layers and keeps
  everything else, dropout included: 2,784,711 parameters.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ferlab.models.keras_init import batch_norm1d, batch_norm2d, conv2d, init_keras_
from ferlab.models.registry import register_model


@dataclass
class Triwijoyo2021Config:
    widths: tuple = (64, 128, 256)
    kernel_sizes: tuple = (5, 5, 3)  # block 3 is 3x3: see the module docstring
    dense: int = 128
    dropout: float = 0.2
    batch_norm: bool = True
    num_classes: int = 7
    in_chans: int = 1


class ConvBlock(nn.Sequential):
    """conv -> ReLU -> conv -> ReLU -> [BN] -> maxpool 2 (Table 1 rows 2-5, 6-9, 10-13)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, batch_norm: bool):
        super().__init__(
            conv2d(cin, cout, kernel_size), nn.ReLU(),
            conv2d(cout, cout, kernel_size), nn.ReLU(),
            batch_norm2d(cout) if batch_norm else nn.Identity(),
            nn.MaxPool2d(2),
        )


class Triwijoyo2021(nn.Module):
    def __init__(self, config: Triwijoyo2021Config):
        super().__init__()
        self.config = c = config
        blocks, cin = [], c.in_chans
        for width, k in zip(c.widths, c.kernel_sizes):
            blocks.append(ConvBlock(cin, width, k, c.batch_norm))
            cin = width
        self.features = nn.Sequential(*blocks)
        side = 48 // 2 ** len(c.widths)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, c.dense),
            batch_norm1d(c.dense) if c.batch_norm else nn.Identity(),
            nn.ReLU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.dense, c.num_classes),
        )
        init_keras_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model
def triwijoyo2021(**kwargs) -> Triwijoyo2021:
    """Triwijoyo 2021: 3 double-conv blocks + BN, dense 128 (Table 1, 2,787,015 Keras params)."""
    return Triwijoyo2021(Triwijoyo2021Config(**kwargs))


@register_model
def triwijoyo2021_nobn(**kwargs) -> Triwijoyo2021:
    """Triwijoyo 2021 ablation: the same CNN without its four BN layers."""
    return Triwijoyo2021(Triwijoyo2021Config(batch_norm=False, **kwargs))
