"""The in-process pipeline (decode threads, batch assembly, background writer) and the
decoded-crop cache: the same bits as decoding image by image, bad images still skipped and
listed, a changed file still reported, a torn cache slot recomputed."""
from __future__ import annotations

import os

import numpy as np
import pytest

from analysis.core.models.bundle import Preprocessing
from analysis.core.models.loaders import ModelSpec
from analysis.dataset.executor import JobSpec, plan, run
from analysis.dataset.manifest import CropCache, DatasetRef, crop_cache_budget, open_dataset
from analysis.dataset.runner import BatchRunner, slice_rows
from analysis.dataset.workers import WORKERS
from tests.dataset.conftest import write_digits_manifest

COLS = {"predict": ("index", "label", "pred", "confidence", "top_ids", "top_probs"),
        "saliency": ("index", "pred", "target", "map", "mass_centre", "flat")}


@pytest.fixture()
def cache_dir(tmp_path):
    """A fresh configured cache_dir for one test (the crop cache lives under it)."""
    import dataclasses

    from analysis.core.config import get_config, set_config
    old = get_config()
    set_config(dataclasses.replace(old, cache_dir=tmp_path / "cache"))
    yield tmp_path / "cache"
    set_config(old)


def _arrays(result, kind):
    return {c: result.array(c) for c in COLS[kind]}


def _count_reads(monkeypatch) -> dict:
    """Counts the images the runner reads and decodes (not served from the crop cache)."""
    calls = {"n": 0}
    orig = BatchRunner._decode

    def counted(self, rows, positions):
        calls["n"] += len(positions)
        return orig(self, rows, positions)
    monkeypatch.setattr(BatchRunner, "_decode", counted)
    return calls


@pytest.mark.parametrize("kind,params", [("predict", {}), ("saliency", {"method": "gradcam"})])
def test_crop_cache_gives_the_same_bits_and_skips_decoding(digits, tmp_path, monkeypatch, cache_dir, kind, params):
    spec = JobSpec(kind, ModelSpec("digits"), "digits", params=params, batch_size=24,
                   indices=tuple(range(90, 10, -1)))
    plain = run(spec, data_dir=tmp_path / "a", bundle=digits, crop_cache=False)
    calls = _count_reads(monkeypatch)
    cold = run(spec, data_dir=tmp_path / "b", bundle=digits)
    assert calls["n"] == 80                       # first pass: every image read and cropped once
    warm = run(spec, data_dir=tmp_path / "c", bundle=digits)
    assert calls["n"] == 80                       # second job: every crop from the cache
    for r in (cold, warm):
        got = _arrays(r, kind)
        for c, v in _arrays(plain, kind).items():
            assert np.array_equal(got[c], v), c
    cache = CropCache.open(open_dataset({"kind": "digits"}), digits.preprocess)
    assert cache.dir.parent.parent == cache_dir
    hit, crops = cache.get(np.array([10, 11, 90, 91, 5]))
    assert hit.tolist() == [False, True, True, False, False]
    ds = open_dataset({"kind": "digits"})
    assert np.array_equal(crops, np.stack([digits.preprocess.geometry(ds.get(i)) for i in (11, 90)]))
    cache.close()


def test_torn_cache_slot_is_recomputed_and_budget_switches_off(digits, monkeypatch, cache_dir):
    ds = open_dataset({"kind": "digits"})
    cache = CropCache.open(ds, digits.preprocess)
    crop = digits.preprocess.geometry(ds.get(3))
    cache.put(3, crop)
    hit, got = cache.get(np.array([3]))
    assert hit.tolist() == [True] and np.array_equal(got[0], crop)
    with open(cache.dir / "crops.u8", "r+b") as f:   # a torn write: the slot no longer matches its checksum
        f.seek(3 * cache.slot + 100)
        f.write(bytes([crop.reshape(-1)[100] ^ 0xFF]))
    hit, got = cache.get(np.array([3]))
    assert hit.tolist() == [False] and got.shape == (0, 32, 32, 3)
    idx = [9, 7, 8, 12, 3]                           # runs 7-9 and 12, and 3 again (repaired)
    crops = [digits.preprocess.geometry(ds.get(i)) for i in idx]
    cache.put_many(idx, crops)
    hit, got = cache.get(np.array([3, 7, 8, 9, 10, 12]))
    assert hit.tolist() == [True, True, True, True, False, True]
    assert np.array_equal(got, np.stack([crops[4], crops[1], crops[2], crops[0], crops[3]]))
    assert (np.asarray(cache._index[[3, 7]]) >> np.uint64(32)).tolist() == [2, 2]      # the vectorised tag
    # an entry written with a crc32 tag (an older cache) is still read and checked
    import zlib
    with open(cache.dir / "index.u64", "r+b") as f:
        f.seek(7 * 8)
        f.write(((1 << 32) | zlib.crc32(crops[1])).to_bytes(8, "little"))
        f.seek(8 * 8)
        f.write(((1 << 32) | (zlib.crc32(crops[2]) ^ 1)).to_bytes(8, "little"))   # a wrong crc: missing
    hit, got = cache.get(np.array([7, 8, 9]))
    assert hit.tolist() == [True, False, True] and np.array_equal(got, np.stack([crops[1], crops[0]]))
    cache.close()
    monkeypatch.setenv("CONVLENS_CROP_CACHE_MB", "0")
    assert crop_cache_budget() == 0 and CropCache.open(ds, digits.preprocess) is None
    monkeypatch.setenv("CONVLENS_CROP_CACHE_MB", "1")             # 1797 digits x 3 KiB do not fit in 1 MiB
    assert CropCache.open(ds, digits.preprocess) is None


def test_slot_hashes_see_any_changed_word_and_odd_slots_use_crc32(tmp_path):
    from analysis.core.models.bundle import Preprocessing
    from analysis.dataset.manifest import slot_hashes
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    h = slot_hashes(crops)
    assert h.dtype == np.uint64 and np.all(h < 2**32) and len(set(h.tolist())) == 50
    assert np.array_equal(slot_hashes(crops[10:20]), h[10:20])          # per row: any run gives the same
    for k in range(0, 192, 7):                                           # one changed byte anywhere
        torn = crops[5].copy().reshape(-1)
        torn[k] ^= 0x10
        assert slot_hashes(torn.reshape(1, 8, 8, 3))[0] != h[5]
    swapped = crops[5].copy().reshape(-1, 8)[::-1].reshape(1, 8, 8, 3)    # the same words, moved
    assert slot_hashes(swapped)[0] != h[5]
    # a 5 x 5 crop is 75 bytes: crc32 tags, read back the same
    cache = CropCache("odd", 4, Preprocessing(5, 5, (0.5,) * 3, (0.25,) * 3), cache_dir=tmp_path)
    small = rng.integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    cache.put_many([0, 1, 3], small)
    assert (np.asarray(cache._index) >> np.uint64(32)).tolist() == [1, 1, 0, 1]
    hit, got = cache.get(np.arange(4))
    assert hit.tolist() == [True, True, False, True] and np.array_equal(got, small)
    cache.close()


def test_threads_and_cache_keep_skips_and_changed_files(digits, tmp_path, cache_dir):
    folder = tmp_path / "set"
    manifest = write_digits_manifest(folder, 40, corrupt={5: b"not a png", 17: b""})
    ref = DatasetRef("manifest", str(manifest))
    spec = JobSpec("predict", ModelSpec("digits"), ref, batch_size=8)
    ref_run = run(spec, data_dir=tmp_path / "one", bundle=digits, crop_cache=False)
    assert sorted(s[0] for s in ref_run.skipped) == [5, 17] and ref_run.n_rows == 38
    p = plan(spec, bundle=digits, data_dir=tmp_path / "x")
    outs = {}
    for threads in (0, 1, 3):
        runner = BatchRunner(WORKERS["predict"](spec.model, p.params, bundle=digits), p.source, 8, threads=threads)
        table, skipped = runner.run_chunk(p.rows)
        outs[threads] = (table.column("pred").to_pylist(), table.column("top_probs").to_pylist(), skipped)
    assert outs[0] == outs[1] == outs[3]
    assert outs[1][0] == ref_run.array("pred").tolist() and [s[0] for s in outs[1][2]] == [5, 17]
    run(spec, data_dir=tmp_path / "two", bundle=digits)              # fills the crop cache
    img = folder / "img/0009.png"
    st = os.stat(img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))     # changed since the data set was indexed
    again = run(spec, data_dir=tmp_path / "three", bundle=digits)
    reasons = {s[0]: s[2] for s in again.skipped}
    assert sorted(reasons) == [5, 9, 17] and "changed on disk" in reasons[9]


@pytest.mark.parametrize("threads", [0, 1])
def test_batches_prepared_together_are_the_batches_prepared_alone(digits, tmp_path, monkeypatch, threads):
    """Consecutive batches of a chunk are prepared in one go (GROUP_BYTES); the model must
    still get exactly the batches it gets one at a time, the same images (unreadable ones
    left out of their own batch) and the same input bits as ``bundle.inputs``."""
    import torch

    import analysis.dataset.runner as runner_mod
    folder = tmp_path / "set"
    manifest = write_digits_manifest(folder, 40, corrupt={5: b"not a png", 17: b""})
    spec = JobSpec("predict", ModelSpec("digits"), DatasetRef("manifest", str(manifest)), batch_size=8)
    p = plan(spec, bundle=digits, data_dir=tmp_path / "x")
    seen = {}
    for group_bytes in (runner_mod.GROUP_BYTES, 1):          # 1 byte: one batch per group
        monkeypatch.setattr(runner_mod, "GROUP_BYTES", group_bytes)
        worker = WORKERS["predict"](spec.model, p.params, bundle=digits)
        batches = []
        orig = worker.compute
        monkeypatch.setattr(worker, "compute", lambda b, orig=orig, out=batches: (out.append(b), orig(b))[1])
        runner = BatchRunner(worker, p.source, 8, threads=threads)
        chunks = [(0, slice_rows(p.rows, 0, 24)), (1, slice_rows(p.rows, 24, 40))]
        written = {}
        assert runner.run_chunks(chunks, lambda c, t: written.__setitem__(c, t))
        seen[group_bytes] = batches
        assert [len(b["index"]) for b in batches] == [7, 8, 7, 8, 8]
        for b in batches:
            assert b["x"].is_contiguous()
            want = digits.inputs([p.dataset.get(int(i)) for i in b["index"]])
            assert torch.equal(b["x"], want)
    grouped, alone = seen.values()
    assert [b["index"].tolist() for b in grouped] == [b["index"].tolist() for b in alone]
    assert 5 not in grouped[0]["index"] and 17 not in grouped[2]["index"]


def test_writer_error_stops_the_job_and_stop_keeps_finished_chunks(digits, tmp_path):
    spec = JobSpec("predict", ModelSpec("digits"), "digits", batch_size=16, indices=tuple(range(96)))
    p = plan(spec, bundle=digits, data_dir=tmp_path)
    runner = BatchRunner(WORKERS["predict"](spec.model, p.params, bundle=digits), p.source, 16)
    chunks = [(c, slice_rows(p.rows, a, a + 32)) for c, a in enumerate(range(0, 96, 32))]

    def failing(c, table):
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        runner.run_chunks(chunks, failing)
    written, polls = [], {"n": 0}

    def stop():
        polls["n"] += 1
        return polls["n"] > 3                     # batches 1-3 run: chunk 0 whole, chunk 1 half
    done = runner.run_chunks(chunks, lambda c, t: written.append((c, t.num_rows)), stop)
    assert done is False and written == [(0, 32)]
    assert runner.run_chunks(chunks, lambda c, t: written.append((c, t.num_rows))) is True
    assert written[1:] == [(0, 32), (1, 32), (2, 32)]


@pytest.mark.parametrize("interp,mode", [("bilinear", "center"), ("bicubic", "center"), ("nearest", "squash"),
                                         ("lanczos", "center"), ("bilinear", "squash")])
def test_batch_geometry_equals_geometry_image_by_image(interp, mode, monkeypatch):
    from analysis.dataset.runner import BatchGeometry
    monkeypatch.setattr(BatchGeometry, "_checked", {})
    pre = Preprocessing(24, 28, (0.5,) * 3, (0.25,) * 3, interp, crop_mode=mode)
    rng = np.random.default_rng(1)
    sizes = [(30, 30), (17, 41), (30, 30), (8, 8), (30, 30), (17, 41), (60, 24), (24, 24), (24, 24)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    # grey images (R == G == B) of one size are resized as one band: the same bits
    images += [np.repeat(rng.integers(0, 256, (12, 50, 1), dtype=np.uint8), 3, axis=2) for _ in range(3)]
    images.append(None)
    images.append(rng.integers(0, 256, (9, 9), dtype=np.uint8))      # not RGB: refused with geometry's message
    geo = BatchGeometry(pre)
    for _ in range(2):                                                # the first call verifies, the second trusts
        got = geo(images)
        assert geo.enabled and {(30, 30, False), (24, 24, False), (12, 50, True)} <= geo.verified
        for im, g in zip(images[:-2], got):
            assert np.array_equal(g, pre.geometry(im))
        assert got[-2] is None and isinstance(got[-1], str) and "RGB" in got[-1]
    # which crops are known grey (resized as one band): the three grey images
    dest = np.empty((len(images), 24, 24, 3), np.uint8)
    grey = np.ones(len(images), bool)
    filled, refused = geo.into(images, dest, grey)
    assert np.flatnonzero(grey).tolist() == [9, 10, 11] and filled[:12].all() and list(refused) == [13]


def test_grey_model_input_table_gives_the_computations_bits(monkeypatch):
    import torch

    from analysis.core.models import bundle as bm
    monkeypatch.setattr(bm, "_GREY_CHECKED", {})                      # process-wide, restored after
    monkeypatch.setattr(bm, "_GREY_TABLES", {})
    pre = Preprocessing(8, 8, (0.3,), (0.2,), grayscale=True)
    rng = np.random.default_rng(2)
    crops = np.repeat(rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8), 3, axis=3)
    crops[0, 0, :2] = [[0] * 3, [255] * 3]

    def computed(c):
        return pre.normalize(pre.to_unit(c), inplace=True)
    ref = computed(crops)
    assert torch.equal(pre.model_input(crops), ref) and bm._GREY_CHECKED[pre] is True
    assert torch.equal(pre.model_input(crops, grey=True), ref)
    colour = crops.copy()
    colour[3, 2, 2, 1] ^= 1                                           # one pixel not grey: computed
    assert torch.equal(pre.model_input(colour), computed(colour))
    assert torch.equal(pre.model_input(colour, grey=False), computed(colour))
    # a table whose bits differ is caught on the first batch and not used again in the process
    monkeypatch.setattr(bm, "_GREY_CHECKED", {})
    bm._GREY_TABLES[pre] = bm._GREY_TABLES[pre] + np.float32(1e-3)
    assert torch.equal(pre.model_input(crops), ref) and bm._GREY_CHECKED[pre] is False
    assert bm._grey_table(pre) is None
    # RGB models compute every channel (the mean of three channels is not per value there)
    rgb = Preprocessing(8, 8, (0.3,) * 3, (0.2,) * 3)
    assert torch.equal(rgb.model_input(crops), rgb.normalize(rgb.to_unit(crops), inplace=True))
    assert rgb not in bm._GREY_TABLES


def test_batch_geometry_falls_back_when_pil_differs(monkeypatch):
    from analysis.dataset import runner
    monkeypatch.setattr(runner.BatchGeometry, "_checked", {})        # the process-wide verdicts, restored after
    pre = Preprocessing(16, 16, (0.5,) * 3, (0.25,) * 3)
    geo = runner.BatchGeometry(pre)
    monkeypatch.setattr(geo, "_group", lambda g, grey=False: np.zeros((len(g), 16, 16, *(() if grey else (3,))),
                                                                       np.uint8))          # a "different build"
    images = [np.full((8, 8, 3), 200, np.uint8), np.full((8, 8, 3), 100, np.uint8)]
    got = geo(images)
    assert not geo.enabled
    assert all(np.array_equal(g, pre.geometry(im)) for g, im in zip(got, images))
    assert not runner.BatchGeometry(pre).enabled                      # remembered for this geometry
    assert runner.BatchGeometry(Preprocessing(16, 20, (0.5,) * 3, (0.25,) * 3)).enabled


def test_folder_file_rewritten_after_caching_is_reported(digits, tmp_path, cache_dir):
    from PIL import Image

    from analysis.core.datasets import load_digits_dataset
    src = load_digits_dataset()
    root = tmp_path / "folder"
    for k in range(12):
        (root / str(int(src.labels[k]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(src.get(k))).save(root / str(int(src.labels[k])) / f"{k:03d}.png")
    ref = DatasetRef("folder", str(root))
    import dataclasses

    from analysis.core.config import get_config, set_config
    set_config(dataclasses.replace(get_config(), dataset_dirs=(tmp_path,)))
    spec = JobSpec("predict", ModelSpec("digits"), ref, batch_size=4)
    first = run(spec, data_dir=tmp_path / "a", bundle=digits)
    assert first.n_rows == 12 and first.skipped == []
    victim = next(p for p in sorted(root.rglob("*.png")))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(victim)        # same folder, new bytes
    # the open data set (and its hash) is the one indexed before the change: a job on it must
    # report the file, not serve its old crop from the cache
    again = run(spec, data_dir=tmp_path / "b", bundle=digits)
    assert open_dataset(ref).content_hash == first.meta["dataset_hash"]
    assert again.n_rows == 11 and len(again.skipped) == 1 and "changed" in again.skipped[0][2]
    assert np.array_equal(again.array("pred"), np.delete(first.array("pred"), again.skipped[0][0]))



@pytest.mark.parametrize("threads", [0, 1, 2])
def test_prepare_or_model_errors_reach_the_caller_and_leave_no_thread(digits, tmp_path, monkeypatch, threads):
    import threading
    spec = JobSpec("predict", ModelSpec("digits"), "digits", batch_size=16, indices=tuple(range(64)))
    p = plan(spec, bundle=digits, data_dir=tmp_path)
    worker = WORKERS["predict"](spec.model, p.params, bundle=digits)
    chunks = [(0, slice_rows(p.rows, 0, 32)), (1, slice_rows(p.rows, 32, 64))]
    before = set(threading.enumerate())
    runner = BatchRunner(worker, p.source, 16, threads=threads)
    calls = {"n": 0}
    orig = runner._prepare

    def failing_prepare(rows, pool=None, bounds=None):
        calls["n"] += 1
        if calls["n"] == 2:                        # chunk 1 (its two batches are prepared together)
            raise RuntimeError("decoder crashed")
        return orig(rows, pool, bounds)
    monkeypatch.setattr(runner, "_prepare", failing_prepare)
    written = []
    with pytest.raises(RuntimeError, match="decoder crashed"):
        runner.run_chunks(chunks, lambda c, t: written.append(c))
    assert written == [0]                          # the chunk finished before the error is still written
    runner = BatchRunner(worker, p.source, 16, threads=threads)
    monkeypatch.setattr(worker, "compute", lambda batch: (_ for _ in ()).throw(ValueError("model failed")))
    with pytest.raises(ValueError, match="model failed"):
        runner.run_chunks(chunks, lambda c, t: None)
    assert {t for t in threading.enumerate() if t.name.startswith("convlens-")} <= before
