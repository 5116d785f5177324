"""Adding a projection method or an optimisation preset is one entry: a toy one registered
here appears on its page (Embeddings, Class visualisation) and runs there."""
import json

from streamlit.testing.v1 import AppTest

from tests.paths import REPO
from tests.ui.test_app_embeddings import tiny_embeddings_page

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception and not at.error, ([e.value for e in at.error], at.exception)


def test_a_registered_projection_method_is_offered_and_runs(tmp_path, monkeypatch):
    import analysis.embeddings.projection as projection
    calls = []

    def resolve(n, d, dims, options, params):
        params["columns"] = list(range(dims))

    def run(x, dims, params, progress):
        calls.append(x.shape)
        return x[:, params["columns"]], None, {}

    monkeypatch.setattr(projection, "PROJECTIONS", dict(projection.PROJECTIONS))
    projection.register_projection(projection.ProjectionMethod("first", "First two features", run, resolve))
    at = tiny_embeddings_page(tmp_path, monkeypatch)
    assert at.selectbox(key="em_method").options[-1] == "First two features"     # shown by its title
    at.selectbox(key="em_method").set_value("first").run()
    _ok(at)
    assert calls == [(12, 64)]
    assert any(c.value.startswith("First two features · ") and "12 points" in c.value for c in at.caption)
    # the toy method reads none of the options: their widgets are disabled, t-SNE's perplexity among them
    assert at.number_input(key="em_perp").disabled and at.number_input(key="em_nn").disabled
    at.selectbox(key="em_method").set_value("umap").run()
    assert not at.number_input(key="em_nn").disabled and at.number_input(key="em_perp").disabled


def test_a_registered_preset_is_offered_and_runs(monkeypatch):
    from analysis.optimize.featurevis import PRESETS, Preset
    from dashboard.optimize_ui import slug
    toy = Preset("Toy preset", "a test's preset: plain unit pixels, Adam 0.05, 3 steps, 48 px",
                 space="unit", steps=3, step_rule="adam", lr=0.05, size=48)
    monkeypatch.setitem(PRESETS, toy.name, toy)
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("../pages/classvis.py").run()
    _ok(at)
    assert "Toy preset" in at.selectbox(key="cv_preset").options
    at.selectbox(key="cv_preset").set_value("Toy preset").run()
    k = f"cv_{slug(toy.name)}"
    assert at.number_input(key=f"{k}_steps").value == 3 and at.number_input(key=f"{k}_size").value == 48
    assert at.selectbox(key=f"{k}_space").value == "unit"
    assert any(toy.source in c.value for c in at.caption)
    at.number_input(key=f"{k}_pv").set_value(1).run()
    at.button(key="cv_go").click().run()
    _ok(at)
    p = at.json[-1].value
    p = p if isinstance(p, dict) else json.loads(p)
    assert p["preset"] == "Toy preset" and p["steps"] == 3 and p["lr"] == 0.05
    assert any("3 steps in" in c.value for c in at.caption)
