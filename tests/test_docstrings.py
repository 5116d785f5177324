"""Every public function and method of analysis/ has a docstring that names its arguments
(the developers' guide: "Every public function of analysis has a docstring with its
arguments"), and the descriptions of the saliency method table are wrapped in the source.

The walk is static (ast): top-level functions and methods of top-level classes whose names do
not start with "_" (so dunder methods are exempt); properties are exempt. ``forward`` of a
module counts like any other method: its inputs are documented. Each parameter other than
``self`` / ``cls`` (``*args`` / ``**kwargs`` included where the function has them) must occur
in the docstring as a whole word, e.g. in an "Args:" block or in the prose.

The texts of the saliency method table (titles, descriptions, parameter help) are checked
statically too: each description is one short paragraph, and no source line of them is longer
than ``MAX_PIECE`` characters.
"""
import ast
import io
import re
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _is_property(fn) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property"
               or isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter") for d in fn.decorator_list)


def _params(fn, method: bool) -> list[str]:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if method and not static and names and names[0] in ("self", "cls"):
        names = names[1:]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return names


def _public_functions() -> dict[str, tuple[str, list[str]]]:
    """Qualified name -> (docstring or "", parameter names) of every public function."""
    out = {}
    for path in sorted((ROOT / "analysis").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                out[f"{module}.{node.name}"] = (ast.get_docstring(node) or "", _params(node, False))
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for item in node.body:
                    if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_")
                            and not _is_property(item)):
                        out[f"{module}.{node.name}.{item.name}"] = (ast.get_docstring(item) or "",
                                                                   _params(item, True))
    return out


def _undocumented_args(doc: str, params: list[str]) -> list[str]:
    return [p for p in params if not re.search(rf"(?<![\w.]){re.escape(p)}\b", doc)]


def _problems() -> dict[str, str]:
    out = {}
    for name, (doc, params) in _public_functions().items():
        if not doc:
            out[name] = "no docstring"
        elif missing := _undocumented_args(doc, params):
            out[name] = "arguments not in the docstring: " + ", ".join(missing)
    return out


def test_walk_finds_the_public_api():
    found = _public_functions()
    assert found["analysis.core.fsio.atomic_write"][0] and found["analysis.core.lru.LockedLRU.find"][0]
    assert "analysis.core.hooks._scoped" not in found
    assert found["analysis.dataset.workers.SaliencyWorker.normalize"][1] == ["params", "bundle"]   # no exemptions
    assert len(found) > 300
    assert found["analysis.style.fast.TransformerNet.forward"][1] == ["x"]          # forward counts, self does not
    assert found["analysis.optimize.objectives.Objective.of"][1][0] == "name"        # classmethod: cls dropped
    assert "analysis.style.gatys.StripResult.images" not in found                   # a property
    assert not any(n.rsplit(".", 1)[-1].startswith("__") for n in found)           # dunder methods exempt
    assert _undocumented_args("Args:\n    x: the input.", ["x", "xs", "y"]) == ["xs", "y"]
    assert _undocumented_args("see ``layer.weight``", ["weight"]) == ["weight"]   # an attribute is not the argument


def test_every_public_function_documents_its_arguments():
    bad = _problems()
    assert not bad, ("public functions of analysis without a docstring naming their arguments:\n  "
                     + "\n  ".join(f"{n}: {why}" for n, why in sorted(bad.items())))


# ------------------------------------------------------------------ the saliency method table

MAX_PIECE = 100          # characters (quotes included) of one source line's piece of a table text


def _table_texts() -> list[tuple[str, str, ast.Constant, list[str]]]:
    """(file, what, literal, source lines) of every title, description, parameter label and
    help text of the saliency method table: the arguments of ``register`` / ``Method`` /
    ``Param`` in analysis/saliency and analysis/relevance, and the LRP ``COMPOSITES``."""
    out = []
    files = sorted((ROOT / "analysis" / "saliency").glob("*.py")) + sorted((ROOT / "analysis" / "relevance").glob("*.py"))
    for path in files:
        src = path.read_text(encoding="utf-8")
        lines, rel = src.splitlines(), str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(src)):
            picked = []
            if isinstance(node, ast.Call):
                fn = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if fn == "register":
                    picked += [("title", a) for a in node.args[1:2]] + [("description", a) for a in node.args[2:3]]
                if fn in ("register", "Method"):
                    picked += [(k.arg, k.value) for k in node.keywords if k.arg in ("title", "description")]
                if fn == "Param":
                    picked += [(k.arg, k.value) for k in node.keywords if k.arg in ("help", "label")]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "COMPOSITES" for t in targets):
                    for pair in node.value.values:
                        picked += [("title", pair.elts[0]), ("description", pair.elts[1])]
            out += [(rel, what, v, lines) for what, v in picked
                    if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return out


def _pieces(node: ast.Constant, lines: list[str]) -> list[str]:
    """The string tokens of a literal as written (one per source line when it is implicitly
    concatenated over several lines)."""
    raw = [line.encode() for line in lines[node.lineno - 1:node.end_lineno]]
    raw[-1] = raw[-1][:node.end_col_offset]
    raw[0] = raw[0][node.col_offset:]
    src = "(" + b"\n".join(raw).decode() + ")"
    return [t.string for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.STRING]


def test_method_table_texts_wrap_at_a_readable_width():
    """Descriptions are one paragraph that reads in a few lines (the page shows it as a caption,
    ``Method.wrapped`` re-wraps it at ``DESCRIPTION_WIDTH`` for tooltips and docs), and their
    source is wrapped: no piece of a title, description or help text longer than MAX_PIECE."""
    reg = ast.parse((ROOT / "analysis" / "saliency" / "registry.py").read_text(encoding="utf-8"))
    width = next(n.value.value for n in reg.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "DESCRIPTION_WIDTH" for t in n.targets))
    texts = _table_texts()
    descriptions = [v.value for _, what, v, _ in texts if what == "description"]
    assert len(descriptions) >= 14 and any("Zeiler & Fergus" in d for d in descriptions)   # the walk finds the table
    too_long, unreadable = [], []
    for rel, what, v, lines in texts:
        pieces = _pieces(v, lines)
        assert "".join(ast.literal_eval(p) for p in pieces) == v.value, (rel, v.lineno)
        too_long += [f"{rel}:{v.lineno} {what}: {len(p)} characters" for p in pieces if len(p) > MAX_PIECE]
        if what == "description" and ("\n" in v.value or len(textwrap.wrap(v.value, width)) > 4):
            unreadable.append(f"{rel}:{v.lineno}: {v.value[:60]}...")
    assert not too_long, f"wrap these in the source (at most {MAX_PIECE} characters a line):\n  " + "\n  ".join(too_long)
    assert not unreadable, ("descriptions must be one paragraph of at most 4 lines at "
                            f"{width} characters:\n  " + "\n  ".join(unreadable))
