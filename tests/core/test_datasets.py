"""Tests of analysis.core.datasets: digits, image folders, zip uploads, batching and splits."""
from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.core.config import Limits
from analysis.core.datasets import (
    DEFAULT_DATASET,
    Dataset,
    load_digits_dataset,
    load_image_folder,
    load_zip_dataset,
    train_test_split_indices,
)
from analysis.core.errors import DatasetError, LimitError, ParameterError

LIMITS = Limits()


# ----------------------------------------------------------------------------- helpers
def _pixels(seed: int, size=(6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def _write(path: Path, seed: int, fmt: str = "PNG") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _pixels(seed)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def _make_folder(root: Path) -> dict[str, np.ndarray]:
    """Three classes, a nested file, hidden and non-image files. Returns id -> pixels."""
    expected = {
        "cat/a.png": _write(root / "cat" / "a.png", 1),
        "cat/b.bmp": _write(root / "cat" / "b.bmp", 2, "BMP"),
        "dog/c.PNG": _write(root / "dog" / "c.PNG", 3),
        "dog/sub/deep/d.png": _write(root / "dog" / "sub" / "deep" / "d.png", 4),
        "bird/e.png": _write(root / "bird" / "e.png", 5),
    }
    _write(root / "cat" / ".hidden.png", 6)            # hidden file
    _write(root / "dog" / ".cache" / "f.png", 7)       # hidden folder inside a class
    _write(root / ".git" / "g.png", 8)                 # hidden class folder
    _write(root / "loose.png", 9)                      # file directly in root
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "empty_class").mkdir()                     # no images: not a class
    return expected


def _zip_folder(root: Path, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(root.rglob("*")):
            zf.write(p, prefix + p.relative_to(root).as_posix())
    return buf.getvalue()


def _files_under(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


# ----------------------------------------------------------------------------- digits
def test_digits_dataset():
    assert DEFAULT_DATASET == "digits"
    ds = load_digits_dataset()
    assert len(ds) == 1797 and ds.source == "digits"
    assert ds.class_names == [str(k) for k in range(10)]
    assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == set(range(10))
    assert ds.ids[0] == "digits/0000" and ds.ids[-1] == "digits/1796"
    img = ds.get(0)
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    assert not img.flags.writeable
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()

    from sklearn.datasets import load_digits
    raw = load_digits()
    np.testing.assert_array_equal(img[..., 0], np.rint(raw.images[0] * 255 / 16).astype(np.uint8))
    assert img[0, 0, 0] == 0 and img.max() > 200                       # white digit on black
    assert ds.get(int(np.argmax(raw.images.reshape(len(ds), -1).max(1)))).max() == 255
    assert ds.labels[0] == raw.target[0]

    h = ds.content_hash
    assert len(h) == 64 and int(h, 16) >= 0
    assert load_digits_dataset() is ds                                 # cached
    load_digits_dataset.cache_clear()
    assert load_digits_dataset().content_hash == h                     # deterministic
    s = ds.summary()
    assert s["n_images"] == 1797 and s["n_classes"] == 10 and s["n_skipped"] == 0
    assert sum(s["class_counts"].values()) == 1797


# ----------------------------------------------------------------------------- folders
def test_folder_loading_labels_ids_and_pixels(tmp_path):
    root = tmp_path / "pets"
    expected = _make_folder(root)
    ds = load_image_folder(root, limits=LIMITS)
    assert ds.source == "folder" and ds.name == "pets"
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.ids == ["bird/e.png", "cat/a.png", "cat/b.bmp", "dog/c.PNG", "dog/sub/deep/d.png"]
    assert ds.labels.tolist() == [0, 1, 1, 2, 2]
    assert ds.skipped == []
    for i, item_id in enumerate(ds.ids):
        img = ds.get(i)
        assert img.dtype == np.uint8 and not img.flags.writeable
        np.testing.assert_array_equal(img, expected[item_id])
    assert ds.summary()["class_counts"] == {"bird": 1, "cat": 2, "dog": 2}


def test_folder_hash_is_content_based(tmp_path):
    a = tmp_path / "a" / "data"
    _make_folder(a)
    b = tmp_path / "elsewhere" / "copy"
    shutil.copytree(a, b)
    h = load_image_folder(a, limits=LIMITS).content_hash
    assert load_image_folder(b, limits=LIMITS).content_hash == h

    # one byte of pixel data in a BMP (still a valid image)
    bmp = b / "cat" / "b.bmp"
    raw = bytearray(bmp.read_bytes())
    raw[-1] ^= 0x01
    bmp.write_bytes(bytes(raw))
    changed = load_image_folder(b, limits=LIMITS)
    assert changed.skipped == [] and changed.content_hash != h

    # renaming a class
    c = tmp_path / "renamed"
    shutil.copytree(a, c)
    (c / "bird").rename(c / "birds")
    renamed = load_image_folder(c, limits=LIMITS)
    assert renamed.class_names == ["birds", "cat", "dog"] and renamed.content_hash != h


def test_folder_file_changed_after_indexing_is_reported(tmp_path):
    _make_folder(tmp_path / "d")
    ds = load_image_folder(tmp_path / "d", limits=LIMITS)
    _write(tmp_path / "d" / "bird" / "e.png", 99)
    with pytest.raises(DatasetError, match="changed"):
        ds.get(0)


def test_corrupt_file_is_skipped(tmp_path):
    root = tmp_path / "d"
    _make_folder(root)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    ds = load_image_folder(root, limits=LIMITS)
    assert len(ds) == 5 and "cat/broken.png" not in ds.ids
    assert [s[0] for s in ds.skipped] == ["cat/broken.png"]
    assert ds.skipped[0][1]                                           # a reason is given
    assert ds.summary()["n_skipped"] == 1


def test_all_files_corrupt_is_an_error(tmp_path):
    for name in ("x/1.png", "y/2.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="could be read"):
        load_image_folder(tmp_path, limits=LIMITS)


def test_allowed_roots(tmp_path):
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    _make_folder(allowed / "ok")
    _make_folder(outside / "secret")

    assert len(load_image_folder(allowed / "ok", limits=LIMITS, allowed_roots=[allowed])) == 5
    with pytest.raises(DatasetError, match="not inside an allowed"):
        load_image_folder(outside / "secret", limits=LIMITS, allowed_roots=[allowed])
    with pytest.raises(DatasetError, match="not inside an allowed"):
        load_image_folder(allowed / ".." / "outside" / "secret", limits=LIMITS, allowed_roots=[allowed])
    with pytest.raises(DatasetError, match="not inside an allowed"):
        load_image_folder(allowed / "ok", limits=LIMITS, allowed_roots=[])

    # a symlink inside the allowed folder that points outside it
    (allowed / "link").symlink_to(outside / "secret", target_is_directory=True)
    with pytest.raises(DatasetError, match="not inside an allowed"):
        load_image_folder(allowed / "link", limits=LIMITS, allowed_roots=[allowed])
    # an image file symlinked to outside is skipped, the rest loads
    (allowed / "ok" / "cat" / "z.png").symlink_to(outside / "secret" / "cat" / "a.png")
    ds = load_image_folder(allowed / "ok", limits=LIMITS, allowed_roots=[allowed])
    assert "cat/z.png" not in ds.ids and ("cat/z.png" in {s[0] for s in ds.skipped})
    # without allowed_roots the same link is fine
    assert "cat/z.png" in load_image_folder(allowed / "ok", limits=LIMITS).ids


def test_folder_refusals(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "missing", limits=LIMITS)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a folder"):
        load_image_folder(tmp_path / "file.png", limits=LIMITS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub folders"):
        load_image_folder(tmp_path / "empty", limits=LIMITS)
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "cat" / "a.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no image files"):
        load_image_folder(tmp_path / "noimg", limits=LIMITS)
    _make_folder(tmp_path / "big")
    with pytest.raises(LimitError, match=r"5 images.*limit of 3"):
        load_image_folder(tmp_path / "big", limits=Limits(max_dataset_images=3))


def test_folder_progress(tmp_path):
    _make_folder(tmp_path / "d")
    calls = []
    load_image_folder(tmp_path / "d", limits=LIMITS, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (5, 5)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# ----------------------------------------------------------------------------- zips
def test_zip_matches_folder(tmp_path):
    root = tmp_path / "pets"
    expected = _make_folder(root)
    folder = load_image_folder(root, limits=LIMITS)
    store = tmp_path / "store"
    data = _zip_folder(root)
    calls = []
    ds = load_zip_dataset(data, name="pets.zip", store_dir=store, limits=LIMITS,
                          progress=lambda d, t: calls.append((d, t)))
    assert ds.source == "zip" and ds.name == "pets"
    assert ds.class_names == folder.class_names
    assert ds.ids == folder.ids and ds.labels.tolist() == folder.labels.tolist()
    assert ds.content_hash == folder.content_hash
    assert calls[-1] == (5, 5)
    for i, item_id in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.get(i), expected[item_id])
    # stored content-addressed, nothing extracted
    assert _files_under(store) == {hashlib.sha256(data).hexdigest() + ".zip"}


def test_zip_with_single_top_folder_and_macosx(tmp_path):
    root = tmp_path / "pets"
    _make_folder(root)
    folder = load_image_folder(root, limits=LIMITS)
    buf = io.BytesIO(_zip_folder(root, prefix="pets/"))
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("__MACOSX/pets/cat/._a.png", b"resource fork junk")
    ds = load_zip_dataset(buf.getvalue(), store_dir=tmp_path / "store", limits=LIMITS)
    assert ds.ids == folder.ids and ds.content_hash == folder.content_hash
    assert ds.skipped == []


def test_zip_refusals(tmp_path):
    store = tmp_path / "store"
    with pytest.raises(DatasetError, match="not a valid zip"):
        load_zip_dataset(b"PK\x03\x04 definitely not a zip", store_dir=store, limits=LIMITS)
    with pytest.raises(LimitError, match="upload limit"):
        load_zip_dataset(b"x" * 2000, store_dir=store, limits=Limits(max_upload_bytes=1000))
    # class folders missing: images at the root only
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", _png_bytes(1))
    with pytest.raises(DatasetError, match="no class folders"):
        load_zip_dataset(buf.getvalue(), store_dir=store, limits=LIMITS)
    # too many images
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in range(4):
            zf.writestr(f"c/{k}.png", _png_bytes(k))
    with pytest.raises(LimitError, match=r"4 images.*limit of 2"):
        load_zip_dataset(buf.getvalue(), store_dir=store, limits=Limits(max_dataset_images=2))
    assert not store.exists() or _files_under(store) == set()


def _png_bytes(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(_pixels(seed)).save(out, format="PNG")
    return out.getvalue()


def test_zip_bomb_refused_before_decompression(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/ok.png", _png_bytes(1))
        zf.writestr("cat/bomb.png", bytes(50 * 1024 * 1024))
    data = buf.getvalue()
    assert len(data) < 1024 * 1024                                    # small on the wire
    store = tmp_path / "store"
    with pytest.raises(LimitError, match="uncompress"):
        load_zip_dataset(data, store_dir=store, limits=Limits(max_dataset_bytes=1024 * 1024))
    assert not store.exists()


def test_zip_path_traversal_never_written(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    store = work / "store"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cat/a.png", _png_bytes(1))
        zf.writestr("dog/b.png", _png_bytes(2))
        zf.writestr("../evil.png", _png_bytes(3))
        zf.writestr("cat/../../evil2.png", _png_bytes(4))
        zf.writestr("/tmp/evil3.png", _png_bytes(5))
    before = _files_under(tmp_path)
    ds = load_zip_dataset(buf.getvalue(), store_dir=store, limits=LIMITS)
    assert ds.ids == ["cat/a.png", "dog/b.png"]
    unsafe = {i for i, reason in ds.skipped if "unsafe" in reason}
    assert unsafe == {"../evil.png", "cat/../../evil2.png", "/tmp/evil3.png"}
    created = _files_under(tmp_path) - before
    assert created == {"a/b/store", f"a/b/store/{hashlib.sha256(buf.getvalue()).hexdigest()}.zip"}
    assert not list(tmp_path.rglob("evil*")) and not Path("/tmp/evil3.png").exists()


def test_zip_encrypted_member_skipped(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cat/a.png", _png_bytes(1))
        zf.writestr("cat/b.png", _png_bytes(2))
    raw = bytearray(buf.getvalue())
    # Set the "encrypted" flag bit (bit 0 of the general purpose flags) of cat/b.png in
    # its local header and in its (second) central-directory entry.
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        local = zf.getinfo("cat/b.png").header_offset
        central = raw.find(b"PK\x01\x02", raw.find(b"PK\x01\x02", zf.start_dir) + 4)
    raw[local + 6] |= 0x01
    raw[central + 8] |= 0x01
    ds = load_zip_dataset(bytes(raw), store_dir=tmp_path / "s", limits=LIMITS)
    assert ds.ids == ["cat/a.png"]
    assert ds.skipped == [("cat/b.png", "encrypted member; not supported")]


# ----------------------------------------------------------------------------- access
def test_iter_batches_and_get_many(tmp_path):
    ds = load_digits_dataset()
    seen = []
    for idx, imgs in ds.iter_batches(256):
        assert idx.dtype == np.int64 and len(imgs) == len(idx) <= 256
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(ds))) and len(seen) == len(ds)

    subset = [5, 3, 1000]
    batches = list(ds.iter_batches(2, indices=subset))
    assert [b[0].tolist() for b in batches] == [[5, 3], [1000]]
    np.testing.assert_array_equal(batches[0][1][1], ds.get(3))
    assert [im.shape for im in ds.get_many(subset)] == [(8, 8, 3)] * 3
    with pytest.raises(ParameterError, match="batch_size"):
        next(ds.iter_batches(0))
    with pytest.raises(ParameterError, match="out of range"):
        ds.get(len(ds))

    _make_folder(tmp_path / "d")
    folder = load_image_folder(tmp_path / "d", limits=LIMITS)
    got = [i for idx, _ in folder.iter_batches(2) for i in idx.tolist()]
    assert got == list(range(len(folder)))


def test_train_test_split_stratified_and_deterministic():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20 + [3] * 2)
    train, test = train_test_split_indices(labels, 0.2, seed=0)
    assert np.intersect1d(train, test).size == 0
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[test]).tolist() == [10, 6, 4, 1]
    train2, test2 = train_test_split_indices(labels, 0.2, seed=0)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    _, test3 = train_test_split_indices(labels, 0.2, seed=1)
    assert not np.array_equal(test, test3)
    with pytest.raises(ParameterError, match="test_fraction"):
        train_test_split_indices(labels, 1.5)


def test_dataset_is_a_plain_dataclass():
    ds = Dataset(name="x", source="digits", class_names=["a"], labels=[0, 0], ids=["1", "2"],
                 content_hash="0" * 64, _loader=lambda i: np.zeros((2, 2, 3), np.uint8))
    assert len(ds) == 2 and ds.labels.dtype == np.int64 and not ds.get(1).flags.writeable


def test_zip_members_read_by_index_from_threads_and_after_pickling(tmp_path):
    """core.datasets.ZipMembers (the zip loader's and the manifest reader's): one handle per
    thread, so decode threads inflate in parallel; a pickled copy opens its own."""
    import pickle
    import zipfile
    from concurrent.futures import ThreadPoolExecutor

    from analysis.core.datasets import ZipMembers
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(6):
            z.writestr(f"d/{i}.bin", bytes([i]) * (100 + i))
    zm = ZipMembers(path)
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda i: zm.read(i), range(6)))
    assert [(info.filename, data) for info, data in got] == [(f"d/{i}.bin", bytes([i]) * (100 + i)) for i in range(6)]
    copy = pickle.loads(pickle.dumps(zm))
    assert not hasattr(copy._local, "zip") and copy.read(5)[1] == bytes([5]) * 105    # opens its own handle
    bad = ZipMembers(tmp_path / "missing.zip")
    with pytest.raises(OSError):
        bad.read(0)
