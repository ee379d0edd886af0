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
    # Photometric changes, for faces from cameras and photos rather than FER2013's crops:
    contrast: float = 0.0       # scale deviations from the image mean by uniform [1 - c, 1 + c]
    gamma: float = 0.0          # pixels ** g, log g uniform in [-log(1 + gamma), log(1 + gamma)]
    blur: float = 0.0           # probability of a Gaussian blur, sigma uniform in [0.3, 1.5] px
    noise: float = 0.0          # Gaussian noise, std uniform in [0, noise] (pixels in [0, 1])
    jpeg: float = 0.0           # probability of JPEG compression (8x8 DCT quantisation), quality 15-90

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
    # fernet's, widened to how faces reach the model from a detector (box offset and scale, tilted
    # heads) and from cameras (exposure, contrast, blur, sensor noise, JPEG).
    "robust": AugmentConfig(flip=True, rotation=15, shift=0.12, zoom=0.15, erasing=0.5, brightness=0.3,
                            contrast=0.3, gamma=0.4, blur=0.3, noise=0.04, jpeg=0.3),
}

PHOTOMETRIC = ("contrast", "gamma", "blur", "noise", "jpeg")


def get_augment(name: str) -> AugmentConfig:
    if name not in AUGMENT_PRESETS:
        raise FerlabError(f"unknown augmentation preset {name!r} (known: {', '.join(AUGMENT_PRESETS)})")
    return AUGMENT_PRESETS[name]


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def sample_params(cfg: AugmentConfig, n: int, gen: torch.Generator) -> dict:
    """Draw every random number for a batch of n images (always the same count of draws for a
    config; the photometric draws only where the config uses them, so older presets draw as before)."""
    params = {
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
    if any(getattr(cfg, name) for name in PHOTOMETRIC):
        params.update({
            "contrast": _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen),
            "gamma": torch.exp(_uniform(n, -math.log1p(cfg.gamma), math.log1p(cfg.gamma), gen)),
            "blur": torch.rand(n, generator=gen) < cfg.blur,
            "blur_sigma": _uniform(n, 0.3, 1.5, gen),
            "noise_std": _uniform(n, 0.0, cfg.noise, gen),
            "noise_seed": torch.randint(0, 2**31 - 1, (1,), generator=gen),
            "jpeg": torch.rand(n, generator=gen) < cfg.jpeg,
            "jpeg_quality": _uniform(n, 15, 90, gen),
        })
    return params


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
    if any(getattr(cfg, name) for name in PHOTOMETRIC):
        x = photometric(cfg, x, p)
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


def photometric(cfg: AugmentConfig, x: torch.Tensor, p: dict) -> torch.Tensor:
    """Contrast, gamma, blur, noise and JPEG artefacts, each with its own per-image parameters."""
    b = x.shape[0]
    view = (b, 1, 1, 1)
    if cfg.contrast:
        mean = x.mean((1, 2, 3), keepdim=True)
        x = ((x - mean) * p["contrast"].view(view).to(x.dtype) + mean).clamp_(0, 1)
    if cfg.gamma:
        x = x.clamp(1e-4, 1).pow(p["gamma"].view(view).to(x.dtype))
    if cfg.blur:
        x = torch.where(p["blur"].view(view), gaussian_blur(x, p["blur_sigma"]), x)
    if cfg.noise:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(p["noise_seed"][0])))
        x = (x + noise.to(x.device, x.dtype) * p["noise_std"].view(view).to(x.dtype)).clamp_(0, 1)
    if cfg.jpeg:
        x = torch.where(p["jpeg"].view(view), jpeg_compress(x, p["jpeg_quality"]), x)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Separable Gaussian blur of each image (B, 1, H, W) with its own sigma (B,): one grouped conv per axis."""
    b, c, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma.to(x.device, x.dtype).view(b, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)   # (B*C, 2r+1)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel.view(b * c, 1, -1, 1), groups=b * c)
    return y.reshape(b, c, h, w)


# JPEG's luminance quantisation table (ITU-T T.81, Annex K), for quality 50.
_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k, i = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    m = torch.cos((2 * i + 1) * k * math.pi / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


_DCT = _dct_matrix()


def jpeg_compress(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """What baseline JPEG does to a grayscale image (B, 1, H, W), H and W multiples of 8: 8x8 block
    DCT, quantisation with the standard luminance table scaled to each image's quality (IJG
    scaling), inverse DCT. The lossless entropy coding is left out: it changes no pixel."""
    b, c, h, w = x.shape
    q = quality.to(x.device, torch.float32).view(b, 1, 1, 1, 1, 1)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    table = ((_JPEG_LUMA.to(x.device) * scale + 50) / 100).floor().clamp(min=1)   # (B, 1, 1, 1, 8, 8)
    dct = _DCT.to(x.device)
    blocks = (x.float() * 255 - 128).reshape(b, c, h // 8, 8, w // 8, 8).transpose(3, 4)   # (B, C, H/8, W/8, 8, 8)
    coeffs = dct @ blocks @ dct.T
    blocks = dct.T @ (torch.round(coeffs / table) * table) @ dct
    return ((blocks.transpose(3, 4).reshape(b, c, h, w) + 128) / 255).clamp(0, 1).to(x.dtype)


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
