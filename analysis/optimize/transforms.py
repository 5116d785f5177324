"""Robustness transforms applied to the image before each forward: roll, jitter, pad,
scale, rotate, or MACO's batches of noisy random crops."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from analysis.core.errors import ParameterError

# =================================================================== transforms

class Transform:
    """A random, differentiable image transform; ``rng`` is the run's seeded generator."""
    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


def _randint(rng, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


class Roll(Transform):
    """Circular shift by up to ``max_px`` (CS231n's and DeepDream's jitter)."""
    def __init__(self, max_px: int):
        self.max_px = int(max_px)

    def __call__(self, x, rng):
        m = self.max_px
        return x if m <= 0 else torch.roll(x, shifts=(_randint(rng, -m, m), _randint(rng, -m, m)), dims=(-2, -1))


class Jitter(Transform):
    """Random crop that removes up to ``d`` pixels (lucent's jitter)."""
    def __init__(self, d: int):
        self.d = int(d)

    def __call__(self, x, rng):
        if self.d <= 0:
            return x
        h, w = x.shape[-2:]
        dy, dx = _randint(rng, 0, self.d - 1), _randint(rng, 0, self.d - 1)
        return x[..., dy:h - self.d + dy + 1, dx:w - self.d + dx + 1]


class Pad(Transform):
    def __init__(self, n: int, value: float = 0.5):
        self.n, self.value = int(n), float(value)

    def __call__(self, x, rng):
        return F.pad(x, [self.n] * 4, value=self.value) if self.n > 0 else x


class RandomScale(Transform):
    """Random zoom by a factor from ``scales`` about the centre, keeping the image size
    (reflection at the borders). Keeping the size matters on a GPU: every new input shape
    costs the convolution libraries about a second of planning the first time it is seen."""
    def __init__(self, scales: Sequence[float]):
        self.scales = list(scales)

    def __call__(self, x, rng):
        s = self.scales[_randint(rng, 0, len(self.scales) - 1)]
        if s == 1:
            return x
        theta = torch.tensor([[1 / s, 0.0, 0.0], [0.0, 1 / s, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class RandomRotate(Transform):
    def __init__(self, degrees: Sequence[float]):
        self.degrees = list(degrees)

    def __call__(self, x, rng):
        a = math.radians(self.degrees[_randint(rng, 0, len(self.degrees) - 1)])
        if a == 0:
            return x
        cos, sin = math.cos(a), math.sin(a)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class RandomCrops(Transform):
    """``n`` random square crops of each image, each resized to ``out`` px, with Gaussian and
    uniform noise (MACO's robustness, Fel et al. 2023): the batch grows ``n`` times and the
    objective averages over the crops. Crop sides are drawn in [``lo``, ``hi``] of the image
    side, centres around the middle with spread ``spread``; borders reflect."""
    def __init__(self, n: int, lo: float, hi: float, out: int, noise: float = 0.05, spread: float = 0.15):
        if not (1 <= int(n) <= 64):
            raise ParameterError("crops per step must be between 1 and 64.")
        if not (0 < lo <= hi <= 1.5):
            raise ParameterError("crop sides must satisfy 0 < min ≤ max ≤ 1.5 (fractions of the image).")
        if not (0 <= noise <= 1 and 0 <= spread <= 1):
            raise ParameterError("crop noise and spread must be in [0, 1].")
        self.n, self.lo, self.hi, self.out = int(n), float(lo), float(hi), int(out)
        self.noise, self.spread = float(noise), float(spread)

    def __call__(self, x, rng):
        m = x.shape[0] * self.n
        centre = (torch.randn(m, 2, generator=rng) * self.spread).clamp(-0.5, 0.5)
        side = self.lo + torch.rand(m, generator=rng) * (self.hi - self.lo)
        theta = torch.zeros(m, 2, 3)
        theta[:, 0, 0] = side
        theta[:, 1, 1] = side
        theta[:, :, 2] = 2 * centre
        grid = F.affine_grid(theta.to(x.device, x.dtype), [m, x.shape[1], self.out, self.out], align_corners=False)
        y = F.grid_sample(x.repeat_interleave(self.n, 0), grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)
        if self.noise:
            g = torch.randn(y.shape, generator=rng).to(y.device, y.dtype)
            u = torch.rand(y.shape, generator=rng).to(y.device, y.dtype) - 0.5
            y = y + self.noise * (g + u)
        return y


def standard_transforms() -> list[Transform]:
    """lucent's transformation-robustness stack: pad 12, jitter 8, scale ±10 %, rotate ±10°, jitter 4
    (scaling here keeps the size, so every step has the same input shape)."""
    return [Pad(12), Jitter(8), RandomScale([1 + (i - 5) / 50 for i in range(11)]),
            RandomRotate(list(range(-10, 11)) + 5 * [0]), Jitter(4)]

