"""fast_pooling: max pooling through channels-last gives the same tensors, bit for bit,
and leaves alone what it must (gradients, indices, other layouts, other threads)."""
import itertools
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.core.fastops import fast_pooling


def _maps(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 13, 11, generator=g, dtype=dtype)
    x[0, 0, :4, :4] = float("nan")                          # NaN propagates in both kernels
    x[0, 1, 2:6, 3:9] = float("inf")
    x[1, 2] = float("-inf")                                  # a plane of -inf: padding never wins
    x[2] = torch.randint(0, 3, (5, 13, 11), generator=g).to(dtype)     # many ties
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_bits_as_the_plain_kernel_over_the_parameter_grid(dtype):
    x = _maps(dtype)
    grid = itertools.product((2, 3, (2, 3)), (None, 1, 2), (0, 1), (1, 2), (False, True))
    n = 0
    for k, stride, pad, dil, ceil in grid:
        kk = (k, k) if isinstance(k, int) else k
        if pad > min(kk) // 2:                               # torch's own limit
            continue
        args = (k, stride, pad, dil, ceil)
        with torch.inference_mode():
            ref = F.max_pool2d(x, *args)
            with fast_pooling() as fp:
                got = F.max_pool2d(x, *args)
        assert fp.routed == 1
        assert got.is_contiguous() and got.shape == ref.shape
        assert torch.equal(got.nan_to_num(7.0), ref.nan_to_num(7.0)) and torch.equal(got.isnan(), ref.isnan()), args
        n += 1
    assert n > 40


def test_modules_and_models_give_the_same_logits(digits):
    import torchvision
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    xd = digits.inputs([torch.randint(0, 255, (8, 8, 3), dtype=torch.uint8).numpy() for _ in range(4)])
    # the digits CNN's maps are channels-last already (its one-channel input is both layouts,
    # and the convolutions keep channels-last): nothing to route, the same logits
    for model, inp, pools in ((resnet, x, 1), (digits.model, xd, 0)):
        with torch.inference_mode():
            ref = model(inp)
            with fast_pooling() as fp:
                got = model(inp)
        assert fp.routed == pools and torch.equal(got, ref)


def test_what_it_leaves_alone():
    x = _maps()
    xg = x.clone().requires_grad_(True)
    with fast_pooling() as fp:
        y = F.max_pool2d(xg, 2)                              # gradient through the pooling: plain kernel
        F.max_pool2d(x, 2, return_indices=True)              # indices
        F.max_pool2d(x, 2, 2, 0, 1, False, True)             # indices, positionally
        F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2)   # already channels-last
        F.max_pool2d(x[:, :1], 2)                            # one channel: nothing to gain
        F.max_pool2d(x.half(), 2)                            # other dtypes
        F.avg_pool2d(x, 2)                                   # only the max is order-free
    assert fp.routed == 0
    (g,) = torch.autograd.grad(y.nan_to_num().sum(), xg)
    (ref,) = torch.autograd.grad(F.max_pool2d(xg, 2).nan_to_num().sum(), xg)
    assert torch.equal(g, ref)
    with fast_pooling() as fp, torch.no_grad():
        F.max_pool2d(xg, 2)                                  # no grad mode: routed
        nn.MaxPool2d(3, 2, 1)(x)
    assert fp.routed == 2


def test_thread_local():
    x = _maps()
    seen = {}

    def other():
        with torch.inference_mode():
            seen["y"] = F.max_pool2d(x, 2)
    with fast_pooling() as fp:
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert fp.routed == 0 and torch.equal(seen["y"].nan_to_num(), F.max_pool2d(x, 2).nan_to_num())
