"""The optimisation engine: change the pixels, not the weights.

One engine serves class and channel visualisation, DeepDream, feature inversion and
texture / style (Gram matching). Its parts are four modules: ``objectives`` (terms that add
and scale), ``params`` (image parameterisations), ``transforms`` (robustness) and ``engine``
(the generator ``optimize`` and its step rules). This package is their public surface, so a
caller writes ``import analysis.optimize as O; O.channel(...)``; presets for the pages live in
``analysis.optimize.featurevis``.
"""
from analysis.optimize.engine import (  # noqa: F401 - re-exported: the package is the public surface
    STEP_RULES,
    OptResult,
    OptStep,
    forward_context,
    optimize,
    run,
    to_uint8,
)
from analysis.optimize.objectives import (  # noqa: F401 - re-exported: the package is the public surface
    IMAGENET_MEAN,
    IMAGENET_STD,
    Context,
    Objective,
    Term,
    channel,
    class_logit,
    class_prob,
    diversity,
    feature_match,
    gram,
    gram_match,
    l2,
    layer_l2,
    neuron,
    total_variation,
)
from analysis.optimize.params import (  # noqa: F401 - re-exported: the package is the public surface
    NATURAL_PHOTOS,
    FourierImage,
    ImageParam,
    MacoImage,
    PixelImage,
    natural_magnitude,
)
from analysis.optimize.transforms import (  # noqa: F401 - re-exported: the package is the public surface
    Jitter,
    Pad,
    RandomCrops,
    RandomRotate,
    RandomScale,
    Roll,
    Transform,
    standard_transforms,
)
