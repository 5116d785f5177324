"""Several browser sessions share one bundle: 8 threads doing forward + backward with
hooks at once must get exactly the serial results, and leave no hook behind."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from analysis.core.hooks import capture, count_hooks
from analysis.core.images import gallery_image
from analysis.core.predict import logits


def grad_job(bundle, image, target, layer="_blocks.10"):
    """Activation of a layer and input gradient of a class score (hooks + backward)."""
    x = bundle.inputs(image).requires_grad_(True)
    with bundle.lock:
        with capture(bundle.model, [layer], grads=True) as acts:
            score = bundle.model(x)[0, target]
            score.backward()
    return acts[layer].numpy().copy(), acts.grads[layer].numpy().copy(), x.grad.numpy().copy()


def test_eight_threads_equal_serial(lite0):
    names = ["chelsea", "coffee", "astronaut", "rocket"]
    jobs = [(gallery_image(names[i % 4]), [281, 967, 0, 812][i % 4]) for i in range(8)]
    serial = [grad_job(lite0, im, t) for im, t in jobs]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda j: grad_job(lite0, *j), jobs))
    for s, p in zip(serial, parallel):
        for a, b in zip(s, p):
            np.testing.assert_array_equal(a, b)
    assert count_hooks(lite0.model) == 0
    assert all(not p.requires_grad and p.grad is None for p in lite0.model.parameters())


def test_plain_inference_concurrent_with_hooked_jobs(lite0):
    """Lock-free predictions from other sessions run while hooked jobs hold the lock."""
    im = gallery_image("coffee")
    ref = logits(lite0, im)
    with ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(grad_job, lite0, gallery_image("chelsea"), 281) if i % 2 else
                pool.submit(logits, lite0, im) for i in range(8)]
        out = [f.result() for f in futs]
    for i, o in enumerate(out):
        if i % 2 == 0:
            np.testing.assert_allclose(o, ref, rtol=1e-5, atol=1e-5)
    assert count_hooks(lite0.model) == 0
