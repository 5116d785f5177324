"""User-provided text (audit notes, file names, class names, data-set names) is shown as
text on every page: no markdown image, link or HTML comes out of it (issue 14). Each kind
is injected through the way a user would bring it (a note, an upload's name in a link, a
zip's class folders and file names) and every string the app sends to the browser that
Streamlit renders as markdown is parsed with a CommonMark parser."""
import io
import json
import re
import zipfile

import numpy as np
from markdown_it import MarkdownIt
from PIL import Image
from streamlit.testing.v1 import AppTest

from dashboard.text import plain
from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")
LEAK = "![x](http://127.0.0.1:9/leak.png)"
EVIL = [LEAK, "[click](https:host?leak)", "<img src=http://127.0.0.1:9/a.png>", ":red[www.leak.example]",
        "mail@leak.example", "`code` *em* $x$"]
_MD = MarkdownIt("commonmark")
_BARE_URL = re.compile(r"(?<!\\)(?:https?|ftp):(?=//)|(?<![\\\w])www\.|(?<![\\])@(?=\w)")


def _strings(at) -> list[str]:
    """Every text field of every element the app produced (markdown bodies, captions of
    images and widgets, labels, error messages)."""
    out: list[str] = []

    def walk(msg):
        for field, value in msg.ListFields():
            if field.type not in (field.TYPE_MESSAGE, field.TYPE_STRING):
                continue
            values = [value] if isinstance(value, str) or hasattr(value, "ListFields") else list(value)
            if field.type == field.TYPE_MESSAGE:
                for v in values:
                    walk(v)
            elif field.type == field.TYPE_STRING and field.name in ("body", "caption", "label", "message"):
                out.extend(values)

    def visit(node):
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "ListFields"):
            walk(proto)
        for child in (getattr(node, "children", None) or {}).values():
            visit(child)
    visit(at._tree)
    return out


def _leaks(text: str) -> list[str]:
    """Images, links and raw HTML that ``text`` renders to, that point at an injected host,
    and bare URLs / e-mail addresses that GFM would turn into links."""
    bad = []
    for tok in _MD.parse(text):
        for t in [tok, *(tok.children or [])]:
            if t.type == "image" or (t.type == "link_open" and "leak" in str(t.attrGet("href")) + text):
                href = t.attrGet("src") or t.attrGet("href") or ""
                if "leak" in href or "host" in href or "127.0.0.1" in href:
                    bad.append(f"{t.type}: {href}")
            if t.type in ("html_inline", "html_block"):
                bad.append(f"html: {t.content}")
    if any(e in text for e in ("leak", "127.0.0.1")) and _BARE_URL.search(text):
        bad.append(f"bare url: {text}")
    return bad


def test_plain_escapes_every_kind():
    for s in EVIL:
        assert not _leaks(plain(s)), s
        assert re.sub(r"\\(.)", r"\1", plain(s)) == s           # and it reads the same
    assert plain("cat (3) final_v2.png") == "cat (3) final_v2.png"  # ordinary names unchanged
    assert _leaks(LEAK) and _leaks("see http://127.0.0.1:9/leak")    # the checker itself sees them


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]


def _assert_no_leaks(at):
    texts = _strings(at)
    assert texts
    bad = [b for t in texts for b in _leaks(t)]
    assert not bad, bad


def test_audit_note_and_run_labels_are_text(monkeypatch):
    from analysis.audit.trail import RunInput, open_store
    from tests.audit.test_audit import _summary
    store = open_store()
    uid = store.record(RunInput(user="", page="home", image_label=LEAK + ".png", dataset_label=EVIL[1],
                                model_name=EVIL[2]), _summary(5))
    for s in EVIL:
        store.add_note(uid, "", s, "finding")
    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params.update({"page": "audit", "au_sel": json.dumps([uid])})
    at.run()
    _ok(at)
    assert any("leak" in m.value for m in at.markdown)          # the note is shown ...
    _assert_no_leaks(at)                                          # ... as text


def test_uploaded_file_name_in_sidebar_and_pages_is_text():
    from analysis.core.store import save_upload
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(buf, "PNG")
    digest = save_upload(buf.getvalue(), "x.png")
    ref = json.dumps({"kind": "upload", "ref": digest, "label": LEAK + ".png"})
    for page in ("home", "deepdream"):
        at = AppTest.from_file(APP, default_timeout=600)
        at.query_params.update({"page": page, "image": ref})
        at.run()
        _ok(at)
        _assert_no_leaks(at)
    bad = json.dumps({"kind": "upload", "ref": "0" * 64, "label": LEAK})   # an error naming it
    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params.update({"image": bad})
    at.run()
    _ok(at)
    assert any("leak" in w.value for w in at.warning)            # the link's problem, naming the label
    _assert_no_leaks(at)


def _evil_zip() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buf, "w") as z:
        for c, cls in enumerate(["![x](https:host?leak)", "[y](https:host?leak2)"]):
            for i in range(3):
                im = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(im, "PNG")
                z.writestr(f"{cls}/![f{i}](https:host?leak{c}{i}).png", im.getvalue())
    return buf.getvalue()


def test_zip_class_and_file_names_in_embeddings_are_text():
    from analysis.core.store import save_upload
    digest = save_upload(_evil_zip(), "evil.zip")
    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params.update({"page": "embeddings", "model": json.dumps({"kind": "digits"}),
                            "dataset": json.dumps({"kind": "zip", "ref": digest, "label": "[d](https:host?leak).zip"}),
                            "sb_dataset": "zip"})
    at.run()
    _ok(at)
    at.button(key="em_extract").click().run()
    _ok(at)
    caps = [c for t in _strings(at) for c in [t] if "leak" in t]
    assert len(caps) >= 4, caps                                  # captions with class and file names
    _assert_no_leaks(at)
