"""The run configuration: one dataclass, serialisable to JSON/YAML, hashed to find equal runs."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class RunConfig:
    """Everything that decides a run's numbers. Models are named by spec and weight fingerprint."""

    kind: str = "distill"                # "train" (a model on labels alone) or "distill"
    dataset: str = "digits"              # registry name of the data
    dataset_args: dict = field(default_factory=dict)   # e.g. {"n_train": 100}
    student: dict = field(default_factory=dict)        # model spec: {"name": "cnn", "width": 8, ...}
    teacher: dict = field(default_factory=dict)        # {} when there is no teacher
    methods: dict = field(default_factory=dict)        # method name -> hyper-parameters
    scheme: str = "offline"              # who teaches whom (DESIGN.md, "Scheme")
    scheme_args: dict = field(default_factory=dict)    # the scheme's own settings
    task_weight: float = 1.0             # weight of the hard-label cross-entropy
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9                # SGD only
    weight_decay: float = 5e-4
    schedule: str = "cosine"             # per-step cosine decay to zero, or constant
    seed: int = 0
    device: str = "auto"                 # auto picks CUDA, then Apple MPS, then CPU
    amp: bool = True                     # bf16 autocast, on CUDA only
    log_every: int = 25                  # steps between host reads of the running loss terms
    eval_every: int = 1                  # epochs between evaluations (the last epoch always)
    checkpoint_every: int = 1            # epochs between checkpoints (the last epoch always)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise one clear error naming the first bad value and what would be valid."""
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} is not valid; it must be a positive integer")

        for name in ("epochs", "batch_size", "log_every", "eval_every", "checkpoint_every"):
            positive_int(name)
        for name, low in (("lr", 0.0), ("weight_decay", -1.0), ("momentum", -1.0), ("task_weight", -1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} is not valid; it must be a finite number")
            if (name == "lr" and value <= low) or (name != "lr" and value < 0):
                raise ValueError(f"{name}={value!r} is not valid; it must be "
                                 + ("> 0" if name == "lr" else ">= 0"))
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES),
                              ("kind", ("train", "distill"))):
            value = getattr(self, name)
            if value not in allowed and not (name == "device" and isinstance(value, str)
                                             and value.startswith("cuda:")):
                raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(allowed)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} is not valid; it must be an integer")

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(map(repr, unknown))}; "
                             f"valid keys: {', '.join(sorted(names))}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        """Read a config from a .json or .yaml/.yml file (YAML is loaded safely)."""
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml
            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=2))

    def hash(self) -> str:
        """A stable hash of every field that decides the numbers (device and logging excluded)."""
        data = self.to_dict()
        for volatile in ("device", "log_every"):
            data.pop(volatile)
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
