"""CRP: conditional relevance on a hand-weighted net against autograd, channel sums, and the
data-set job kind ``crp`` (galleries) through the executor."""
import numpy as np
import pytest
import torch

from analysis.core.models.bundle import ModelBundle, Preprocessing
from analysis.relevance.crp import channel_relevance, conditional_heatmaps
from tests.relevance.test_lrp import X, hand_net


def _bundle():
    pre = Preprocessing(input_size=3, resize_size=3, mean=(0.0,), std=(1.0,), grayscale=True)
    return ModelBundle(hand_net(), pre, ["a", "b"], "hand", "hand", "random")


IMG = np.stack([X[0, 0].numpy() * 80] * 3, -1).astype(np.uint8)


def test_conditional_relevance_equals_masked_gradient_times_input():
    """ε-LRP on a bias-free ReLU net is gradient x input, so the CRP map of channel c is
    x * d/dx <mask_c * dS/da, a> — computed here by autograd."""
    b = _bundle()
    x = b.inputs(IMG)
    cr = channel_relevance(b, IMG, 0, "1", "epsilon", epsilon=1e-9)
    cm = conditional_heatmaps(b, IMG, 0, "1", [0, 1], "epsilon", epsilon=1e-9)
    net = b.model
    xi = x.clone().requires_grad_(True)
    with torch.enable_grad():
        a = net[1](net[0](xi))
        s = net[3](net[2](a))[0, 0]
        (ga,) = torch.autograd.grad(s, a, retain_graph=True)
        for k, c in enumerate([0, 1]):
            mask = torch.zeros_like(ga)
            mask[:, c] = 1
            (gx,) = torch.autograd.grad(a, xi, grad_outputs=ga * mask, retain_graph=True)
            assert np.allclose(cm.maps[k], (gx * x)[0].sum(0).numpy(), atol=1e-5)
    # each channel's relevance = its conditional map's total; channels add up to the score
    assert np.allclose(cm.sums, cr.relevance, rtol=1e-5)
    assert cr.relevance.sum() == pytest.approx(cr.score, rel=1e-5)
    assert np.allclose(cm.maps.sum(0), cr.heatmap, atol=1e-5)
    assert cr.top(1) == [int(np.argmax(cr.relevance))]
    assert all(not m._forward_hooks for m in b.model.modules())


def test_crp_refuses_a_non_spatial_layer_and_bad_channel():
    from analysis.core.errors import ConvlensError
    b = _bundle()
    with pytest.raises(ConvlensError, match="channels, height, width"):
        channel_relevance(b, IMG, 0, "3")
    with pytest.raises(ConvlensError, match="2 channels; no channel 5"):
        conditional_heatmaps(b, IMG, 0, "1", [5])


def test_crp_gallery_job_through_the_executor(tmp_path):
    from analysis.dataset.executor import JobSpec, run
    from analysis.relevance.workers import reference_gallery  # registers the "crp" kind
    spec = JobSpec("crp", "digits", "digits", params={"layer": "features.relu3"}, batch_size=12, indices=tuple(range(12)))
    res = run(spec, engine="local", data_dir=tmp_path)
    rel = res.array("channel_relevance")
    assert rel.shape == (12, 64)
    # the relevance of the layer's channels adds up to the explained score (EpsilonPlusFlat is
    # not exactly conservative with biases, but it is close on the digits CNN's deep layers)
    score = res.to_pandas(["score"])["score"].to_numpy()
    assert np.corrcoef(rel.sum(1), score)[0, 1] > 0.9
    # one image recomputed alone gives the same row (batching does not change relevance)
    from analysis.core.datasets import load_digits_dataset
    from analysis.core.models.loaders import ModelSpec, load_bundle
    b = load_bundle(ModelSpec(kind="digits"))
    t = int(res.to_pandas(["target"])["target"].iloc[5])
    one = channel_relevance(b, load_digits_dataset().get(5), t, "features.relu3")
    assert np.allclose(one.relevance, rel[5], rtol=1e-3, atol=1e-4 * np.abs(rel[5]).max())
    g = reference_gallery(res, 3, n=4)
    assert len(g) == 4 and g[0]["value"] == pytest.approx(rel[:, 3].max())
    assert [r["value"] for r in g] == sorted([r["value"] for r in g], reverse=True)
    act = reference_gallery(res, 3, n=4, by="activation")
    assert act[0]["value"] == pytest.approx(res.array("channel_activation")[:, 3].max())
    again = run(spec, engine="local", data_dir=tmp_path)        # cached: same rows, no recompute
    assert np.array_equal(again.array("channel_relevance"), rel)
