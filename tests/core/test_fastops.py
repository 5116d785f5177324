"""fast_pooling: a model's max pooling through channels-last gives the same tensors, bit for
bit, and leaves alone what it must (gradients, indices, other layouts, other threads); its
hooks are gone after the block."""
import itertools
import threading

import pytest
import torch
from torch import nn

from analysis.core.fastops import fast_pooling
from analysis.core.hooks import capture, count_hooks


def _maps(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 13, 11, generator=g, dtype=dtype)
    x[0, 0, :4, :4] = float("nan")                          # NaN propagates in both kernels
    x[0, 1, 2:6, 3:9] = float("inf")
    x[1, 2] = float("-inf")                                  # a plane of -inf: padding never wins
    x[2] = torch.randint(0, 3, (5, 13, 11), generator=g).to(dtype)     # many ties
    return x


def _same(a, b):
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_bits_as_the_plain_kernel_over_the_parameter_grid(dtype):
    x = _maps(dtype)
    n = 0
    for k, stride, pad, dil, ceil in itertools.product((2, 3, (2, 3)), (None, 1, 2), (0, 1), (1, 2), (False, True)):
        kk = (k, k) if isinstance(k, int) else k
        if pad > min(kk) // 2:                               # torch's own limit
            continue
        pool = nn.Sequential(nn.MaxPool2d(k, stride, pad, dil, ceil_mode=ceil))
        with torch.inference_mode():
            ref = pool(x)
            with fast_pooling(pool) as st:
                got = pool(x)
        assert st.modules == 1 and st.routed == 1
        assert got.is_contiguous() and got.shape == ref.shape and _same(got, ref), (k, stride, pad, dil, ceil)
        assert count_hooks(pool) == 0
        n += 1
    assert n > 40


def test_models_give_the_same_logits(digits, monkeypatch):
    import weakref

    import torchvision

    import analysis.core.fastops as fastops
    monkeypatch.setattr(fastops, "_POOLS", weakref.WeakKeyDictionary())    # the shared digits model: decide anew
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    xd = digits.inputs([torch.randint(0, 255, (8, 8, 3), dtype=torch.uint8).numpy() for _ in range(4)])
    # the digits CNN's maps are channels-last already (its one-channel input is both layouts,
    # and the convolutions keep channels-last): nothing to route, the same logits
    for model, inp, pools, routed in ((resnet, x, 1, 1), (digits.model, xd, 2, 0)):
        with torch.inference_mode():
            ref = model(inp)
            with fast_pooling(model) as st:
                got = model(inp)
        assert (st.modules, st.routed) == (pools, routed) and torch.equal(got, ref)
        assert count_hooks(model) == 0
        with fast_pooling(model) as st:                      # the first block's decision
            pass
        assert st.modules == (pools if routed else 0)


def test_a_capture_of_the_pooling_sees_the_usual_layout():
    m = nn.Sequential(nn.Conv2d(3, 6, 3), nn.MaxPool2d(2), nn.Flatten()).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode(), capture(m, "1") as acts, fast_pooling(m) as st:
        m(x)
    assert st.routed == 1 and acts["1"].is_contiguous()
    with torch.inference_mode():
        assert torch.equal(acts["1"], m[1](m[0](x)))


def test_what_it_leaves_alone():
    x = _maps()
    xg = x.clone().requires_grad_(True)
    pool = nn.Sequential(nn.MaxPool2d(2))
    with fast_pooling(pool) as st:
        pool(x)                                              # routed: the model is worth hooking
        y = pool(xg)                                         # gradient through the pooling: plain kernel
        pool(x.contiguous(memory_format=torch.channels_last))     # already channels-last
        pool(x[:, :1])                                       # one channel: nothing to gain
        pool(x.half())                                       # other dtypes
    assert st.routed == 1
    (g,) = torch.autograd.grad(y.nan_to_num().sum(), xg)
    (ref,) = torch.autograd.grad(pool(xg).nan_to_num().sum(), xg)
    assert torch.equal(g, ref)
    with fast_pooling(nn.Sequential(nn.MaxPool2d(2, return_indices=True), nn.AvgPool2d(2))) as st:
        pass
    assert st.modules == 0                                   # indices, and pooling that is not order-free
    with fast_pooling(pool) as st, torch.no_grad():
        pool(xg)                                             # no grad mode: routed
    assert st.routed == 1 and count_hooks(pool) == 0


def test_a_model_that_routed_nothing_is_not_hooked_again():
    x = _maps()
    pool = nn.Sequential(nn.MaxPool2d(2))
    with fast_pooling(pool) as st:
        pool(x.contiguous(memory_format=torch.channels_last))     # its maps: channels-last already
    assert (st.modules, st.routed) == (1, 0)
    with fast_pooling(pool) as st:
        assert count_hooks(pool) == 0
        pool(x)
    assert (st.modules, st.routed) == (0, 0)
    other = nn.Sequential(nn.MaxPool2d(2))
    with pytest.raises(RuntimeError):
        with fast_pooling(other):
            raise RuntimeError("before any pooling")
    with fast_pooling(other) as st:                          # an error decides nothing,
        pass
    with fast_pooling(other) as st:                          # nor a block without pooling,
        other(x.clone().requires_grad_(True))                # nor poolings that needed a gradient
    assert (st.calls, st.routed, st.grad) == (1, 0, 1)
    with fast_pooling(other) as st, torch.inference_mode():
        other(x)
    assert st.routed == 1


def test_thread_local_and_removed_on_error():
    x = _maps()
    pool = nn.Sequential(nn.MaxPool2d(2))
    seen = {}

    def other():
        with torch.inference_mode():
            seen["y"] = pool(x)
    with fast_pooling(pool) as st:
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert count_hooks(pool) == 2
        with torch.inference_mode():
            pool(x)
    assert st.routed == 1                                    # this thread's call, not the other's
    assert seen["y"].is_contiguous() and _same(seen["y"], nn.MaxPool2d(2)(x))
    with pytest.raises(RuntimeError, match="boom"):
        with fast_pooling(pool):
            raise RuntimeError("boom")
    assert count_hooks(pool) == 0


@pytest.mark.parametrize("layer", ["0", "1"])
def test_feature_and_patch_scans_give_the_same_values(layer, monkeypatch):
    # the embeddings' feature forward and the patch scan run inside fast_pooling: a capture at
    # the pooling itself ("0") and after it ("1") give what they give without it. (The pooling
    # comes first: torch's convolutions here may hand out channels-last maps, not routed.)
    import contextlib

    import analysis.embeddings.features as features
    import analysis.inside.patches as patches
    from analysis.core.models.bundle import ModelBundle, Preprocessing
    torch.manual_seed(0)
    model = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(3, 5, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    bundle = ModelBundle(model, Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), [str(i) for i in range(4)],
                         "toy", "Toy", "trusted")
    x = torch.randn(3, 3, 16, 16)
    x[0, 0, 4:8, 4:8] = 1.0                                  # ties
    got = features._forward(bundle, layer, x), patches._layer_maxima(bundle, layer, x)

    @contextlib.contextmanager
    def plain(model):
        yield None
    monkeypatch.setattr(features, "fast_pooling", plain)
    monkeypatch.setattr(patches, "fast_pooling", plain)
    ref = features._forward(bundle, layer, x), patches._layer_maxima(bundle, layer, x)
    flat = lambda t: [a for part in t for a in (part if isinstance(part, tuple) else (part,))]   # noqa: E731
    for g, r in zip(flat(got), flat(ref)):
        g, r = (torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v for v in (g, r))
        assert torch.equal(g, r)
    with fast_pooling(model) as st, torch.inference_mode():
        model(x)
    assert st.routed == 1 and count_hooks(model) == 0       # the model is one whose pooling is routed
