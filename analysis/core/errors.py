"""Typed exceptions of convlens. The UI shows ``str(exc)`` as a message; analysis code
raises one of these for every bad input it can recognise, never a bare Exception."""


class ConvlensError(Exception):
    """Base class: a problem the user can understand and fix. ``str()`` is the message."""


class ImageLoadError(ConvlensError):
    """The bytes are not an image we can read (corrupt, truncated, unknown format)."""


class LimitError(ConvlensError):
    """An input exceeds a configured limit (bytes, pixels, data-set size...)."""


class ModelLoadError(ConvlensError):
    """A model could not be built or its weights could not be obtained."""


class WeightsError(ModelLoadError):
    """A weights file is unsafe, corrupt, or does not match the architecture."""


class LayerError(ConvlensError):
    """A layer name does not exist in the model or cannot be used as asked."""


class DatasetError(ConvlensError):
    """A data set is missing, empty, badly laid out or unreadable."""


class ParameterError(ConvlensError):
    """A parameter is impossible (out of range, wrong type, unknown option)."""
