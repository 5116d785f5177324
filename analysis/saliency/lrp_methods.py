"""LRP composites as saliency methods (the relevance family computes, this registers).

Each composite of :data:`analysis.relevance.lrp.COMPOSITES` except the all-ε one (kept
for tests and the Relevance page) is one signed method: positive relevance is evidence for
the target, negative against. The map is the relevance summed over colour channels, so the
map's total is what LRP conserves (the score, minus what biases absorb)."""
from __future__ import annotations

from analysis.core.schema import Param
from analysis.relevance.lrp import COMPOSITES, lrp
from analysis.saliency.registry import MapOutput, Method, add

_COMMON = (Param("epsilon", "float", 1e-6, 1e-9, 1.0, help="Stabiliser of the ε rule (dense layers)."),
           Param("zero_bias", "bool", False, label="ignore biases",
                 help="Leave biases and merged batch-norm shifts out of the rules (zennit zero_params): "
                      "the relevance they would absorb stays in the map."))
_PARAMS = {"epsilon_gamma_box": _COMMON + (Param("gamma", "float", 0.25, 0.0, 4.0, step=0.05,
                                                 help="γ: how much positive contributions are favoured."),)}


def _make(composite: str):
    def fn(bundle, x, target, *, progress=None, **params) -> MapOutput:
        rel, info, warnings = lrp(bundle, x, target, composite, **params)
        return MapOutput(map=rel.sum(0), signed=rel, info=info, warnings=warnings)
    return fn


for _name in ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat"):
    title, text = COMPOSITES[_name]
    add(Method(name=f"lrp_{_name}", title=title, description=text, fn=_make(_name), signed=True,
               params=_PARAMS.get(_name, _COMMON), reference="zennit (Anders et al. 2021)"), replace=True)
