"""Common corruptions, generated on the fly from clean images (NCHW in [0, 1]) on their device,
the whole batch at once, seeded by a torch.Generator: two models given the same generator
seed see the same corrupted images. Severity s = 1..5 picks the s-th parameter below;
severity 0 is the identity. Every corruption returns the input's shape, clipped to [0, 1],
and works for gray and RGB images.

The `imagecorruptions` package (the CIFAR-10-C / ImageNet-C reference code) would pull
numpy 2, opencv and scikit-image here (its dependencies; numpy stays below 2 for escnn), so
these are raystudy's own definitions of the same names. Where the CIFAR-10-C code
(Hendrycks & Dietterich 2019) has a parameter table for 32×32 images, the table is the
same; where its implementation uses a library (Wand's motion blur), ours is stated.

Noise (CIFAR-10-C tables):
  gaussian_noise  x + c·N(0, 1)                     c = .04, .06, .08, .09, .10
  shot_noise      Poisson(c·x) / c                  c = 500, 250, 100, 75, 50
  impulse_noise   a fraction c of the values set to 0 or 1 (salt and pepper, equal odds)
                                                    c = .01, .02, .03, .05, .07
  speckle_noise   x + x·c·N(0, 1)                   c = .06, .10, .12, .16, .20
Blur:
  gaussian_blur   Gaussian of std c pixels (reflected edges)        c = .4, .6, .7, .8, 1.0
  defocus_blur    disk of radius r, then a 3×3 Gaussian of std a    (r, a) = (.3, .4), (.4, .5),
                  (the CIFAR-10-C table)                             (.5, .6), (1, .2), (1.5, .1)
  motion_blur     ours: the mean of the image shifted by 0..k pixels along a random direction
                  per image (uniform in [-45°, 45°], nearest pixel), weights exp(-i²/2σ²)
                                                    σ = 1, 1.5, 2, 2.5, 3; k = ceil(3σ)
Digital (CIFAR-10-C tables):
  brightness      V + c in HSV (hue and saturation kept; gray: x + c)  c = .05, .1, .15, .2, .3
  contrast        (x - m)·c + m, m the image's per-channel mean        c = .75, .5, .4, .3, .15
  pixelate        area-downsample to c·size, nearest-upsample back     c = .95, .9, .85, .75, .65
Geometric (MNIST-C style, Mu & Gilmer 2019; MNIST-C has one severity, these are five of ours;
bilinear resampling, black outside the image):
  rotate          by ±c degrees (sign random per image)               c = 10, 20, 30, 40, 50
  shear           horizontal shear ±c (x' = x + c·y)                  c = .1, .2, .3, .4, .5
  scale           shrink about the centre by c                        c = .9, .8, .7, .6, .5
  translate       shift by ±c·size pixels on each axis (rounded)      c = .04, .08, .12, .16, .2

Sets: `mnist_c` (the MNIST-C members defined here: shot_noise, impulse_noise, motion_blur,
brightness, rotate, shear, scale, translate), `cifar10_c` (gaussian_noise,
shot_noise, impulse_noise, defocus_blur, motion_blur, brightness, contrast, pixelate).
Not defined here (left out): MNIST-C's glass_blur, stripe, fog, spatter, dotted_line, zigzag,
canny_edges; CIFAR-10-C's glass_blur, zoom_blur, snow, frost, fog, elastic_transform,
jpeg_compression.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Fn = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
TABLE: dict[str, tuple[Fn, tuple]] = {}


def corruption(name: str, params: tuple):
    def deco(fn: Fn) -> Fn:
        TABLE[name] = (fn, params)
        return fn
    return deco


def apply(name: str, x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Corruption `name` at `severity` (0: x itself) of a batch x in [0, 1]."""
    if severity == 0:
        return x
    fn, params = TABLE[name]
    return fn(x, params[severity - 1], g).clamp(0.0, 1.0)


def _randn(x, g):
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _rand(shape, x, g):
    return torch.rand(shape, generator=g, device=x.device, dtype=x.dtype)


def _sign(x, g):
    return torch.where(_rand((len(x),), x, g) < 0.5, -1.0, 1.0).to(x.dtype)


# ------------------------------------------------------------------------------ noise

@corruption("gaussian_noise", (0.04, 0.06, 0.08, 0.09, 0.10))
def gaussian_noise(x, c, g):
    return x + c * _randn(x, g)


@corruption("shot_noise", (500.0, 250.0, 100.0, 75.0, 50.0))
def shot_noise(x, c, g):
    return torch.poisson(x * c, generator=g) / c


@corruption("impulse_noise", (0.01, 0.02, 0.03, 0.05, 0.07))
def impulse_noise(x, c, g):
    hit = _rand(x.shape, x, g) < c
    salt = (_rand(x.shape, x, g) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


@corruption("speckle_noise", (0.06, 0.10, 0.12, 0.16, 0.20))
def speckle_noise(x, c, g):
    return x + x * c * _randn(x, g)


# ------------------------------------------------------------------------------- blur

def _filter(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each channel convolved with the 2-D kernel k (odd sides), reflected edges."""
    n, ch, h, w = x.shape
    ph, pw = k.shape[0] // 2, k.shape[1] // 2
    xp = F.pad(x.reshape(n * ch, 1, h, w), (pw, pw, ph, ph), mode="reflect" if max(ph, pw) < min(h, w) else
               "replicate")
    return F.conv2d(xp, k.to(x)[None, None]).reshape(n, ch, h, w)


def _gauss(sigma: float, radius: int | None = None) -> torch.Tensor:
    r = radius if radius is not None else max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    return k[:, None] * k[None, :]


@corruption("gaussian_blur", (0.4, 0.6, 0.7, 0.8, 1.0))
def gaussian_blur(x, c, g):
    return _filter(x, _gauss(c))


@corruption("defocus_blur", ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)))
def defocus_blur(x, c, g):
    radius, alias = c
    r = max(1, math.ceil(radius))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2).float()
    disk = F.conv2d(F.pad(disk[None, None], (1, 1, 1, 1)), _gauss(alias, 1)[None, None])[0, 0]
    return _filter(x, disk / disk.sum())


@corruption("motion_blur", (1.0, 1.5, 2.0, 2.5, 3.0))
def motion_blur(x, c, g):
    n, ch, h, w = x.shape
    k = math.ceil(3 * c)
    angle = (_rand((n,), x, g) * 90.0 - 45.0) * math.pi / 180.0
    steps = torch.arange(k + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-steps ** 2 / (2 * c ** 2))
    weights = weights / weights.sum()
    dx = torch.round(steps[None] * torch.cos(angle)[:, None]).long() + k     # [n, k+1]
    dy = torch.round(steps[None] * torch.sin(angle)[:, None]).long() + k
    kern = torch.zeros(n, 2 * k + 1, 2 * k + 1, device=x.device, dtype=x.dtype)
    kern.index_put_((torch.arange(n, device=x.device)[:, None].expand_as(dx), dy, dx),
                    weights.expand(n, -1).contiguous(), accumulate=True)
    pad = "reflect" if k < min(h, w) else "replicate"
    xp = F.pad(x.reshape(1, n * ch, h, w), (k, k, k, k), mode=pad)
    kern = kern.repeat_interleave(ch, 0)[:, None]                           # one kernel per image
    return F.conv2d(xp, kern.flip(-1, -2), groups=n * ch).reshape(n, ch, h, w)


# ---------------------------------------------------------------------------- digital

@corruption("brightness", (0.05, 0.10, 0.15, 0.20, 0.30))
def brightness(x, c, g):
    if x.shape[1] == 1:
        return x + c
    v = x.amax(1, keepdim=True)
    # HSV with hue and saturation kept: every channel scales with V; black becomes gray c.
    scaled = x * ((v + c).clamp(max=1.0) / v.clamp(min=1e-12))
    return torch.where(v > 0, scaled, torch.full_like(x, c))


@corruption("contrast", (0.75, 0.5, 0.4, 0.3, 0.15))
def contrast(x, c, g):
    m = x.mean((2, 3), keepdim=True)
    return (x - m) * c + m


@corruption("pixelate", (0.95, 0.9, 0.85, 0.75, 0.65))
def pixelate(x, c, g):
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h * c)), max(1, round(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


# -------------------------------------------------------------------------- geometric

def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """x resampled through per-image 2×3 maps (output -> input, normalized coordinates)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _maps(n, x, a, b, c, d, tx=0.0, ty=0.0):
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = a, b, tx
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = c, d, ty
    return theta


@corruption("rotate", (10.0, 20.0, 30.0, 40.0, 50.0))
def rotate(x, c, g):
    t = _sign(x, g) * c * math.pi / 180.0
    h, w = x.shape[-2:]
    # In normalized coordinates a rotation of a non-square image needs the aspect ratio.
    return _affine(x, _maps(len(x), x, torch.cos(t), -torch.sin(t) * h / w, torch.sin(t) * w / h, torch.cos(t)))


@corruption("shear", (0.1, 0.2, 0.3, 0.4, 0.5))
def shear(x, c, g):
    s = _sign(x, g) * c
    h, w = x.shape[-2:]
    return _affine(x, _maps(len(x), x, 1.0, s * h / w, 0.0, 1.0))


@corruption("scale", (0.9, 0.8, 0.7, 0.6, 0.5))
def scale(x, c, g):
    return _affine(x, _maps(len(x), x, 1.0 / c, 0.0, 0.0, 1.0 / c))


@corruption("translate", (0.04, 0.08, 0.12, 0.16, 0.20))
def translate(x, c, g):
    h, w = x.shape[-2:]
    sx, sy = _sign(x, g) * round(c * w), _sign(x, g) * round(c * h)
    # A shift of s pixels is 2s/size in normalized coordinates (output -> input: minus).
    return _affine(x, _maps(len(x), x, 1.0, 0.0, 0.0, 1.0, -2 * sx / w, -2 * sy / h))


SETS = {
    "mnist_c": ("shot_noise", "impulse_noise", "motion_blur", "brightness", "rotate", "shear", "scale", "translate"),
    "cifar10_c": ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "brightness",
                  "contrast", "pixelate"),
    "all": tuple(TABLE),
}
