"""AppTest of the Embeddings page past the in-memory limit (issue 18): a manifest data set of
2,101 8 x 8 digits with ``max_dataset_images`` lowered to 1,000, so the page takes the large
path — features from the data-set executor's ``features`` job stored memory-mapped, the map
of large_map (a 1,000-point sample + placement), NeighbourIndex, the point map, a selection
-> image grid -> "Explain", and the slice colouring."""
import json

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")
N = 2100
DUP_OF, DUP = 5, 2100            # image 2100 is a byte copy of image 5 (under another name)


def _manifest(root):
    """2,100 8x8 PNGs: the 1,797 real digits, then noisy copies of the first 303; plus a copy."""
    from PIL import Image

    from analysis.core.datasets import load_digits_dataset
    d = load_digits_dataset()
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = ["path,label"]
    for i in range(N):
        j = i % len(d)
        im = np.asarray(d.get(j)).astype(np.int64)
        if i >= len(d):
            im = im + rng.integers(-40, 41, size=im.shape)
        Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(root / "img" / f"{i:05d}.png")
        rows.append(f"img/{i:05d}.png,{int(d.labels[j])}")
    (root / "img" / "dup.png").write_bytes((root / "img" / f"{DUP_OF:05d}.png").read_bytes())
    rows.append(f"img/dup.png,{int(d.labels[DUP_OF])}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


def test_large_data_set_flow(tmp_path, monkeypatch):
    root = tmp_path / "big"
    manifest = _manifest(root).resolve()
    monkeypatch.setenv("CONVLENS_DATASET_DIRS", str(root.resolve()))
    monkeypatch.setenv("CONVLENS_MAX_DATASET_IMAGES", "1000")
    monkeypatch.setenv("CONVLENS_ENGINE", "local")
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.selectbox(key="sb_dataset").set_value(f"manifest:{manifest}").run()
    assert not at.exception
    at.switch_page("../pages/embeddings.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("more than the 1,000 this page holds in memory" in i.value for i in at.info)
    at.button(key="em_big_extract").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    head = next(c.value for c in at.caption if "features, memory-mapped" in c.value)
    assert head.startswith("2,101 × 64 features") and "local engine" in head, head

    # the stored features are the executor's rows, equal to the in-memory extraction
    from analysis.core.config import get_config
    from analysis.dataset.manifest import DatasetRef, open_dataset
    from analysis.embeddings.features import run_extract
    from analysis.embeddings.large import open_features
    from dashboard import state
    folders = [p.parent for p in (get_config().data_dir / "embeddings").glob("*/meta.json")]
    assert len(folders) == 1
    sf = open_features(folders[0])
    assert isinstance(sf.features, np.memmap) and sf.n == 2101
    assert np.array_equal(sf.index, np.arange(2101))
    ds = open_dataset(DatasetRef("manifest", path=str(manifest)))
    bundle = state.bundle_for(at.session_state["model_spec"])
    fs = run_extract(bundle, ds, sf.meta["layer"])
    np.testing.assert_allclose(np.asarray(sf.features), fs.features, rtol=1e-5, atol=1e-5)
    assert np.array_equal(sf.preds, fs.predictions) and np.array_equal(sf.labels, ds.labels)

    # neighbours: exact search here; the byte copy is the nearest image, and the k found
    # are the exact k nearest of the in-memory features
    cap = next(c.value for c in at.caption if c.value.startswith("Neighbour search"))
    assert "exact search" in cap and "2,101 vectors" in cap, cap
    at.number_input(key="em_q_idx").set_value(DUP_OF).run()
    found = at.session_state["_em_big_nn_result"]
    assert found[0] == DUP and len(found) == 8
    from analysis.embeddings.neighbors import knn
    exact, _ = knn(fs.features[DUP_OF:DUP_OF + 1], fs.features, 8, metric="cosine", exclude_self=np.array([DUP_OF]))
    assert set(found) == set(exact[0].tolist())
    # past EXACT_QUERY_MAX the page builds faiss HNSW and says so, with the recall it measured
    import analysis.embeddings.large as large
    monkeypatch.setattr(large, "EXACT_QUERY_MAX", 1000)
    at.run()
    cap = next(c.value for c in at.caption if c.value.startswith("Neighbour search"))
    assert "faiss HNSW over 2,101 vectors" in cap and "recall@10 " in cap and "200 random images" in cap, cap
    recall = float(cap.split("recall@10 ")[1].split(" ")[0])
    assert recall >= 0.95 and at.session_state["_em_big_nn_result"][0] == DUP
    monkeypatch.setattr(large, "EXACT_QUERY_MAX", 2_000_000)

    # the map: one point per image, a sample of 1,000 mapped by t-SNE and the rest placed
    at.session_state["em_big_sample"] = 1000
    at.run()
    at.button(key="em_big_map_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["_em_big_map_points"] == 2101
    from analysis.embeddings.large import load_map, map_params
    m = load_map(sf.path, "tsne", map_params("tsne", sample=1000), sf.n)
    s = len(m.sample_index)                          # stratified by label: 1,000 up to rounding
    assert m is not None and m.coords.shape == (2101, 2) and 990 <= s <= 1000 and np.isfinite(m.coords).all()
    cap = next(c.value for c in at.caption if "stratified sample" in c.value)
    assert f"{s:,}-point" in cap and f"other {2101 - s:,} placed" in cap, cap
    placed = np.setdiff1d(np.arange(2101), m.sample_index)
    if DUP in placed and DUP_OF in placed:           # equal features are placed at the same spot
        np.testing.assert_allclose(m.coords[DUP], m.coords[DUP_OF])

    # hover thumbnails on request: sprite sheets of every row's image, read sheet by sheet
    assert any("no thumbnails yet" in c.value for c in at.caption)
    at.button(key="em_big_thumbs").click().run()
    assert not at.exception and any("Hover a point for its image" in c.value for c in at.caption)
    from dashboard.embedding_map import THUMB_PX
    from dashboard.pointmap import component_root
    sheets = sorted((component_root() / "thumbs" / f"big-{sf.path.name[:24]}-{THUMB_PX}").glob("[0-9]*.*"))
    assert [p.stem for p in sheets] == ["0", "1", "2"]                  # 2,101 thumbnails, 1,024 a sheet
    from PIL import Image

    from dashboard import dataset_ui as dui
    with Image.open(sheets[2]) as im:                                    # row 2,100 (the copy): 53rd of sheet 2
        cell = np.asarray(im.convert("RGB"))[32:64, 20 * 32:21 * 32]
    want = dui.thumb(ds, bundle, DUP, THUMB_PX)
    assert np.abs(cell.astype(int) - want.astype(int)).mean() < 8      # lossy WebP, same image

    # a selection on the map -> the image grid -> Explain makes the image the subject
    at.session_state[f"em_bigmap_{sf.path.name[:16]}"] = {"points": [3, DUP, 7], "count": 3, "seq": 1}
    at.run()
    assert not at.exception
    assert any(m_.value.startswith("**3 selected**") for m_ in at.markdown)
    at.button(key=f"em_big_sel_x{DUP}").click().run()
    assert not at.exception
    assert "dup.png" in at.session_state["image_ref"].label

    # colour by slice: the colours are the data-set audit's slices of the same features
    at.selectbox(key="em_colour").set_value("slice").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    colours = np.asarray(at.session_state["_em_big_colours"])
    from dashboard.embedding_map import slice_assignment
    from dashboard.pointmap import slice_colouring
    wrong = sf.preds != sf.labels
    sa = slice_assignment(sf.features, wrong, sf.labels, n_clusters=8, sample_index=m.sample_index)
    expect, palette, legend = slice_colouring(sa.assignment, wrong)
    assert np.array_equal(colours, expect)
    assert len(palette) >= 2 and legend[0].startswith("slice "), legend    # at least one slice here
    for c in np.unique(sa.assignment):                         # one colour per cluster
        assert len(np.unique(colours[sa.assignment == c])) == 1

    # the link reopens this view in a fresh session: the manifest, the stored features, the kept map
    link = dict(at.query_params)
    b = AppTest.from_file(APP, default_timeout=300)
    b.query_params.update(link)
    b.query_params["page"] = "embeddings"                       # the URL's path in a browser
    assert len(json.dumps(link)) < 4000, sorted(link)            # no per-point array in the link
    b.run()
    assert not b.exception and not b.error, [e.value for e in b.error]
    assert b.session_state["dataset_ref"].kind == "manifest" and b.session_state["sb_dataset"] == f"manifest:{manifest}"
    assert any(c.value.startswith("2,101 × 64 features, memory-mapped") for c in b.caption), (
        sorted(link), [c.value[:60] for c in b.caption][:8])
    assert b.session_state["_em_big_map_points"] == 2101
    assert np.array_equal(np.asarray(b.session_state["_em_big_colours"]), expect)
