"""Saliency: which pixels matter for a class score. One method table (analysis.saliency.registry:
every method one entry with its parameter schema), incremental occlusion, and the trust checks
(deletion / insertion, model randomisation). Importing the package registers the built-in
methods, so ``analysis.saliency.registry`` always lists them."""
# isort: off
import analysis.saliency.methods
import analysis.saliency.transformer
import analysis.saliency.lrp_methods  # noqa: F401  (then the LRP composites, from analysis.relevance)
# isort: on
