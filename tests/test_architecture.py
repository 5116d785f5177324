"""The house rules, checked on the source (docs/design.md, "Floors and families"):

* floors: ``pages`` → ``dashboard`` → ``analysis`` families → ``analysis.core``; nothing
  imports upwards, and ``analysis`` never imports streamlit;
* each analysis family imports only ``analysis.core`` and itself, plus the documented edges
  in ``ALLOWED_EDGES``;
* no import cycle between modules of analysis/ and dashboard/.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import REPO

# family -> families it may import besides core and itself (each edge documented in docs/design.md)
ALLOWED_EDGES: dict[str, set[str]] = {
    "style": {"optimize"},          # texture and style transfer are objectives of the optimisation engine
    "dataset": {"saliency", "embeddings", "audit"},  # data-set jobs run the per-image methods; its CLI records runs
    "saliency": {"relevance"},      # LRP composites (relevance family) are registered as saliency methods
    "relevance": {"dataset"},       # CRP reference galleries are a data-set executor job (a Worker kind)
    "compare": {"dataset"},         # model comparison runs both models' predictions as executor jobs
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (lazy imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import (use absolute imports)")
            if node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _sources(*tops: str) -> dict[str, Path]:
    out = {}
    for top in tops:
        for p in (REPO / top).rglob("*.py"):
            out[_module_name(p)] = p
    return out


def _family(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if parts[0] == "analysis" and len(parts) > 1 else None


def test_floors_never_import_upwards():
    bad = []
    for mod, path in _sources("analysis", "dashboard").items():
        for imp in _imports(path):
            top = imp.split(".")[0]
            if mod.startswith("analysis") and top in ("dashboard", "pages", "streamlit"):
                bad.append(f"{mod} imports {imp}")
            if mod.startswith("dashboard") and top == "pages":
                bad.append(f"{mod} imports {imp}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_families_import_only_core_and_documented_edges():
    families = {p.name for p in (REPO / "analysis").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert "core" in families
    bad = []
    for mod, path in _sources("analysis").items():
        fam = _family(mod)
        for imp in _imports(path):
            other = _family(imp)
            if other is None or other not in families or other == fam:
                continue
            if fam == "core" and other != "core":
                bad.append(f"{mod} (core) imports {imp}")
            elif fam not in (None, "core") and other != "core" and other not in ALLOWED_EDGES.get(fam, set()):
                bad.append(f"{mod} ({fam}) imports {imp}")
    assert not bad, "imports across families (allowed: core, and ALLOWED_EDGES):\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    mods = _sources("analysis", "dashboard")
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps = set()
        for imp in _imports(path):
            # an import of a.b.c names module a.b.c if it exists, else a.b (from a.b import c)
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp != mod and not mod.startswith(imp + ".") and not (mods[imp].name == "__init__.py"):
                deps.add(imp)
        graph[mod] = deps
    # Tarjan's strongly connected components
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    import sys
    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    assert not sccs, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in sccs)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The checks above can fail: on a made-up tree they find what they look for."""
    a = tmp_path / "a.py"
    a.write_text("from analysis.saliency import methods\nimport streamlit\n")
    assert "streamlit" in _imports(a) and "analysis.saliency.methods" in _imports(a)
    assert _family("analysis.saliency.methods") == "saliency" and _family("dashboard.x") is None


# ---------------------------------------------------------------- private names, bundle attributes

# private names imported from another module: none left (make a shared name public, or move it
# to where it belongs)
KNOWN_PRIVATE_IMPORTS: frozenset[str] = frozenset()


def _private_imports(mod: str, tree: ast.AST) -> set[str]:
    """``from other.module import _name`` and ``other_module._name`` in ``tree`` (module ``mod``)."""
    out, aliases = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("analysis", "dashboard"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__") and node.module != mod:
                    out.add(f"{mod} imports {node.module}.{a.name}")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name.split(".")[0] in ("analysis", "dashboard"):
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in aliases
                and aliases[node.value.id] != mod):
            out.add(f"{mod} imports {aliases[node.value.id]}.{node.attr}")
    return out


def test_no_private_names_across_modules():
    found = set()
    for mod, path in _sources("analysis", "dashboard", "pages").items():
        found |= _private_imports(mod, ast.parse(path.read_text()))
    new, gone = sorted(found - KNOWN_PRIVATE_IMPORTS), sorted(KNOWN_PRIVATE_IMPORTS - found)
    assert not new, "private names used across modules (make them public or move them):\n" + "\n".join(new)
    assert not gone, "fixed: delete from KNOWN_PRIVATE_IMPORTS:\n" + "\n".join(gone)


def _bundle_attribute_writes(tree: ast.AST, declared: set[str]) -> list[str]:
    """Lines that attach an undeclared attribute to a bundle (a name containing "bundle"):
    ``bundle.x = ...``, ``setattr(bundle, ...)``, ``bundle.__dict__[...]``."""
    bad = []
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for t in targets:
            if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and "bundle" in t.value.id
                    and t.attr not in declared):
                bad.append(f"line {node.lineno}: {t.value.id}.{t.attr} = ...")
        if (isinstance(node, ast.Attribute) and node.attr == "__dict__" and isinstance(node.value, ast.Name)
                and "bundle" in node.value.id):
            bad.append(f"line {node.lineno}: {node.value.id}.__dict__")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                and node.args and isinstance(node.args[0], ast.Name) and "bundle" in node.args[0].id):
            bad.append(f"line {node.lineno}: setattr({node.args[0].id}, ...)")
    return bad


def test_no_attributes_attached_to_model_bundles_at_run_time():
    """Data kept with a model are declared ModelBundle fields (derived, guided_cache,
    receptive_cache), never attributes attached at run time."""
    from dataclasses import fields

    from analysis.core.models.bundle import ModelBundle
    declared = {f.name for f in fields(ModelBundle)}
    bad = [f"{mod} {line}" for mod, path in _sources("analysis", "dashboard", "pages").items()
           for line in _bundle_attribute_writes(ast.parse(path.read_text()), declared)]
    assert not bad, "attributes attached to a ModelBundle:\n" + "\n".join(bad)


def test_the_private_name_and_bundle_checks_can_fail():
    tree = ast.parse("import analysis.core.hooks as H\nfrom analysis.core.images import _decode\n"
                     "H._scoped()\nbundle.plan = 1\nbundle.derived['p'] = 1\nsetattr(bundle, 'x', 1)\n"
                     "bundle.__dict__['y'] = 2\n")
    assert _private_imports("analysis.x", tree) == {"analysis.x imports analysis.core.images._decode",
                                                    "analysis.x imports analysis.core.hooks._scoped"}
    assert [b.split(":")[0] for b in _bundle_attribute_writes(tree, {"derived"})] == ["line 4", "line 6", "line 7"]


# ---------------------------------------------------------------- the map in docs/design.md

MAP_START, MAP_END = "<!-- module-map -->", "<!-- /module-map -->"


def _summary(path: Path) -> str:
    """A module's docstring, first sentence (or first paragraph), at most 88 characters."""
    import re
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    para = " ".join(doc.split("\n\n")[0].split()).replace("``", "").replace("**", "")
    m = re.match(r"(.+?(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.)(\s+[A-Z(`*]|$)", para)
    s = (m.group(1) if m and len(m.group(1)) > 25 else para).rstrip(".")
    return s[:88] + ("…" if len(s) > 88 else "")


def module_map() -> str:
    """One line per package and module of analysis/, dashboard/ and pages/."""
    lines: list[str] = []

    def walk(d: Path, depth: int) -> None:
        for p in sorted(d.iterdir(), key=lambda p: (p.is_dir(), p.name)):
            if p.name.startswith((".", "__")):
                continue
            if p.is_dir() and (p / "__init__.py").exists():
                lines.append(f"{'  ' * depth}{p.name + '/':<24}{_summary(p / '__init__.py')}".rstrip())
                walk(p, depth + 1)
            elif p.suffix == ".py":
                lines.append(f"{'  ' * depth}{p.name:<24}{_summary(p)}".rstrip())

    for top in ("analysis", "dashboard", "pages"):
        lines.append(f"{top}/")
        walk(REPO / top, 1)
    return "\n".join(lines)


def _write_map() -> None:
    doc = REPO / "docs" / "design.md"
    text = doc.read_text()
    a, b = text.index(MAP_START) + len(MAP_START), text.index(MAP_END)
    doc.write_text(text[:a] + "\n```\n" + module_map() + "\n```\n" + text[b:])


def test_design_map_matches_the_tree():
    """docs/design.md's module map lists exactly the modules there are (regenerate it with
    `python -m tests.test_architecture`)."""
    text = (REPO / "docs" / "design.md").read_text()
    assert MAP_START in text and MAP_END in text, "docs/design.md has no module map"
    block = text[text.index(MAP_START) + len(MAP_START):text.index(MAP_END)].strip().strip("`").strip()
    assert block == module_map(), ("docs/design.md's module map is out of date: run "
                                   "`python -m tests.test_architecture` and commit docs/design.md")


if __name__ == "__main__":
    _write_map()
