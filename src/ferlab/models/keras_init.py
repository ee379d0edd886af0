"""Keras defaults in PyTorch, so the papers' Keras models start where Keras would start them.

All four papers built their CNNs in Keras; where a paper says nothing, Keras' defaults are what
the authors actually ran, so the ports reproduce them:

- `BatchNormalization(momentum=0.99, epsilon=1e-3)`. Keras' momentum is the weight kept on the old
  running average, PyTorch's the weight given to the new batch: Keras 0.99 == PyTorch 0.01.
  gamma=1, beta=0, moving mean 0 and variance 1, as in PyTorch.
- `Conv2D` / `Dense`: `kernel_initializer="glorot_uniform"`, `bias_initializer="zeros"`, bias on
  (even when a BatchNorm follows; the papers' parameter counts include those biases).
- `"he_normal"` (bah2022): `VarianceScaling(2.0, "fan_in", "truncated_normal")`, a normal cut at
  ±2σ whose σ = sqrt(2 / fan_in) / 0.8796..., the constant that restores the variance lost by the
  truncation. (PyTorch's `kaiming_normal_` is untruncated.)
- `padding="same"` with an odd kernel k and stride 1 is symmetric zero padding k // 2;
  `padding="valid"` (the Keras default) is none. `MaxPooling2D(2)` is `nn.MaxPool2d(2)` (floor).

Fan-in/out agree between the frameworks: a Keras kernel (kh, kw, in, out) and a PyTorch weight
(out, in, kh, kw) both give fan_in = kh*kw*in, fan_out = kh*kw*out.
"""

import math

import torch
import torch.nn as nn

BN_MOMENTUM = 0.01  # Keras momentum 0.99
BN_EPS = 1e-3
_TRUNCATION_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def batch_norm2d(channels: int) -> nn.BatchNorm2d:
    """Keras `BatchNormalization()` after a conv layer."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def batch_norm1d(features: int) -> nn.BatchNorm1d:
    """Keras `BatchNormalization()` after a dense layer."""
    return nn.BatchNorm1d(features, eps=BN_EPS, momentum=BN_MOMENTUM)


def conv2d(cin: int, cout: int, kernel_size: int, padding: str = "same") -> nn.Conv2d:
    """Keras `Conv2D(cout, kernel_size, padding=padding)` with stride 1 and a bias."""
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")
    if kernel_size % 2 == 0 and padding == "same":
        raise ValueError("'same' padding is only symmetric for odd kernels")
    return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2 if padding == "same" else 0)


@torch.no_grad()
def glorot_uniform_(weight: torch.Tensor) -> torch.Tensor:
    """Keras "glorot_uniform": U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""
    return nn.init.xavier_uniform_(weight)


@torch.no_grad()
def he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Keras "he_normal": normal truncated at ±2σ, σ = sqrt(2 / fan_in) / 0.8796..."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    std = math.sqrt(2.0 / fan_in) / _TRUNCATION_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


_INITIALIZERS = {"glorot_uniform": glorot_uniform_, "he_normal": he_normal_}


@torch.no_grad()
def init_keras_(model: nn.Module, conv_init: str = "glorot_uniform", dense_init: str = "glorot_uniform") -> nn.Module:
    """Initialise every Conv2d/Linear as Keras would (weights by name, biases zero); BN to 1/0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _INITIALIZERS[conv_init if isinstance(m, nn.Conv2d) else dense_init](m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_parameters()
    return model
