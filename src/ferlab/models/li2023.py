"""li2023: the small two-conv CNN of an epochs ("iterations") study.

A. Li, "Facial Emotion Recognition and Impact Analysis of Iteration Based on Convolutional
Neural Networks", DAML 2023 (section 2.2.1, Figure 3).

    48x48x1 -> conv 32 3x3, ReLU -> maxpool 2 -> conv 64 3x3, ReLU -> maxpool 2
            -> flatten (10x10x64 = 6400) -> dense 128, ReLU -> dense 7
    839,047 parameters (no BN, so the Keras count equals the learnable one).

The paper gives the layer sequence (two convolutional layers, each followed by a 2x2 max
pooling layer, a flatten layer and two fully connected layers, ReLU activations, softmax output)
and nothing else. What is built here, and why:

- Widths and kernels are not given: 32 and 64 filters of 3x3 and a 128-unit hidden dense layer,
  the textbook Keras layout this description matches. They are config fields.
- Figure 3 labels the first layers "Conv1d" and "Max pooling layer 1d (2*2)": read as "the first
  Conv2D / MaxPooling2D", since the input is a 48x48 image and the pooling window is 2x2.
- Padding is not given: Keras' default "valid" (48 -> 46 -> 23 -> 21 -> 10).
- No dropout or BN is mentioned, so there is none. Keras defaults otherwise (glorot_uniform,
  zero biases; see keras_init). The softmax is left to the loss (logits out); input is pixels
  in [0, 1].
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ferlab.models.keras_init import conv2d, init_keras_
from ferlab.models.registry import register_model


@dataclass
class Li2023Config:
    widths: tuple = (32, 64)
    kernel_size: int = 3
    padding: str = "valid"
    dense: int = 128
    num_classes: int = 7
    in_chans: int = 1


class Li2023(nn.Module):
    def __init__(self, config: Li2023Config):
        super().__init__()
        self.config = c = config
        layers, cin, side = [], c.in_chans, 48
        for width in c.widths:
            layers += [conv2d(cin, width, c.kernel_size, c.padding), nn.ReLU(), nn.MaxPool2d(2)]
            cin = width
            side = (side - (c.kernel_size - 1 if c.padding == "valid" else 0)) // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, c.dense),
            nn.ReLU(),
            nn.Linear(c.dense, c.num_classes),
        )
        init_keras_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model
def li2023(**kwargs) -> Li2023:
    """Li 2023: conv-pool-conv-pool, dense 128, dense 7 (widths chosen, the paper gives none)."""
    return Li2023(Li2023Config(**kwargs))
