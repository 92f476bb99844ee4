"""Batched, on-device spatial transforms (nearest neighbour, black fill).

All transforms are one gather over a batch: each output pixel takes the input pixel
nearest to its inverse-transformed position, or 0 outside the image. Pixel centres
are measured from the image centre, so a rotation by a multiple of 90° maps pixels
onto pixels exactly (equal to torch.rot90) and an integer translation is an exact
shift. Positive angles rotate counter-clockwise as displayed (like torch.rot90, k=1).
"""

from __future__ import annotations

import math

import torch


def transform(x: torch.Tensor, angles_deg: torch.Tensor | None = None,
              shifts: torch.Tensor | None = None, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate by `angles_deg` (N,), then translate by `shifts` (N, 2) = (dx, dy) pixels.

    dx > 0 moves content right, dy > 0 moves it down. `flip` (N,) bool mirrors
    horizontally first. Returns a new tensor of the same shape, dtype and device.
    """
    n, c, h, w = x.shape
    dev = x.device
    ys = torch.arange(h, device=dev, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, device=dev, dtype=torch.float32) - (w - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")           # (H, W) output pixel centres
    px = gx.reshape(1, -1).expand(n, -1)
    py = gy.reshape(1, -1).expand(n, -1)
    if shifts is not None:
        shifts = shifts.to(device=dev, dtype=torch.float32)
        px = px - shifts[:, :1]
        py = py - shifts[:, 1:2]
    if angles_deg is not None:
        a = angles_deg.to(device=dev, dtype=torch.float32) * (math.pi / 180.0)
        cos, sin = torch.cos(a)[:, None], torch.sin(a)[:, None]
        # Inverse rotation. Rows grow downwards, so a counter-clockwise turn on screen
        # is a clockwise one in (x, row) coordinates.
        sx = cos * px - sin * py
        sy = sin * px + cos * py
        px, py = sx, sy
    if flip is not None:
        px = torch.where(flip.to(dev)[:, None], -px, px)
    col = torch.round(px + (w - 1) / 2)
    row = torch.round(py + (h - 1) / 2)
    valid = (col >= 0) & (col <= w - 1) & (row >= 0) & (row <= h - 1)
    idx = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1)).long()   # (N, H*W)
    flat = x.reshape(n, c, h * w)
    out = torch.gather(flat, 2, idx[:, None, :].expand(n, c, h * w))
    out = out * valid[:, None, :].to(out.dtype)
    return out.reshape(n, c, h, w)


def rotate(x: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate every image by the same angle."""
    return transform(x, angles_deg=torch.full((x.shape[0],), float(angle_deg), device=x.device))


def translate(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    shifts = torch.tensor([[dx, dy]], device=x.device, dtype=torch.float32).expand(x.shape[0], 2)
    return transform(x, shifts=shifts)


def random_params(n: int, rotation: float = 0.0, translation: int = 0, crop: int = 0,
                  flip: bool = False, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu"):
    """Draw per-image transform parameters on `device` (uniform angle, integer shifts)."""
    angles = shifts = flips = None
    if rotation > 0:
        angles = (torch.rand(n, generator=generator, device=device) * 2 - 1) * rotation
    # Pad-and-crop by p pixels is a random integer shift in [-p, p] with black fill.
    max_shift = translation + crop
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator, device=device).float()
    if flip:
        flips = torch.rand(n, generator=generator, device=device) < 0.5
    return angles, shifts, flips


def random_transform(x: torch.Tensor, rotation: float = 0.0, translation: int = 0, crop: int = 0,
                     flip: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation in [-rotation, rotation]° and shift in [-i, i] px, per image."""
    angles, shifts, flips = random_params(x.shape[0], rotation, translation, crop, flip, generator, x.device)
    if angles is None and shifts is None and flips is None:
        return x
    return transform(x, angles, shifts, flips)


def augment(x: torch.Tensor, spec, generator: torch.Generator | None = None, *,
            model: torch.nn.Module | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """Apply an AugmentSpec to a training batch (`worst_of_k` > 1 needs the model and labels)."""
    k = getattr(spec, "worst_of_k", 1)
    if k > 1:
        if model is None or y is None:
            raise ValueError("worst_of_k augmentation needs the model and the labels")
        return worst_of_k(model, x, y, spec, k, generator)
    return random_transform(x, spec.rotation, spec.translation, spec.crop, spec.flip, generator)


@torch.no_grad()
def worst_of_k(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, spec, k: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Per example, the one of k random transforms of `spec` with the highest cross-entropy
    (Engstrom et al., "Exploring the landscape of spatial robustness", ICML 2019: worst-of-k
    training, k = 10). The k draws come one after another from `generator`, so the first is
    the draw plain augmentation makes; the losses are taken in eval mode (as the training-time
    attacks are) and the model's mode is restored."""
    if not (spec.rotation or spec.translation or spec.crop or spec.flip):
        return x   # nothing to draw (a curriculum may widen the range in a later epoch)
    n = x.shape[0]
    cands = torch.stack([random_transform(x, spec.rotation, spec.translation, spec.crop, spec.flip, generator)
                         for _ in range(k)])                                   # (k, N, C, H, W)
    was_training = model.training
    model.eval()
    try:
        loss = torch.stack([torch.nn.functional.cross_entropy(model(c), y, reduction="none") for c in cands])
    finally:
        model.train(was_training)
    return cands[loss.argmax(0), torch.arange(n, device=x.device)]
