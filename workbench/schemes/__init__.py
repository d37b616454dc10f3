"""Distillation schemes: who teaches whom, and who is updated."""
from .offline import freeze, is_frozen

__all__ = ["freeze", "is_frozen"]
