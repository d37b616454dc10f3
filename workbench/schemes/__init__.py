"""Distillation schemes: who teaches whom, and who is updated.

Importing this package imports every scheme file under it, so a new scheme file registers itself.
Offline: ``offline``; online: ``dml``, ``one``, ``kdcl``; self: ``byot``, ``ban`` (with
:func:`born_again`), ``pskd``, ``tfkd``, ``cskd``. ``wb.distill(..., scheme=name,
scheme_args={...})`` builds one; notebook 20 runs them all.
"""
import importlib
import pkgutil
from typing import Any

from ..registry import SCHEMES
from .base import Scheme
from .offline import Offline, freeze, is_frozen


def _import_all() -> None:
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        importlib.import_module(info.name)


_import_all()

from .ban import born_again  # noqa: E402  (a function, not a registered scheme: re-exported)


def build_scheme(scheme: "str | Scheme", **kwargs: Any) -> Scheme:
    """A scheme by registered name (with its keyword arguments), or one already built."""
    if isinstance(scheme, Scheme):
        if kwargs:
            raise TypeError("scheme arguments go to the Scheme's constructor when it is built already")
        return scheme
    return SCHEMES.build(scheme, **kwargs)


__all__ = ["Scheme", "Offline", "SCHEMES", "build_scheme", "born_again", "freeze", "is_frozen"]
