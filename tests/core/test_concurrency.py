"""Several browser sessions share one bundle. convlens's own forwards all hold ``bundle.lock``;
hooks are also thread-scoped, so code that runs the model without the lock (a third-party
method, a future fast path) can neither trigger nor disturb another session's hooks. These
tests force the overlaps for real (events and barriers, not luck) and would fail if a hook
fired on another thread's forward, if a capture counted a foreign forward, or if any
result differed from the serial one."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from analysis.core.hooks import capture, count_hooks
from analysis.core.images import gallery_image
from analysis.core.predict import logits

LAYER = "_blocks.10"


def grad_job(bundle, image, target, layer=LAYER, while_hooked=None):
    """Activation, its gradient and the input gradient of a class score, with the number of
    forwards the capture saw. ``while_hooked()`` runs after the hooks are in place and
    before this job's own forward (to let other threads run forwards meanwhile)."""
    x = bundle.inputs(image).requires_grad_(True)
    with bundle.lock:
        with capture(bundle.model, [layer], grads=True) as acts:
            if while_hooked is not None:
                while_hooked()
            score = bundle.model(x)[0, target]
            score.backward()
    return acts[layer].numpy().copy(), acts.grads[layer].numpy().copy(), x.grad.numpy().copy(), acts.calls[layer]


def test_a_capture_never_sees_another_threads_forward(lite0):
    """Thread A holds the lock with its hooks registered and waits; thread B runs three
    forwards of the same model meanwhile, without the lock. A's capture must count only A's
    own forward, and B's logits must be the reference."""
    im_a, im_b = gallery_image("chelsea"), gallery_image("coffee")
    ref_b = logits(lite0, im_b)[0]

    def raw_forward():                     # what code that ignores the lock would do
        with torch.inference_mode():
            return lite0.model(lite0.inputs(im_b))[0].float().numpy()
    serial = grad_job(lite0, im_a, 281)
    hooked, b_done = threading.Event(), threading.Event()
    out = {}

    def wait_for_b():
        hooked.set()
        assert b_done.wait(300), "thread B did not finish"

    def thread_b():
        assert hooked.wait(300)
        out["b"] = [raw_forward() for _ in range(3)]             # no lock, while A's hooks are in
        b_done.set()

    tb = threading.Thread(target=thread_b)
    tb.start()
    a = grad_job(lite0, im_a, 281, while_hooked=wait_for_b)
    tb.join(300)
    assert a[3] == 1, f"A's capture saw {a[3]} forwards (B's leaked into it)"
    for x, y in zip(a[:3], serial[:3]):
        np.testing.assert_array_equal(x, y)
    for lg in out["b"]:
        np.testing.assert_allclose(lg, ref_b, rtol=1e-5, atol=1e-5)
    assert count_hooks(lite0.model) == 0


def test_eight_sessions_interleaved_equal_serial(lite0):
    """8 threads released together by a barrier: each runs a lock-free prediction, then a
    hooked gradient job (which holds the lock), then another prediction, so hooked jobs and
    plain forwards interleave. Every result equals the serial one; no hook is left."""
    names = ["chelsea", "coffee", "astronaut", "rocket"]
    jobs = [(gallery_image(names[i % 4]), [281, 967, 0, 812][i % 4]) for i in range(8)]
    serial = [(logits(lite0, im), grad_job(lite0, im, t)) for im, t in jobs]
    barrier = threading.Barrier(8)

    def session(job):
        im, t = job
        barrier.wait(300)
        before = logits(lite0, im)
        g = grad_job(lite0, im, t)
        after = logits(lite0, im)
        return before, g, after

    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(session, jobs))
    for (ref_logits, ref_g), (before, g, after) in zip(serial, parallel):
        np.testing.assert_allclose(before, ref_logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(after, ref_logits, rtol=1e-5, atol=1e-5)
        assert g[3] == 1, f"a capture saw {g[3]} forwards"
        for a, b in zip(g[:3], ref_g[:3]):
            np.testing.assert_array_equal(a, b)
    assert count_hooks(lite0.model) == 0
    assert all(not p.requires_grad and p.grad is None for p in lite0.model.parameters())
