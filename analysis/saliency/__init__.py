"""Saliency family: the method table (registry), the methods (registered on import), trust
checks. Importing the package registers the built-in methods, so
``analysis.saliency.registry`` always lists them."""
# isort: off
import analysis.saliency.methods  # noqa: F401  (registers the built-in methods)
import analysis.saliency.lrp_methods  # noqa: F401  (then the LRP composites, from analysis.relevance)
# isort: on
