"""Saliency family: the method table (registry), the methods (registered on import), trust
checks. Importing the package registers the built-in methods, so
``analysis.saliency.registry`` always lists them."""
import analysis.saliency.methods  # noqa: F401  (registers the built-in methods)
