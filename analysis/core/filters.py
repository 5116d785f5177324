"""Small differentiable image filters shared by several families."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (N, C, H, W) tensor with reflect padding; ``sigma`` in
    pixels (0 returns a copy). The kernel is capped at the image size.

    Args:
        x: image batch (N, C, H, W), H and W at least 2.
        sigma: standard deviation in pixels; the kernel spans ±3 sigma.
    """
    if sigma <= 0:
        return x.clone()
    k = int(2 * math.ceil(3 * sigma) + 1)
    k = min(k, 2 * (min(x.shape[-2:]) // 2) - 1)
    coords = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).view(1, 1, -1)
    c = x.shape[1]
    y = F.pad(x, [k // 2] * 4, mode="reflect")
    y = F.conv2d(y, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(y, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
