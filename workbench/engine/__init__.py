"""The training engine: config, run loop, events, checkpoints."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import RunConfig
from .events import EVENTS, Callback, ProgressBar
from .trainer import NonFiniteLossError, Run, pick_device

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "RunConfig", "EVENTS",
           "Callback", "ProgressBar", "NonFiniteLossError", "Run", "pick_device"]
