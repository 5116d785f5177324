"""Manifests: lazily decoded, typed errors for bad ones; bad images are skipped and listed."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pandas as pd
import pytest

from analysis.core.config import Limits
from analysis.core.datasets import load_digits_dataset
from analysis.core.errors import LimitError, ParameterError
from analysis.core.models.loaders import ModelSpec
from analysis.dataset.executor import JobSpec, run
from analysis.dataset.manifest import DatasetRef, ManifestError, load_manifest, open_dataset
from tests.dataset.conftest import write_digits_manifest


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits-set")
    return write_digits_manifest(folder, 60)


def test_manifest_is_read_lazily_and_equals_the_digits(digits_set):
    ds = load_manifest(digits_set)
    ref = load_digits_dataset()
    assert len(ds) == 60 and ds.source == "manifest" and ds.skipped == []
    assert ds.class_names == [str(k) for k in range(10)]
    assert np.array_equal(ds.labels, ref.labels[:60])
    assert ds.ids[:2] == ["img/0000.png", "img/0001.png"]
    for i in (0, 17, 59):
        assert np.array_equal(ds.get(i), ref.get(i))
    # the same rows as Parquet: the same content hash (the hash covers rows and files, not the format)
    pq_path = digits_set.with_suffix(".parquet")
    pd.read_csv(digits_set).to_parquet(pq_path, index=False)
    assert load_manifest(pq_path).content_hash == ds.content_hash
    # an image replaced on disk changes the hash and is refused when read with the old index
    img = digits_set.parent / "img/0003.png"
    data = img.read_bytes()
    try:
        img.write_bytes(data + b"\0")
        assert load_manifest(digits_set).content_hash != ds.content_hash
        from analysis.core.errors import DatasetError
        with pytest.raises(DatasetError, match="changed on disk"):
            ds.get(3)
    finally:
        img.write_bytes(data)


def _manifest(tmp_path, rows, name="m.csv"):
    p = tmp_path / name
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def test_bad_manifests_get_clear_messages(digits_set, tmp_path):
    folder = digits_set.parent
    with pytest.raises(ManifestError, match="no column.*'label'.*its columns are 'path', 'klass'"):
        load_manifest(_manifest(folder, [{"path": "img/0000.png", "klass": "0"}], "a.csv"))
    with pytest.raises(ManifestError, match="unknown label.*'seven'"):
        load_manifest(_manifest(folder, [{"path": "img/0000.png", "label": "seven"}], "b.csv"),
                      classes=[str(k) for k in range(10)])
    with pytest.raises(ManifestError, match="outside the allowed data-set folders"):
        load_manifest(_manifest(folder, [{"path": "/etc/hostname", "label": "0"}], "c.csv"))
    with pytest.raises(ManifestError, match="outside the allowed"):
        load_manifest(_manifest(folder, [{"path": "../x.png", "label": "0"}], "d.csv"))
    with pytest.raises(ManifestError, match="duplicate"):
        load_manifest(_manifest(folder, [{"path": "img/0000.png", "label": "0"}] * 2, "e.csv"))
    with pytest.raises(ManifestError, match="no label"):
        load_manifest(_manifest(folder, [{"path": "img/0000.png", "label": None},
                                         {"path": "img/0001.png", "label": "1"}], "f.csv"))
    with pytest.raises(ManifestError, match="decimals"):
        load_manifest(_manifest(folder, [{"path": "img/0000.png", "label": 0.5}], "g.csv"))
    (folder / "h.csv").write_bytes(b"\xff\xfe\0garbage\n\0\0")
    with pytest.raises(ManifestError):
        load_manifest(folder / "h.csv")
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(folder / "nope.csv")
    with pytest.raises(LimitError, match="max_manifest_images"):
        load_manifest(digits_set, limits=Limits(max_manifest_images=10))
    # integer labels are class indices; explicit roots widen what is allowed
    ds = load_manifest(_manifest(tmp_path, [{"path": str(folder / "img/0000.png"), "label": 3}], "i.csv"),
                       allowed_roots=[folder])
    assert ds.class_names == ["0", "1", "2", "3"] and ds.labels.tolist() == [3]


def test_missing_and_corrupt_images_are_skipped_and_listed(digits, tmp_path):
    m = write_digits_manifest(tmp_path, 40, corrupt={7: b"GIF89a truncated", 8: b""})
    (tmp_path / "img/0030.png").unlink()
    ds = open_dataset(DatasetRef("manifest", str(m)))
    assert len(ds) == 39 and ds.skipped[0][0] == "img/0030.png" and "not found" in ds.skipped[0][1]
    r = run(JobSpec("predict", ModelSpec("digits"), DatasetRef("manifest", str(m)), batch_size=16),
            data_dir=tmp_path / "out")
    assert r.complete and r.n_rows == 37
    sk = {p: (i, reason) for i, p, reason in r.skipped}
    assert set(sk) == {"img/0007.png", "img/0008.png", "img/0030.png"}
    assert sk["img/0030.png"][0] == -1                        # not in the data set at all
    assert "empty" in sk["img/0008.png"][1] and sk["img/0007.png"][1]
    assert r.n_rows + len(r.skipped) == 40
    assert "could not be used" in r.warnings()[0]


def test_folder_zip_and_digits_refs_give_the_same_predictions(digits, tmp_path):
    m = write_digits_manifest(tmp_path / "f", 30)
    folder = tmp_path / "folder"
    for k, (p, lab) in enumerate(pd.read_csv(m).itertuples(index=False)):
        (folder / str(lab)).mkdir(parents=True, exist_ok=True)
        os.link(tmp_path / "f" / p, folder / str(lab) / f"{k:04d}.png")
    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(folder.rglob("*.png")):
            z.write(f, f.relative_to(folder).as_posix())
    res = {ref.kind: run(JobSpec("predict", ModelSpec("digits"), ref, batch_size=8), data_dir=tmp_path / "out")
           for ref in (DatasetRef("folder", str(folder)), DatasetRef("zip", str(zpath)),
                       DatasetRef("manifest", str(m)))}
    by_name = {}
    for kind in ("folder", "zip"):
        df = res[kind].to_pandas(["path", "pred", "confidence"])
        by_name[kind] = dict(zip(df["path"].map(lambda s: s.split("/")[-1]), zip(df["pred"], df["confidence"])))
    assert len(by_name["folder"]) == 30 and by_name["folder"] == by_name["zip"]
    ref = run(JobSpec("predict", ModelSpec("digits"), "digits", batch_size=8, indices=tuple(range(30))),
              data_dir=tmp_path / "out")
    for col in ("label", "pred", "confidence"):
        assert np.array_equal(res["manifest"].array(col), ref.array(col))


def test_dataset_refs_parse_and_round_trip(tmp_path):
    assert DatasetRef.parse("digits") == DatasetRef("digits")
    r = DatasetRef.parse(str(tmp_path / "m.parquet"))
    assert r.kind == "manifest" and DatasetRef.from_dict(r.to_dict()) == r
    assert DatasetRef.parse('{"kind": "manifest", "path": "/x/m.csv", "label_column": "y"}').label_column == "y"
    assert DatasetRef.parse(str(tmp_path)).kind == "folder"
    with pytest.raises(ParameterError):
        DatasetRef("s3")
    with pytest.raises(ParameterError, match="Unknown data-set reference field"):
        DatasetRef.from_dict({"kind": "digits", "bogus": 1})
