"""Every public function and method of analysis/ has a docstring that names its arguments
(the developers' guide: "Every public function of analysis has a docstring with its
arguments"), and the descriptions of the saliency method table are wrapped in the source.

The walk is static (ast): top-level functions and methods of top-level classes whose names do
not start with "_" (so dunder methods are exempt); properties are exempt. ``forward`` of a
module counts like any other method: its inputs are documented. Each parameter other than
``self`` / ``cls`` (``*args`` / ``**kwargs`` included where the function has them) must occur
in the docstring as a whole word, e.g. in an "Args:" block or in the prose.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# analysis/dataset/ and analysis/embeddings/large.py are being rewritten (and documented) by
# other engineers in parallel; their names wait here until that work is merged. Shrink-only:
# the test fails on a listed name that is documented, so the coordinator empties it after merging.
REWRITTEN_ELSEWHERE = frozenset({
    "analysis.dataset.__main__.cmd_audit",
    "analysis.dataset.__main__.cmd_list",
    "analysis.dataset.__main__.main",
    "analysis.dataset.executor.JobPlan.meta",
    "analysis.dataset.executor.JobResult.warnings",
    "analysis.dataset.executor.JobSpec.from_dict",
    "analysis.dataset.executor.column_array",
    "analysis.dataset.executor.finalize",
    "analysis.dataset.manifest.DatasetRef.from_dict",
    "analysis.dataset.manifest.DatasetRef.label",
    "analysis.dataset.manifest.DatasetRef.parse",
    "analysis.dataset.manifest.ImageReader.read",
    "analysis.dataset.manifest.read_file_image",
    "analysis.dataset.ray_backend.cluster_gpus",
    "analysis.dataset.ray_backend.write_input",
    "analysis.dataset.record.job_metrics",
    "analysis.dataset.runner.BatchRunner.prepare",
    "analysis.dataset.runner.BatchRunner.run_batch",
    "analysis.dataset.runner.BatchRunner.run_chunk",
    "analysis.dataset.runner.concat_columns",
    "analysis.dataset.runner.part_info",
    "analysis.dataset.runner.write_part",
    "analysis.dataset.workers.FeaturesWorker.normalize",
    "analysis.dataset.workers.PredictWorker.normalize",
    "analysis.dataset.workers.SaliencyWorker.normalize",
    "analysis.dataset.workers.SaliencyWorker.scalars",
    "analysis.dataset.workers.TrustWorker.normalize",
    "analysis.dataset.workers.Worker.base_columns",
    "analysis.dataset.workers.model_spec_from",
    "analysis.embeddings.large.recall_at_k",
    "analysis.embeddings.large.sample_indices",
})

# still being documented in this branch (emptied before it ends)
_NOT_YET = frozenset({
    "analysis.audit.passwords.check_login",
    "analysis.audit.passwords.hash_password",
    "analysis.audit.passwords.main",
    "analysis.audit.report.html_report",
    "analysis.core.models.bundle.ModelBundle.card",
    "analysis.core.models.bundle.ModelBundle.denormalize",
    "analysis.core.models.bundle.ModelBundle.inputs",
    "analysis.core.models.bundle.Preprocessing.denormalize",
    "analysis.core.models.bundle.Preprocessing.geometry",
    "analysis.core.models.bundle.Preprocessing.normalize",
    "analysis.core.models.bundle.Preprocessing.to_display",
    "analysis.core.models.bundle.Preprocessing.to_unit",
    "analysis.core.models.bundle.weights_sha256",
    "analysis.core.models.digits.DigitsCNN.forward",
    "analysis.core.models.digits.load_digits_model",
    "analysis.core.models.digits.train_digits_cnn",
    "analysis.core.models.efficientnet_lite.Conv2dSame.forward",
    "analysis.core.models.efficientnet_lite.EfficientNetLite.features",
    "analysis.core.models.efficientnet_lite.EfficientNetLite.forward",
    "analysis.core.models.efficientnet_lite.MBConvBlock.forward",
    "analysis.core.models.hf_source.HFImageClassifier.attentions",
    "analysis.core.models.hf_source.HFImageClassifier.forward",
    "analysis.core.models.hf_source.check_config",
    "analysis.core.models.hf_source.hf_bundle_from_zip",
    "analysis.core.models.hf_source.hf_model_folders",
    "analysis.core.models.hf_source.processor_preprocessing",
    "analysis.core.models.loaders.default_bundle",
    "analysis.core.models.loaders.select_device",
    "analysis.core.models.loaders.torchvision_bundle",
    "analysis.core.models.loaders.trusted_bundle",
    "analysis.core.models.loaders.trusted_model_files",
    "analysis.core.models.loaders.user_weights_bundle",
    "analysis.core.models.registry.ModelSpec.label",
    "analysis.core.models.registry.apply_overrides",
    "analysis.core.models.registry.parse_overrides",
    "analysis.core.models.timm_source.timm_categories",
    "analysis.relevance.workers.CRPWorker.normalize",
})

ALLOWED = REWRITTEN_ELSEWHERE | _NOT_YET


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
    assert len(found) > 300
    assert _undocumented_args("Args:\n    x: the input.", ["x", "xs", "y"]) == ["xs", "y"]
    assert _undocumented_args("see ``layer.weight``", ["weight"]) == ["weight"]   # an attribute is not the argument


def test_every_public_function_documents_its_arguments():
    bad = {n: why for n, why in _problems().items() if n not in ALLOWED}
    assert not bad, ("public functions of analysis without a docstring naming their arguments:\n  "
                     + "\n  ".join(f"{n}: {why}" for n, why in sorted(bad.items())))


def test_allow_list_only_shrinks():
    problems = _problems()
    stale = sorted(n for n in ALLOWED if n not in problems)
    assert not stale, "documented or removed, delete from the allow-list:\n  " + "\n  ".join(stale)
    assert all(n.startswith(("analysis.dataset.", "analysis.embeddings.large.")) for n in REWRITTEN_ELSEWHERE)
