"""Share links keep what a new user expects them to keep (issue 13): the active tab of a
page, and every class-visualisation preset's settings. Session A sets the view, its URL
query opened in a fresh session B must show the same view."""
import pytest
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _session(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.switch_page(f"../pages/{page}.py").run()
    _ok(at)
    return at


def _open(page: str, params: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params.update(params)
    at.query_params["page"] = page
    at.run()
    _ok(at)
    return at


def _link(at) -> dict:
    return dict(at.query_params)


def active_tabs(at) -> list[str]:
    """The tab each tab group of the page opens on in the browser (its ``default_tab_index``)."""
    out = []

    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "WhichOneof") and "tab_container" in [
                f.name for f, _ in proto.ListFields()]:
            labels = [c.label for c in node.children.values()]
            out.append(labels[proto.tab_container.default_tab_index])
        for c in getattr(node, "children", {}).values():
            walk(c)
    walk(at._tree)
    return out


def test_inside_link_opens_on_the_active_tab():
    a = _session("inside")
    assert active_tabs(a) == ["Filters"]
    a.session_state["in_tab"] = "Maximally activating patches"        # what a click on the tab does
    a.run()
    _ok(a)
    q = _link(a)
    assert q.get("in_tab") == "Maximally activating patches"
    b = _open("inside", q)
    assert active_tabs(b) == ["Maximally activating patches"]           # the tab the link opens on
    assert _link(b) == q


@pytest.mark.parametrize("page,url,key,tab", [("inversion", "inversion", "iv_tab", "Shallow → deep strip"),
                                              ("texture", "texture", "tx_tab", "Shallow → deep strip"),
                                              ("fast_style", "fast-style", "fs_tab", "Apply")])
def test_other_tabbed_pages_keep_their_tab_in_the_link(page, url, key, tab):
    a = _session(page)
    a.session_state[key] = tab
    a.run()
    _ok(a)
    q = _link(a)
    assert q.get(key) == tab
    assert active_tabs(_open(url, q))[0] == tab


def _presets():
    from analysis.optimize.featurevis import PRESETS
    return list(PRESETS)


@pytest.mark.parametrize("preset", _presets())
def test_every_classvis_preset_survives_a_link(preset):
    from analysis.optimize.featurevis import PRESETS
    from dashboard.optimize_ui import slug
    from dashboard.share import _KEY
    base = PRESETS[preset]
    k = f"cv_{slug(preset)}"
    assert _KEY.match(f"{k}_steps"), k                              # a key share links carry
    a = _session("classvis")
    a.selectbox(key="cv_preset").set_value(preset).run()
    a.number_input(key=f"{k}_steps").set_value(base.steps + 7).run()
    a.number_input(key=f"{k}_seed").set_value(11).run()
    a.number_input(key=f"{k}_roll").set_value(base.roll + 1).run()
    stretch = a.checkbox(key=f"{k}_stretch").value
    a.checkbox(key=f"{k}_stretch").set_value(not stretch).run()
    _ok(a)
    q = _link(a)
    assert q["cv_preset"] == preset and q[f"{k}_steps"] == str(base.steps + 7)
    b = _open("classvis", q)
    assert b.selectbox(key="cv_preset").value == preset
    assert b.number_input(key=f"{k}_steps").value == base.steps + 7
    assert b.number_input(key=f"{k}_seed").value == 11
    assert b.number_input(key=f"{k}_roll").value == base.roll + 1
    assert b.checkbox(key=f"{k}_stretch").value is (not stretch)
    assert _link(b) == q


def test_preset_slugs_are_distinct():
    from dashboard.optimize_ui import slug
    names = _presets()
    assert len({slug(n) for n in names}) == len(names)
    assert slug("MACO (Fel et al. 2023)") == "MACO_Fel_et_al_2023" and slug("CS231n") == "CS231n"
