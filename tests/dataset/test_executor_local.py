"""The in-process backend: rows equal a direct forward, results are cached under the job
key, a stopped job leaves nothing complete and resumes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis.core.errors import ParameterError
from analysis.core.models.loaders import ModelSpec
from analysis.core.predict import logits as bundle_logits
from analysis.dataset.executor import JobSpec, load_result, run
from analysis.dataset.manifest import open_dataset
from analysis.dataset.workers import WORKERS, SaliencyWorker

N = 200


def _spec(kind="predict", **kw):
    kw.setdefault("indices", tuple(range(N)))
    kw.setdefault("batch_size", 32)
    return JobSpec(kind, ModelSpec("digits"), "digits", **kw)


def test_predict_rows_equal_direct_forward(digits, tmp_path):
    seen = []
    r = run(_spec(), data_dir=tmp_path, progress=lambda d, n: seen.append((d, n)))
    assert r.complete and r.n_rows == N and r.skipped == []
    assert seen[-1] == (N, N) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    df = r.to_pandas(["index", "path", "label", "pred", "confidence"])
    ds = open_dataset({"kind": "digits"})
    assert df["index"].tolist() == list(range(N))
    assert df["path"].tolist() == ds.ids[:N]
    assert np.array_equal(df["label"].to_numpy(), ds.labels[:N])
    ref = bundle_logits(digits, [ds.get(i) for i in range(N)], batch_size=32)
    p = torch.from_numpy(ref).softmax(1)
    assert np.array_equal(df["pred"].to_numpy(), ref.argmax(1))
    np.testing.assert_allclose(df["confidence"].to_numpy(), p.max(1).values.numpy(), rtol=1e-6)
    top = r.array("top_ids")
    assert top.shape == (N, 5) and np.array_equal(top[:, 0], df["pred"].to_numpy())
    probs = r.array("top_probs")
    assert np.all(np.diff(probs, axis=1) <= 0)
    assert (df["pred"] == df["label"]).mean() > 0.9
    # a second run is the stored result (same folder), load_result finds it
    assert run(_spec(), data_dir=tmp_path).path == r.path
    got = load_result(_spec(), data_dir=tmp_path)
    assert got is not None and got.complete and got.key == r.key
    meta = json.loads((r.path / "meta.json").read_text())
    assert meta["complete"] and meta["model_id"] == digits.model_id and meta["n_rows"] == N


def test_key_depends_on_params_not_on_engine(tmp_path):
    a = run(_spec(params={"top_k": 3}), data_dir=tmp_path)
    b = run(_spec(), data_dir=tmp_path)
    assert a.key != b.key and a.array("top_ids").shape == (N, 3)
    assert load_result(_spec(params={"top_k": 4}), data_dir=tmp_path) is None


def test_stopped_job_is_not_complete_and_resumes(tmp_path):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3          # three batches, then Stop

    part = run(_spec(), data_dir=tmp_path, should_stop=stop, chunk_size=64)
    assert not part.complete and part.path.name.endswith(".partial")
    assert not (part.path / "meta.json").exists()
    assert part.n_rows == 64            # only whole chunks are kept
    assert load_result(_spec(), data_dir=tmp_path) is None
    seen = []
    full = run(_spec(), data_dir=tmp_path, chunk_size=64, progress=lambda d, n: seen.append(d))
    assert full.complete and full.n_rows == N and seen[0] == 64      # resumed after the first chunk
    assert not part.path.exists()
    fresh = run(_spec(), data_dir=tmp_path / "other")
    for col in ("index", "pred", "confidence"):
        assert np.array_equal(full.array(col), fresh.array(col))


def test_bad_specs_are_typed_errors():
    with pytest.raises(ParameterError, match="job kind"):
        JobSpec("explode", ModelSpec("digits"), "digits")
    with pytest.raises(ParameterError, match="batch_size"):
        JobSpec("predict", ModelSpec("digits"), "digits", batch_size=0)
    with pytest.raises(ParameterError, match="no parameter"):
        run(_spec(params={"nope": 1}))
    spec = _spec(params={"top_k": 2})
    assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_engine_and_ray_address_configuration(tmp_path):
    from analysis.core.config import load_config
    cfg = load_config(tmp_path / "none.toml", env={})
    assert cfg.engine == "local" and cfg.ray_address is None
    cfg = load_config(tmp_path / "none.toml", env={"CONVLENS_ENGINE": "Ray", "RAY_ADDRESS": "ray://head:10001"})
    assert cfg.engine == "ray" and cfg.ray_address == "ray://head:10001"
    (tmp_path / "c.toml").write_text('engine = "ray"\nray_address = "head:6379"\n')
    cfg = load_config(tmp_path / "c.toml", env={"RAY_ADDRESS": "other:1"})
    assert cfg.ray_address == "head:6379"            # the file names the cluster; RAY_ADDRESS is the fallback
    with pytest.raises(ParameterError, match="engine"):
        load_config(tmp_path / "none.toml", env={"CONVLENS_ENGINE": "spark"})
    with pytest.raises(ParameterError, match="engine must be one of"):
        run(_spec(), engine="spark")


class FlatEveryThirdSaliency(SaliencyWorker):
    """Grad-CAM whose maps of data-set positions below 40 and divisible by 3 are all zero."""
    kind = "test_flat_every_third"

    def compute(self, batch):
        staged = super().compute(batch)
        staged["r"]["index"] = torch.as_tensor(np.asarray(batch["index"], np.int64))
        return staged

    def complete(self, r):
        r = super().complete(r)
        idx = r.pop("index")
        r["map"] = torch.where(((idx % 3 == 0) & (idx < 40))[:, None, None], torch.zeros_like(r["map"]), r["map"])
        return r

    def stored(self, columns):
        return {k: v for k, v in columns.items() if k != "cam"}     # the zeroed maps are the result


def test_constant_maps_are_counted_over_every_part(digits, tmp_path):
    """finalize counts the constant maps of every part (it skips the row groups whose
    statistics say none is constant) and says how many in the result's warnings."""
    WORKERS["test_flat_every_third"] = FlatEveryThirdSaliency
    try:
        idx = tuple(range(1, 101))                  # 13 flat maps, all in the first two of four parts
        r = run(JobSpec("test_flat_every_third", ModelSpec("digits"), "digits", params={"method": "gradcam"},
                        batch_size=16, indices=idx), data_dir=tmp_path, chunk_size=32)
        assert len(r.parts) == 4
        assert r.array("flat").sum() == 13
        assert any(w.startswith("13 of 100 saliency maps are constant") for w in r.warnings())
        plain = run(_spec("saliency", params={"method": "gradcam"}, batch_size=16), data_dir=tmp_path, chunk_size=32)
        assert plain.array("flat").sum() == 0 and not any("constant" in w for w in plain.warnings())
    finally:
        del WORKERS["test_flat_every_third"]


def test_gradcam_maps_are_stored_at_the_layer_resolution_and_rebuilt_bit_for_bit(digits, tmp_path):
    """A Grad-CAM job writes the layer-resolution CAM and rebuilds the input-size maps when
    read: exactly the maps the worker computed (and its statistics were computed on)."""
    from analysis.dataset.executor import plan
    from analysis.dataset.runner import BatchRunner, slice_rows
    spec = _spec("saliency", params={"method": "gradcam"}, batch_size=32)
    r = run(spec, data_dir=tmp_path)
    assert "map" not in r.meta["columns"] and r.meta["derived"]["map"]["from"] == "cam"
    cam, maps = r.array("cam"), r.array("map")
    assert cam.shape == (N, 8, 8) and maps.shape == (N, 32, 32) and maps.dtype == np.float32
    p = plan(spec, bundle=digits, data_dir=tmp_path)
    w = WORKERS["saliency"](spec.model, p.params, bundle=digits)
    runner = BatchRunner(w, p.source, 32, threads=0)
    direct = []
    for a in range(0, N, 32):
        batch, _ = runner.prepare(slice_rows(p.rows, a, min(N, a + 32)))
        direct.append(w.finish(w.compute(batch))["map"])
    assert np.array_equal(maps, np.concatenate(direct))
    # the stored statistics belong to these maps: the centre share recomputed from them
    pos = np.clip(maps.astype(np.float64), 0, None)
    inside = pos[:, 8:24, 8:24].reshape(N, -1).sum(1) / pos.reshape(N, -1).sum(1)
    np.testing.assert_array_equal(inside, r.array("mass_centre"))
    # a result written before the two 1-D passes names the 2-D kernel, and is rebuilt with it
    import json

    import torch
    import torch.nn.functional as F

    from analysis.dataset.executor import load_result
    meta = json.loads((r.path / "meta.json").read_text())
    assert meta["derived"]["map"]["op"] == "upsample_linear_hw"
    meta["derived"]["map"]["op"] = "upsample_bilinear"
    (r.path / "meta.json").write_text(json.dumps(meta))
    old = load_result(spec, data_dir=tmp_path).array("map")
    ref = F.interpolate(torch.from_numpy(cam)[:, None], size=(32, 32), mode="bilinear")[:, 0].numpy()
    assert np.array_equal(old, ref) and 0 < np.abs(old - maps).max() < 1e-5
    # gradient maps are stored as they are
    g = run(_spec("saliency", params={"method": "gradient"}, batch_size=32), data_dir=tmp_path)
    assert "map" in g.meta["columns"] and g.meta["derived"] == {} and g.array("map").shape == (N, 32, 32)


@pytest.mark.parametrize("kind,params", [("predict", {"logits": True}), ("saliency", {"method": "gradcam"}),
                                         ("saliency", {"method": "gradient"})])
def test_a_chunk_finished_at_once_equals_its_batches_finished_one_by_one(digits, tmp_path, kind, params):
    """The writer finishes a whole chunk at once (one softmax / top-k, one pass of map
    statistics): every column equals finishing batch by batch, bit for bit."""
    from analysis.dataset.executor import plan
    from analysis.dataset.runner import BatchRunner, slice_rows
    from analysis.dataset.workers import concat_columns
    spec = _spec(kind, params=params, batch_size=24, indices=tuple(range(100)))
    p = plan(spec, bundle=digits, data_dir=tmp_path)
    w = WORKERS[kind](spec.model, p.params, bundle=digits)
    runner = BatchRunner(w, p.source, 24, threads=0)
    staged = [w.compute(runner.prepare(slice_rows(p.rows, a, min(100, a + 24)))[0]) for a in range(0, 100, 24)]
    at_once = w.finish_many(staged)
    one_by_one = concat_columns([w.finish(st) for st in staged])
    assert at_once.keys() == one_by_one.keys()
    for c in at_once:
        a, b = np.asarray(at_once[c]), np.asarray(one_by_one[c])
        assert a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), c
