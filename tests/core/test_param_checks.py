"""One rule set for parameter checks (analysis.core.schema): bools, NaN and infinities are
refused everywhere; integers are Python or NumPy integers."""
import math

import numpy as np
import pytest

from analysis.core.errors import ParameterError
from analysis.core.schema import check_int, check_real, is_int, is_real


@pytest.mark.parametrize("v", [True, False, 1.0, "1", None, np.bool_(True)])
def test_is_int_refuses_bools_floats_and_text(v):
    assert not is_int(v)


@pytest.mark.parametrize("v", [0, -3, np.int64(7), np.uint8(2)])
def test_is_int_accepts_python_and_numpy_integers(v):
    assert is_int(v)


@pytest.mark.parametrize("v", [True, math.nan, math.inf, -math.inf, np.float32("nan"), "0.5", None])
def test_is_real_refuses_bools_nan_inf_and_text(v):
    assert not is_real(v)


def test_check_int_messages_and_values():
    assert check_int("k", np.int64(3), 1, 5) == 3 and type(check_int("k", np.int64(3), 1, 5)) is int
    with pytest.raises(ParameterError, match=r"^k must be an integer from 1 to 5, got 6$"):
        check_int("k", 6, 1, 5)
    with pytest.raises(ParameterError, match=r"^batch_size must be a positive integer, got True$"):
        check_int("batch_size", True, 1)
    with pytest.raises(ParameterError, match=r"^n must be an integer of at least 2, got 1$"):
        check_int("n", 1, 2)
    with pytest.raises(ParameterError, match="custom"):
        check_int("n", 1.5, message="custom")


def test_check_real_messages_and_values():
    assert check_real("lr", 1, 0, 1) == 1.0
    with pytest.raises(ParameterError, match=r"^lr must be a number from 0 to 1, got nan$"):
        check_real("lr", math.nan, 0, 1)
    with pytest.raises(ParameterError, match=r"^decay must be a number of at least 0.5, got 0.1$"):
        check_real("decay", 0.1, 0.5)
    with pytest.raises(ParameterError):
        check_real("x", False)
