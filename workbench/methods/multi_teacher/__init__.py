"""Multi-teacher distillation (survey 3.3): several frozen teachers, one student."""
from .ensemble import MultiTeacher

__all__ = ["MultiTeacher"]
