"""Every public function and method of analysis/ has a docstring (the developers' guide:
"Every public function of analysis has a docstring with its arguments").

The walk is static (ast): top-level functions and methods of top-level classes whose names do
not start with "_"; properties are exempt. ``KNOWN_UNDOCUMENTED`` lists what was missing when
this test was written: it may only shrink. Document a name, then delete it here (the test
fails on a listed name that has a docstring, so the list stays true).
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KNOWN_UNDOCUMENTED = frozenset({
    "analysis.audit.passwords.hash_password",
    "analysis.audit.passwords.main",
    "analysis.audit.trail.RunRecord.image_files",
    "analysis.audit.trail.RunRecord.array_files",
    "analysis.audit.trail.AuditStore.run_dir",
    "analysis.audit.trail.AuditStore.update_view",
    "analysis.audit.trail.AuditStore.set_verdict",
    "analysis.audit.trail.AuditStore.add_note",
    "analysis.audit.trail.AuditStore.get",
    "analysis.audit.trail.AuditStore.count",
    "analysis.audit.trail.AuditStore.users",
    "analysis.audit.trail.AuditStore.file_path",
    "analysis.audit.trail.AuditStore.read_file",
    "analysis.audit.trail.AuditStore.load_array",
    "analysis.audit.trail.AuditStore.close",
    "analysis.core.guided.GuidedRectifier.forward",
    "analysis.core.guided.GuidedRectifier.extra_repr",
    "analysis.core.layers.LayerInfo.as_row",
    "analysis.core.layout.LayoutProbe.tag",
    "analysis.core.models.bundle.ModelBundle.denormalize",
    "analysis.core.models.bundle.ModelBundle.card",
    "analysis.core.models.digits.DigitsCNN.forward",
    "analysis.core.models.efficientnet_lite.Conv2dSame.forward",
    "analysis.core.models.efficientnet_lite.MBConvBlock.forward",
    "analysis.core.models.efficientnet_lite.EfficientNetLite.features",
    "analysis.core.models.efficientnet_lite.EfficientNetLite.forward",
    "analysis.core.models.hf_source.HFImageClassifier.forward",
    "analysis.core.models.registry.ModelSpec.label",
    "analysis.core.predict.Prediction.rows",
    "analysis.dataset.__main__.cmd_audit",
    "analysis.dataset.__main__.cmd_list",
    "analysis.dataset.__main__.main",
    "analysis.dataset.executor.JobResult.warnings",
    "analysis.dataset.executor.JobPlan.meta",
    "analysis.dataset.manifest.DatasetRef.label",
    "analysis.dataset.ray_backend.cluster_gpus",
    "analysis.dataset.workers.Worker.base_columns",
    "analysis.dataset.workers.PredictWorker.normalize",
    "analysis.dataset.workers.FeaturesWorker.normalize",
    "analysis.dataset.workers.SaliencyWorker.normalize",
    "analysis.dataset.workers.SaliencyWorker.scalars",
    "analysis.dataset.workers.TrustWorker.normalize",
    "analysis.embeddings.features.FeatureSet.same_as",
    "analysis.inside.activations.Activations.channel_stats",
    "analysis.inside.activations.Activations.summary",
    "analysis.inside.patches.PatchIndex.same_as",
    "analysis.inside.patches.TokenField.box",
    "analysis.optimize.featurevis.Preset.as_dict",
    "analysis.optimize.objectives.Context.act",
    "analysis.optimize.objectives.Objective.of",
    "analysis.optimize.objectives.Objective.evaluate",
    "analysis.optimize.objectives.Objective.describe",
    "analysis.optimize.params.ImageParam.image",
    "analysis.optimize.params.ImageParam.describe",
    "analysis.optimize.params.PixelImage.image",
    "analysis.optimize.params.PixelImage.clip_",
    "analysis.optimize.params.PixelImage.describe",
    "analysis.optimize.params.FourierImage.image",
    "analysis.optimize.params.FourierImage.describe",
    "analysis.optimize.params.MacoImage.image",
    "analysis.optimize.params.MacoImage.describe",
    "analysis.relevance.workers.CRPWorker.normalize",
    "analysis.saliency.incremental.LitePlan.logits",
    "analysis.saliency.registry.Method.param",
    "analysis.style.fast.ConvLayer.forward",
    "analysis.style.fast.ResidualBlock.forward",
    "analysis.style.fast.TransformerNet.forward",
    "analysis.style.fast.ContentSampler.batch",
    "analysis.style.gatys.StyleDefaults.as_dict",
    "analysis.style.gatys.LuminanceImage.image",
})


def _public_functions() -> dict[str, bool]:
    out = {}
    for path in sorted((ROOT / "analysis").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                out[f"{module}.{node.name}"] = bool(ast.get_docstring(node))
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for item in node.body:
                    if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_")
                            and not any(isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list)):
                        out[f"{module}.{node.name}.{item.name}"] = bool(ast.get_docstring(item))
    return out


def test_walk_finds_the_public_api():
    found = _public_functions()
    assert found["analysis.core.fsio.atomic_write"] and found["analysis.core.lru.LockedLRU.find"]
    assert "analysis.core.hooks._scoped" not in found
    assert len(found) > 300


def test_every_public_function_has_a_docstring():
    missing = sorted(n for n, has in _public_functions().items() if not has and n not in KNOWN_UNDOCUMENTED)
    assert not missing, "public functions of analysis without a docstring:\n  " + "\n  ".join(missing)


def test_known_undocumented_list_only_shrinks():
    found = _public_functions()
    stale = sorted(n for n in KNOWN_UNDOCUMENTED if found.get(n, True))
    assert not stale, ("documented or removed, delete from KNOWN_UNDOCUMENTED:\n  " + "\n  ".join(stale))
