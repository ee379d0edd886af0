"""Batched data augmentation with tensor ops: one affine warp and one erasing mask per batch.

Every random number comes from a torch.Generator the caller owns (so a resumed run draws the
same numbers), and parameters are drawn for the whole *global* batch before a data-parallel
rank takes its slice, so N processes augment exactly as one process would.
"""

import math
from dataclasses import dataclass, asdict

import numpy as np
import torch
import torch.nn.functional as F

from ferlab.errors import FerlabError


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = False          # random horizontal flip (p = 0.5)
    rotation: float = 0.0       # max rotation, degrees (uniform in [-r, r])
    shift: float = 0.0          # max shift, fraction of the image size (x and y independently)
    zoom: float = 0.0           # scale uniform in [1 - z, 1 + z]
    brightness: float = 0.0     # multiply pixels by uniform [1 - b, 1 + b]
    erasing: float = 0.0        # probability of erasing one random rectangle (2-25% of the area)

    def is_identity(self) -> bool:
        return self == AugmentConfig()


# Presets: the papers' ImageDataGenerator settings and ferlab's own.
AUGMENT_PRESETS = {
    "none": AugmentConfig(),
    "flip": AugmentConfig(flip=True),
    # sarmah2023: zoom 0.1, rotation ±10°, width/height shift 0.1, horizontal flip.
    "sarmah2023": AugmentConfig(flip=True, rotation=10, shift=0.1, zoom=0.1),
    # bah2022 names flip, rotation, shift, zoom and brightness without values; Keras-typical values.
    "bah2022": AugmentConfig(flip=True, rotation=10, shift=0.1, zoom=0.1, brightness=0.2),
    # li2023 says "data augmentation" without details: the common flip + small affine.
    "li2023": AugmentConfig(flip=True, rotation=10, shift=0.1, zoom=0.1),
    "fernet": AugmentConfig(flip=True, rotation=10, shift=0.1, zoom=0.1, erasing=0.5),
}


def get_augment(name: str) -> AugmentConfig:
    if name not in AUGMENT_PRESETS:
        raise FerlabError(f"unknown augmentation preset {name!r} (known: {', '.join(AUGMENT_PRESETS)})")
    return AUGMENT_PRESETS[name]


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def sample_params(cfg: AugmentConfig, n: int, gen: torch.Generator) -> dict:
    """Draw every random number for a batch of n images (always the same count of draws)."""
    return {
        "flip": torch.rand(n, generator=gen) < (0.5 if cfg.flip else 0.0),
        "angle": _uniform(n, -cfg.rotation, cfg.rotation, gen) * (math.pi / 180),
        "scale": _uniform(n, 1 - cfg.zoom, 1 + cfg.zoom, gen),
        "tx": _uniform(n, -cfg.shift, cfg.shift, gen) * 2,  # affine_grid coordinates span [-1, 1]
        "ty": _uniform(n, -cfg.shift, cfg.shift, gen) * 2,
        "bright": _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen),
        "erase": torch.rand(n, generator=gen) < cfg.erasing,
        "erase_area": _uniform(n, 0.02, 0.25, gen),
        "erase_logratio": _uniform(n, math.log(0.3), math.log(3.3), gen),
        "erase_cx": torch.rand(n, generator=gen),
        "erase_cy": torch.rand(n, generator=gen),
    }


def apply_augment(cfg: AugmentConfig, x: torch.Tensor, p: dict) -> torch.Tensor:
    """Augment x (B, C, H, W) float in [0, 1] with parameters p (already sliced to B rows)."""
    if cfg.is_identity():
        return x
    b, _, h, w = x.shape
    p = {k: v.to(x.device) for k, v in p.items()}
    if cfg.rotation or cfg.shift or cfg.zoom or cfg.flip:
        if cfg.rotation or cfg.shift or cfg.zoom:
            # Output->input map: rotate, scale by 1/zoom, mirror x when flipping, then shift.
            cos, sin = torch.cos(p["angle"]) / p["scale"], torch.sin(p["angle"]) / p["scale"]
            mirror = torch.where(p["flip"], -1.0, 1.0).to(x.dtype)
            theta = torch.stack([
                torch.stack([cos * mirror, -sin, p["tx"]], 1),
                torch.stack([sin * mirror, cos, p["ty"]], 1),
            ], 1).to(x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        else:  # flip only: no resampling
            x = torch.where(p["flip"].view(b, 1, 1, 1), x.flip(3), x)
    if cfg.brightness:
        x = (x * p["bright"].view(b, 1, 1, 1).to(x.dtype)).clamp_(0, 1)
    if cfg.erasing:
        ratio = torch.exp(p["erase_logratio"])
        eh = (torch.sqrt(p["erase_area"] * ratio) * h).clamp(max=h)
        ew = (torch.sqrt(p["erase_area"] / ratio) * w).clamp(max=w)
        y0 = p["erase_cy"] * (h - eh)
        x0 = p["erase_cx"] * (w - ew)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        mask = ((ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1))
                & (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1)) & p["erase"].view(b, 1, 1))
        x = x.masked_fill(mask.unsqueeze(1), 0.5)  # mid-grey: the mean pixel, no extra randomness
    return x


def mix_batch(x: torch.Tensor, mixup: float, cutmix: float, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """Mixup (alpha `mixup`) or CutMix (alpha `cutmix`) of a batch with itself reversed.

    Returns (mixed x, lam): the loss is lam * loss(y) + (1 - lam) * loss(y.flip(0)). Pairing
    image i with image B-1-i of an already shuffled batch is a random pairing that needs no
    permutation, so data-parallel ranks mix within their own slice. When both alphas are set,
    each batch uses one of the two with probability 1/2. Beta draws come from NumPy seeded by
    one draw of `gen`, so a resumed run mixes exactly as an uninterrupted one.
    """
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    partner = x.flip(0)
    if not use_cutmix:
        return lam * x + (1 - lam) * partner, lam
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    cy, cx = rng.random(2)
    y0, y1 = int(np.clip(round((cy - cut / 2) * h), 0, h)), int(np.clip(round((cy + cut / 2) * h), 0, h))
    x0, x1 = int(np.clip(round((cx - cut / 2) * w), 0, w)), int(np.clip(round((cx + cut / 2) * w), 0, w))
    x = x.clone()
    x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    return x, 1 - (y1 - y0) * (x1 - x0) / (h * w)  # lam of the box actually pasted (after clipping)


def describe(cfg: AugmentConfig) -> dict:
    return asdict(cfg)
