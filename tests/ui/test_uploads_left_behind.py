"""Refused uploads leave nothing on disk (issue 14): a file over the upload limit is refused
before it is written, a zip that is not a data set is removed again, a weights file that
does not match its architecture is removed again; accepted ones are stored and used."""
import io
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from streamlit.testing.v1 import AppTest

from analysis.core.config import set_config
from analysis.core.errors import LimitError
from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


@pytest.fixture()
def uploads(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVLENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONVLENS_MAX_UPLOAD_BYTES", str(2 * 2**20))
    set_config(None)
    from analysis.core.store import uploads_dir
    yield uploads_dir()
    set_config(None)


def _files(d):
    return sorted(p.name for p in d.iterdir())


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for c in ("a", "b"):
            for i in range(2):
                im = io.BytesIO()
                Image.fromarray(np.full((8, 8), 40 * i + (c == "b") * 100, np.uint8)).save(im, "PNG")
                z.writestr(f"{c}/{i}.png", im.getvalue())
    return buf.getvalue()


def test_save_upload_refuses_over_the_limit_before_writing(uploads):
    from analysis.core.store import save_upload
    with pytest.raises(LimitError):
        save_upload(b"x" * (3 * 2**20), "big.bin")
    assert _files(uploads) == []
    assert save_upload(b"x" * (3 * 2**20), "big.pth", max_bytes=4 * 2**20)   # weights have their own limit


def test_refused_zips_are_not_kept(uploads):
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.selectbox(key="sb_dataset").set_value("zip").run()
    at.sidebar.file_uploader(key="sb_zip").upload("big.zip", b"\0" * (3 * 2**20)).run()     # over the limit
    assert not at.exception and any("upload limit" in e.value for e in at.error)
    assert _files(uploads) == []
    at.sidebar.file_uploader(key="sb_zip").upload("notzip.zip", b"this is not a zip" * 100).run()
    assert not at.exception and at.error
    assert _files(uploads) == []                                  # stored for indexing, removed on refusal
    n_err = len(at.error)
    at.run()                                                      # a rerun does not index it again
    assert len(at.error) == n_err and _files(uploads) == []
    at.sidebar.file_uploader(key="sb_zip").upload("good.zip", _zip()).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(_files(uploads)) == 2                               # the zip and its sidecar
    assert any("4 images · 2 classes" in c.value for c in at.sidebar.caption)


def test_weights_that_do_not_load_are_not_kept(uploads, monkeypatch):
    monkeypatch.setenv("CONVLENS_MAX_WEIGHTS_BYTES", str(200 * 2**20))
    set_config(None)
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), buf)
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.selectbox(key="sb_model_kind").set_value("upload").run()
    at.selectbox(key="sb_up_arch").set_value("resnet34").run()      # the wrong architecture
    at.sidebar.file_uploader(key="sb_up_weights").upload("r18.pth", buf.getvalue()).run()
    at.button(key="sb_load_up").click().run()
    assert not at.exception and any("does not match" in e.value for e in at.error)
    assert _files(uploads) == []                                  # more than max_upload_bytes, yet allowed
    at.selectbox(key="sb_up_arch").set_value("resnet18").run()
    at.button(key="sb_load_up").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(_files(uploads)) == 2
