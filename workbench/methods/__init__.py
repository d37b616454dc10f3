"""KD methods, one per file, in folders named after the survey's chapters.

Importing this package imports every method file under it, so a new file is all it takes for a
method to reach the registry, the CLI, the methods table and the registry-wide tests.
"""
import importlib
import pkgutil

from .base import Method, build_method, check_hparam, register_method


def _import_all() -> None:
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        importlib.import_module(info.name)


_import_all()

__all__ = ["Method", "build_method", "check_hparam", "register_method"]
