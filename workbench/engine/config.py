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
    grad_clip: float | None = None       # clip the gradients' total L2 norm to this (None: no clipping)
    schedule: str = "cosine"             # per-step cosine decay to zero, or constant
    seed: int = 0
    device: str = "auto"                 # auto picks CUDA, then Apple MPS, then CPU
    amp: bool = True                     # bf16 autocast, on CUDA only
    channels_last: bool | str = "auto"   # NHWC layout for image models; auto: on CUDA only
    compile: bool | str = False          # torch.compile the models (True: inductor; or a backend name)
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
        clip = self.grad_clip
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                 or not math.isfinite(clip) or clip <= 0):
            raise ValueError(f"grad_clip={clip!r} is not valid; it must be a finite number > 0, "
                             "or None for no clipping")
        for name in ("dataset", "scheme"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; it must be a "
                                 "registered name (a string)")
        for name in ("dataset_args", "student", "teacher", "methods", "scheme_args"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; it must be a mapping "
                                 + ("of method names to hyper-parameters" if name == "methods"
                                    else "of names to values"))
        for method, hparams in self.methods.items():
            if not isinstance(hparams, dict):
                raise ValueError(f"methods[{method!r}]={hparams!r} is not valid; it must be a "
                                 "mapping of hyper-parameter names to values, e.g. {} for the defaults")
        if not isinstance(self.amp, bool):
            raise ValueError(f"amp={self.amp!r} is not valid; it must be true or false")
        if self.channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last={self.channels_last!r} is not valid; it must be true, false or 'auto'")
        if not isinstance(self.compile, (bool, str)) or self.compile == "":
            raise ValueError(f"compile={self.compile!r} is not valid; it must be true, false or a "
                             "torch.compile backend name (e.g. 'inductor', 'aot_eager')")

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
            try:
                data = yaml.safe_load(text)  # safe: tags such as !!python/object are refused
            except yaml.YAMLError as error:  # one line: the CLI prints errors on one line
                raise ValueError(f"{path} is not a valid YAML config: {' '.join(str(error).split())}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not a valid JSON config: {error}") from None
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
        for volatile in ("device", "log_every", "channels_last", "compile"):  # speed, not numbers
            data.pop(volatile)
        for key in ("grad_clip", "scheme_args"):  # unset, they leave older configs' hashes as they were
            if data.get(key) in (None, {}):
                data.pop(key, None)
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
