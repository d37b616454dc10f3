"""KD Workbench: a small engine for learning, teaching and prototyping knowledge distillation.

    import workbench as wb
    data = wb.data.load("digits")
    teacher = wb.models.build("cnn", num_classes=10, in_channels=1, width=32)
    wb.train(teacher, data, epochs=10).fit()
    student = wb.models.build("cnn", num_classes=10, in_channels=1, width=8)
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": 4}}, epochs=10)
    run.fit()                      # or run.start() to train in the background
"""
from . import adaptive, data, methods, models, probes, robust, store
from .api import distill, fingerprint, train
from .engine import Callback, Run, RunConfig
from .registry import DATASETS, METHODS, MODELS, UnknownNameError
from .store import RunStore, leaderboard
from .taps import Outputs, TapRecorder, capture

__version__ = "0.1.0"

__all__ = ["data", "methods", "models", "probes", "store", "distill", "fingerprint", "train",
           "Callback", "Run", "RunConfig", "DATASETS", "METHODS", "MODELS", "UnknownNameError",
           "RunStore", "leaderboard", "Outputs", "TapRecorder", "capture", "__version__"]
