"""The one table of saliency methods.

Each method is one :class:`Method` entry: its function, display name, one-line
description, whether its map is signed, and its parameter schema
(:class:`analysis.core.schema.Param`). Everything else reads this table:
``attribute()`` validates parameters against the schema and calls the function, the
Saliency page draws one widget per parameter and lists the method, share links and the
audit trail carry the validated parameters.

Adding a method from any module (e.g. LRP via zennit, attention rollout for ViTs)::

    from analysis.core.schema import Param
    from analysis.saliency.registry import MapOutput, register

    @register("lrp", "LRP (ε-rule)", "Layer-wise relevance propagation with ...",
              params=(Param("epsilon", "float", 1e-6, 1e-9, 1.0, help="stabiliser"),))
    def lrp(bundle, x, target, *, progress=None, epsilon=1e-6):
        ...                                     # x: (1, C, H, W) in model space
        return MapOutput(map=relevance_hw, signed=relevance_chw)

The function gets the bundle, the model-space input ``x`` (1, C, H, W) on the bundle's
device, the resolved class index ``target``, ``progress(done, total)`` (or None) and the
validated parameters (defaults filled in), and returns a :class:`MapOutput`. It must hold
``bundle.lock`` while it hooks or runs backward on the shared model.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from analysis.core.errors import ParameterError
from analysis.core.schema import Param, coerce, validate

DESCRIPTION_WIDTH = 88          # descriptions are re-wrapped to this width (docs, tooltips)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass
class MapOutput:
    """What a method function returns: ``map`` (H, W) importance (higher = more evidence
    for the target); ``signed`` (C, H, W) per-channel signed attribution or None;
    ``info`` extra values recorded with the parameters (e.g. the layer actually used);
    ``warnings`` for the user; ``layer`` the layer the map was computed at, if any."""
    map: Any
    signed: Any = None
    info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    layer: str | None = None


@dataclass(frozen=True)
class Method:
    """One saliency method.

    name: identifier (``[a-z][a-z0-9_]*``, used in URLs and widget keys); title: display
    name; description: one line (any length; :attr:`wrapped` re-wraps it); fn: the
    function (see the module docstring); signed: whether ``map`` keeps a sign (negative =
    evidence against the target), so the UI uses a diverging colour scale; params: the
    schema; perturbation: it runs many forward passes (the UI opens its settings and
    shows progress); reference: the paper or library it follows."""
    name: str
    title: str
    description: str
    fn: Callable[..., MapOutput]
    signed: bool = False
    params: tuple[Param, ...] = ()
    perturbation: bool = False
    reference: str = ""

    @property
    def wrapped(self) -> str:
        """The description wrapped at ``DESCRIPTION_WIDTH`` characters."""
        return textwrap.fill(" ".join(self.description.split()), DESCRIPTION_WIDTH)

    def param(self, name: str) -> Param:
        """The schema entry of one of this method's parameters.

        Args:
            name: the parameter's name.

        Raises:
            KeyError: the method has no such parameter.
        """
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def validate(self, params: dict) -> dict:
        """Strict check (ParameterError naming the parameter); defaults filled in.

        Args:
            params: parameter name -> value; unknown names are refused, missing ones defaulted.
        """
        return validate(self.params, params, owner=self.title)

    def coerce(self, params) -> tuple[dict, list[str]]:
        """Lenient check of values from a link: only the parameters the UI offers, each
        clamped into range or replaced by its default, with a message per change.

        Args:
            params: parameter name -> value as read from a share link (any JSON value; a
                non-dict gives the defaults and a message).

        Returns:
            (the parameters to use, one message per value changed or dropped).
        """
        return coerce(self.params, params, ui_only=True, owner=self.title)


_REGISTRY: dict[str, Method] = {}


def register(name: str, title: str, description: str, *, params: tuple[Param, ...] | list[Param] = (),
             signed: bool = False, perturbation: bool = False, reference: str = "",
             replace: bool = False):
    """Decorator that adds the decorated function as saliency method ``name``.

    Arguments are those of :class:`Method`. A second registration under the same name
    raises ValueError unless ``replace`` (for reloading a module). Returns the function
    unchanged, so it stays callable directly.

    Args:
        name: identifier, ``[a-z][a-z0-9_]*`` (at most 40 characters).
        title: display name.
        description: one line for the page (any length; :attr:`Method.wrapped` re-wraps it).
        params: the parameter schema; names unique identifiers.
        signed: the map keeps a sign (negative = evidence against the target).
        perturbation: the method runs many forward passes.
        reference: the paper or library it follows.
        replace: overwrite an existing entry of the same name.
    """
    def deco(fn: Callable[..., MapOutput]) -> Callable[..., MapOutput]:
        add(Method(name=name, title=title, description=description, fn=fn, signed=signed,
                   params=tuple(params), perturbation=perturbation, reference=reference), replace=replace)
        return fn
    return deco


def add(method: Method, *, replace: bool = False) -> Method:
    """Add a ready :class:`Method` to the table (``register`` is the decorator form).

    Args:
        method: the method; its name and parameter names must be identifiers and ``fn`` callable,
            else ValueError.
        replace: overwrite an existing entry of the same name instead of raising ValueError.
    """
    if not _NAME.match(method.name):
        raise ValueError(f"method name {method.name!r} must match {_NAME.pattern}")
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"a saliency method named {method.name!r} is already registered")
    names = [p.name for p in method.params]
    if len(set(names)) != len(names) or not all(_NAME.match(n) for n in names):
        raise ValueError(f"{method.name}: parameter names must be unique identifiers, got {names}")
    if not callable(method.fn):
        raise ValueError(f"{method.name}: fn must be callable")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this).

    Args:
        name: the method's name; an unknown name is ignored.
    """
    _REGISTRY.pop(name, None)


def get(name) -> Method:
    """The method called ``name``; ParameterError listing the known ones otherwise."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise ParameterError(f"Unknown saliency method {name!r}; choose from {', '.join(_REGISTRY)}.")


def title(name: str) -> str:
    """The display name of a method, or ``name`` itself for an unknown one (old records)."""
    m = _REGISTRY.get(name) if isinstance(name, str) else None
    return m.title if m is not None else str(name)


def names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def methods() -> list[Method]:
    """Registered methods, in registration order."""
    return list(_REGISTRY.values())


def as_map(t) -> np.ndarray:
    """A torch tensor or array as float32 CPU numpy (helper for method functions).

    Args:
        t: a torch tensor (detached, any device and dtype) or anything ``np.asarray`` takes.
    """
    if hasattr(t, "detach"):
        t = t.detach().float().cpu().numpy()
    return np.asarray(t, np.float32)
