"""Parameter schemas: one declaration per parameter, one rule set for every caller.

A :class:`Param` says what a parameter of an analysis function is (name, kind, range,
default, help). The same declaration serves

* the analysis function's own check (:func:`validate`: strict, raises
  :class:`~analysis.core.errors.ParameterError` naming the parameter),
* the dashboard, which draws a widget per parameter from it (``dashboard/schema_ui.py``),
* values that arrive from outside (a share link, a stored view): :func:`coerce` keeps what
  is valid, clamps numbers into range, drops keys that have no widget and says what it
  changed, so a bad link degrades to the defaults instead of breaking a page.

The rules, the same everywhere: a bool is never a number; NaN and infinities are refused;
an ``int`` parameter takes integers only (``3.0`` is accepted as 3, ``3.5`` is not); a
``float`` takes any finite real; a ``choice`` takes one of its choices; a ``layer`` takes
a layer name (checked against the model by the function that uses it) or None for the
function's default; a ``bool`` parameter takes True or False only.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from analysis.core.errors import ParameterError

KINDS = ("int", "float", "choice", "layer", "bool")


@dataclass(frozen=True)
class Param:
    """One parameter of an analysis function.

    name: keyword argument name; kind: one of ``KINDS``; default: value when not given
    (None for a ``layer`` means "the function's default layer"); lo / hi: inclusive range
    of ``int`` / ``float``; choices: the options of a ``choice``; help: one line for the
    UI; label: the widget's label (default: name with spaces); step: the UI step of a
    number; widget: a drawing hint for the UI ("slider", "number", "select", "radio");
    ui: False for parameters the UI never offers (batch sizes, seeds): values from outside
    (links) cannot set them, code can.
    """
    name: str
    kind: str
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    help: str = ""
    label: str = ""
    step: float | None = None
    widget: str = ""
    ui: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name!r}: kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind in ("int", "float") and (self.lo is None or self.hi is None or self.lo > self.hi):
            raise ValueError(f"parameter {self.name!r}: a number needs lo <= hi")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: a choice needs choices")
        if self.kind != "layer":
            try:
                check(self, self.default)        # the default itself must pass the rules
            except ParameterError as e:
                raise ValueError(f"parameter {self.name!r}: bad default: {e}") from e

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ")

    def describe(self) -> str:
        """The allowed values in words ("an integer from 1 to 256")."""
        if self.kind == "int":
            return f"an integer from {int(self.lo)} to {int(self.hi)}"
        if self.kind == "float":
            return f"a number from {self.lo:g} to {self.hi:g}"
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "bool":
            return "true or false"
        return "a layer name"


def is_int(value) -> bool:
    """Whether ``value`` is an integer (Python or NumPy) and not a bool.

    Args:
        value: anything.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """Whether ``value`` is a finite real number (Python or NumPy), not a bool, NaN or infinity.

    Args:
        value: anything.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _range_words(lo, hi, fmt) -> str:
    if lo is not None and hi is not None:
        return f"from {fmt(lo)} to {fmt(hi)}"
    if lo is not None:
        return f"of at least {fmt(lo)}"
    return f"of at most {fmt(hi)}"


def _checked(name: str, value, lo, hi, message: str | None, ok, noun: str, fmt):
    """``value`` if ``ok(value)`` and it lies in ``[lo, hi]``; else ParameterError with
    ``message`` or the standard text ("<name> must be <noun> from <lo> to <hi>, got <value>")."""
    if not ok(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        if message is None:
            words = noun + ("" if lo is None and hi is None else " " + _range_words(lo, hi, fmt))
            if noun == "an integer" and lo == 1 and hi is None:
                words = "a positive integer"
            message = f"{name} must be {words}, got {value!r}"
        raise ParameterError(message)
    return value


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, *, message: str | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[lo, hi]``, else ParameterError.

    Args:
        name: the parameter's name, for the message.
        value: the value to check.
        lo: smallest allowed value (None: no lower bound).
        hi: largest allowed value (None: no upper bound).
        message: the error text to use instead of the standard one
            ("k must be an integer from 1 to 50, got 0").
    """
    return int(_checked(name, value, lo, hi, message, is_int, "an integer", int))


def check_real(name: str, value, lo: float | None = None, hi: float | None = None, *,
               message: str | None = None) -> float:
    """``value`` as a float if it is a finite real (not a bool, NaN or infinity) in ``[lo, hi]``,
    else ParameterError.

    Args:
        name: as for :func:`check_int`.
        value: the value to check: a finite real this time.
        lo: the lower bound, inclusive (None: none).
        hi: the upper bound, inclusive (None: none).
        message: replaces the standard text ("lr must be a number from 0 to 1, got nan").
    """
    return float(_checked(name, value, lo, hi, message, is_real, "a number", "{:g}".format))


def check(param: Param, value) -> Any:
    """``value`` if it is valid for ``param`` (ints normalised to int, floats to float),
    else ParameterError naming the parameter and what it accepts."""
    def bad(why: str = ""):
        return ParameterError(f"{param.name} must be {param.describe()}{why}; got {value!r}.")
    if param.kind in ("int", "float"):
        if not is_real(value):
            raise bad()
        if param.kind == "int":
            if float(value) != int(value):
                raise bad()
            value = int(value)
        else:
            value = float(value)
        if not param.lo <= value <= param.hi:
            raise bad()
        return value
    if param.kind == "choice":
        if isinstance(value, bool) or value not in param.choices:
            raise bad()
        return value
    if param.kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise bad()
    return value


def validate(schema: tuple[Param, ...] | list[Param], params: dict, *, owner: str = "",
             fill_defaults: bool = True) -> dict:
    """Strict check of ``params`` against ``schema`` (for analysis functions).

    Unknown names and invalid values raise ParameterError naming them (``owner``, e.g.
    the method's display name, prefixes the unknown-name message). Returns the checked
    values, with the defaults of the missing ones when ``fill_defaults``."""
    by_name = {p.name: p for p in schema}
    unknown = sorted(set(params) - set(by_name))
    if unknown:
        who = f"{owner} has" if owner else "There is"
        raise ParameterError(f"{who} no parameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(by_name) or 'none'}.")
    out = {}
    for p in schema:
        if p.name in params:
            out[p.name] = check(p, params[p.name])
        elif fill_defaults:
            out[p.name] = p.default
    return out


def clamp(param: Param, value) -> tuple[Any, str | None]:
    """(usable value, message or None) for a value from outside: valid values pass; numbers
    out of range are clamped; anything else gives the default. Never raises.

    Args:
        param: the parameter's schema entry.
        value: the value from outside (a share link, an old record); any type.
    """
    try:
        return check(param, value), None
    except ParameterError as e:
        if param.kind in ("int", "float") and is_real(value):
            v = min(max(float(value), param.lo), param.hi)
            v = int(round(v)) if param.kind == "int" else v
            return v, f"{param.name}: {value!r} is out of range ({param.describe()}); using {v!r}."
        return param.default, f"{e} Using the default {param.default!r}."


def coerce(schema: tuple[Param, ...] | list[Param], params, *, ui_only: bool = True,
           owner: str = "") -> tuple[dict, list[str]]:
    """Lenient check of ``params`` from outside (share links, stored views).

    Returns (values, messages): every parameter of the schema that the UI offers
    (all with ``ui_only=False``) gets a valid value: the given one, clamped into range, or
    the default; keys that are not such parameters are dropped. Each change is one
    message naming the parameter (prefixed with ``owner``)."""
    pre = f"{owner}: " if owner else ""
    if not isinstance(params, dict):
        params = {} if params is None else params
        if not isinstance(params, dict):
            return ({p.name: p.default for p in schema if p.ui or not ui_only},
                    [f"{pre}parameters must be an object of name: value; got {type(params).__name__}, "
                     "using the defaults."])
    allowed = {p.name: p for p in schema if p.ui or not ui_only}
    msgs = [f"{pre}{k} is not a setting here; ignored." for k in params if k not in allowed]
    out = {}
    for name, p in allowed.items():
        if name in params:
            v, msg = clamp(p, params[name])
            out[name] = v
            if msg:
                msgs.append(pre + msg)
        else:
            out[name] = p.default
    return out, msgs

