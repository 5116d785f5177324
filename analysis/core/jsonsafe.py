"""JSON-safe scalars: the one rule for turning a Python or NumPy scalar into a JSON value."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

NOT_SCALAR = object()        # json_scalar's answer for anything that is not a scalar it knows


def json_scalar(v: Any) -> Any:
    """``v`` as a JSON value if it is None, a bool, a str, an int or a float (Python or
    NumPy): NumPy numbers become Python numbers, NaN and infinities their strings ("nan",
    "inf", "-inf": JSON has none of them). Anything else: :data:`NOT_SCALAR`.

    Args:
        v: any value.
    """
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else repr(f)
    return NOT_SCALAR
