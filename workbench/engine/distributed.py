"""Where a run's work happens: on which device, with which GPU settings, and on which rank.

Devices. :func:`resolve_settings` turns a :class:`~workbench.engine.config.RunConfig`'s GPU fields
into concrete choices for one device; on CUDA the defaults are: bf16 autocast (``amp``),
channels_last for image inputs (``channels_last="auto"``), cuDNN's autotuner, the whole training
split moved to the GPU once when it fits (batches are then gathered on the GPU by index), and
otherwise pinned batches copied with ``non_blocking=True``. ``torch.compile`` is opt-in
(``compile=True``, or a backend name such as ``"aot_eager"``). On the CPU all of these are off,
so CPU numbers are unchanged; each can be forced on for a test.

Ranks. Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) a run is data-parallel with
PyTorch DDP: the process group is joined on first use (NCCL on CUDA, gloo on the CPU), each rank
takes a disjoint shard of every epoch's permutation (rank r gets positions r, r + N, r + 2N, ...
of the permutation a single process would use, so global batch j holds exactly the samples of the
single-process batch j), ``batch_size`` stays the *global* batch, the trainable modules (student,
connectors) are wrapped in ``DistributedDataParallel``, and telemetry is averaged over ranks at the
host-read interval. Only rank 0 writes the run store and checkpoints; the other ranks receive rank
0's state (fresh, or resumed from its checkpoint) before the first step, so a resumed run continues
identically on every rank. Batch-norm statistics are per rank (plain DDP semantics).

The trainer calls :func:`setup` at the start of ``_prepare``, :func:`finish_setup` at its end,
:func:`batches` for each epoch, :func:`all_reduce_telemetry` before each host read and
:func:`teardown` when the run ends.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..data.bundle import Batch, Split

if TYPE_CHECKING:
    from .trainer import Run

#: at most this share of the GPU's free memory may hold a training split moved there whole
DEVICE_DATA_SHARE = 0.25


# -- devices -----------------------------------------------------------------------------------
@dataclass
class Settings:
    """The concrete speed settings of one run on one device (see :func:`resolve_settings`)."""

    device: torch.device
    amp: bool = False                 # bf16 autocast around the step's forward passes
    channels_last: bool = False       # models and image batches in NHWC memory layout
    compile: bool | str = False       # False, True (inductor) or a torch.compile backend name
    data_on_device: bool = False      # the training split moved to the device once, if it fits
    pin_memory: bool = False          # otherwise: pinned batches, non-blocking copies
    cudnn_benchmark: bool = False     # let cuDNN pick the fastest kernels for fixed shapes
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_dict(self) -> dict[str, Any]:
        return {"device": str(self.device), "amp": self.amp, "channels_last": self.channels_last,
                "compile": self.compile, "data_on_device": self.data_on_device,
                "pin_memory": self.pin_memory, "cudnn_benchmark": self.cudnn_benchmark,
                "rank": self.rank, "world": self.world}


def resolve_settings(config, device: torch.device | str, input_shape: tuple[int, ...] = (),
                     split_bytes: int = 0, free_bytes: int | None = None) -> Settings:
    """The speed settings ``config`` asks for on ``device``; pure (asks nothing of the device).

    ``input_shape`` is one sample's shape (``channels_last`` applies to images, ``(C, H, W)``);
    ``split_bytes`` is the training split's size and ``free_bytes`` the device's free memory
    (``data_on_device`` needs ``split_bytes <= DEVICE_DATA_SHARE * free_bytes``).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    image = len(tuple(input_shape)) == 3
    wanted = getattr(config, "channels_last", "auto")
    channels_last = image and (cuda if wanted == "auto" else bool(wanted))
    on_device = cuda and free_bytes is not None and split_bytes <= DEVICE_DATA_SHARE * free_bytes
    return Settings(device=device, amp=bool(config.amp) and cuda, channels_last=channels_last,
                    compile=getattr(config, "compile", False), data_on_device=on_device,
                    pin_memory=cuda and not on_device, cudnn_benchmark=cuda)


def split_bytes(split: Split) -> int:
    tensors = [split.x, split.y, *split.extras.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


# -- ranks -------------------------------------------------------------------------------------
def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as ``torchrun`` sets them; (0, 1, 0) outside it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env(device_type: str) -> bool:
    """Join the process group ``torchrun`` describes (once); True when running on several ranks."""
    if is_distributed():
        return True
    rank, world, local_rank = world_from_env()
    if world <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=10))
    return True


def is_main_process() -> bool:
    """True on rank 0 (or outside ``torchrun``): the process that prints and writes."""
    return not is_distributed() or dist.get_rank() == 0


# -- the trainer's hooks -----------------------------------------------------------------------
def setup(run: "Run") -> Settings:
    """Resolve settings, join the process group under torchrun, place the models and the data.

    On ranks other than 0 the run's store is dropped (rank 0 writes it) and so is the progress bar.
    """
    device = run.device
    world_size, rank = 1, 0
    if init_from_env(device.type):
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = run.device = torch.device("cuda", world_from_env()[2])
        if run.config.batch_size % world_size:
            raise ValueError(f"batch_size={run.config.batch_size} is the global batch and must be a "
                             f"multiple of the {world_size} ranks")
        if rank != 0:
            from .events import ProgressBar
            run.store = None  # rank 0 writes the store and the checkpoints
            run.callbacks = [c for c in run.callbacks if not isinstance(c, ProgressBar)]
    train = run.data.train
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    reads = run.scheme.reads_training_data  # a data-free scheme's split is sealed: never copy it
    settings = resolve_settings(run.config, device, tuple(run.data.input_shape),
                                split_bytes(train) if reads else 0, free)
    if not reads:
        settings.data_on_device = False
    settings.rank, settings.world = rank, world_size
    if settings.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if settings.channels_last else torch.preserve_format
    for model in (run.teacher, run.scheme):
        if model is not None:
            model.to(device=device, memory_format=fmt)
    run._device_train = _to_device(train, settings) if settings.data_on_device else None
    run.settings = settings
    return settings


def finish_setup(run: "Run") -> Callable[[Batch], tuple]:
    """After the optimiser exists and rank 0 has opened (or resumed) its run: the layout of
    connectors built on the first batch, ``torch.compile``, rank 0's state on every rank, DDP.
    Returns the function the trainer calls for one step's loss."""
    settings: Settings = run.settings
    if settings.channels_last:
        run.scheme.to(memory_format=torch.channels_last)
    if settings.compile:
        backend = settings.compile if isinstance(settings.compile, str) else "inductor"
        for model in (run.student, run.teacher):
            if model is not None:  # hooks (taps) are traced with the model; undone by teardown
                model.compile(backend=backend)
    if settings.world == 1:
        return run.scheme.step
    holder = [_to_cpu(run._state()) if settings.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    if not settings.is_main:
        run._restore(holder[0])
    index = [settings.device.index] if settings.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(_Step(run.scheme), device_ids=index)


def batches(run: "Run", split: Split, generator: torch.Generator) -> Iterator[Batch]:
    """One epoch of training batches for this rank, on the run's device.

    The permutation is the one ``split.batches(batch_size, shuffle=True, generator=generator,
    drop_last=True)`` draws; with N ranks, rank r takes every N-th position from r on, in
    batches of ``batch_size / N``.
    """
    settings: Settings = run.settings
    batch_size = run.config.batch_size
    n = len(split)
    order = torch.randperm(n, generator=generator)[:n - n % batch_size]
    if settings.world > 1:
        order = order[settings.rank::settings.world]
        batch_size //= settings.world
    on_device = getattr(run, "_device_train", None) if split is run.data.train else None
    if on_device is not None:
        order_there = order.to(settings.device, non_blocking=True)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        if on_device is not None:
            there = order_there[start:start + batch_size]
            batch = Batch(on_device.x[there], on_device.y[there], index, _BatchExtras(on_device.extras, there))
            run._pristine = (batch.x, batch.x._version, there, on_device.x)
            yield batch
            continue
        batch = split.batch(index)
        if settings.pin_memory:
            batch = Batch(batch.x.pin_memory(), batch.y.pin_memory(), index,
                          {k: v.pin_memory() for k, v in batch.extras.items()})
        if batch.x.device != settings.device:
            batch = batch.to(settings.device, non_blocking=True)
        if settings.channels_last and batch.x.dim() == 4:
            batch.x = batch.x.contiguous(memory_format=torch.channels_last)
        yield batch


def pristine_rows(run: "Run", batch: Batch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows on the device, the device copy of the training split) when ``batch`` is the batch
    :func:`batches` last gathered from that copy, unchanged (the same input tensor, not written
    in place since); else None. Lets the teacher cache serve such a batch without checking its
    inputs on the host."""
    pristine = getattr(run, "_pristine", None)
    if pristine is None or pristine[0] is not batch.x or pristine[0]._version != pristine[1]:
        return None
    return pristine[2], pristine[3]


def all_reduce_telemetry(run: "Run", rows: torch.Tensor) -> None:
    """Average the telemetry rows (one per step since the last read) over ranks, in place; the
    last column counts correct answers and is summed. A non-finite term on any rank makes the row
    non-finite on every rank, so all ranks stop at the same step. Nothing to do in one process."""
    settings = getattr(run, "settings", None)
    if settings is None or settings.world == 1 or rows.numel() == 0:
        return
    dist.all_reduce(rows)
    rows[:, :-1] /= settings.world


def teardown(run: "Run") -> None:
    """Undo ``torch.compile`` on the caller's models and free the device copy of the data."""
    settings = getattr(run, "settings", None)
    if settings is None:
        return
    if settings.compile:
        for model in (run.student, run.teacher):
            if model is not None and getattr(model, "_compiled_call_impl", None) is not None:
                model._compiled_call_impl = None
    run._device_train = None
    run._pristine = None


# -- helpers -----------------------------------------------------------------------------------
class _Step(nn.Module):
    """The scheme's step as a module's forward, so DDP sees (and synchronises) every trainable
    parameter the scheme owns: the student and the methods' connectors."""

    def __init__(self, scheme: nn.Module):
        super().__init__()
        self.scheme = scheme

    def forward(self, batch: Batch):
        return self.scheme.step(batch)


def _to_device(split: Split, settings: Settings) -> Split:
    x = split.x.to(settings.device)
    if settings.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    on_device = Split(x, split.y.to(settings.device))
    on_device.extras = _DeviceExtras(split.extras, settings.device)  # the split checked its rows already
    return on_device


class _DeviceExtras(Mapping):
    """A split's extra targets, each copied to the device the first time a batch reads it.

    Most runs read none of them (KD on ``shapes`` ignores its masks, boxes and segmentation maps,
    22.5 MiB for 2,560 images): copying them all up front made a GPU run's peak memory 10% higher
    than a hand-written loop's, and gathering them every step cost a kernel launch each."""

    def __init__(self, extras: Mapping[str, torch.Tensor], device: torch.device):
        self._source, self._device, self._copies = extras, device, {}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._copies:
            self._copies[key] = self._source[key].to(self._device)
        return self._copies[key]

    def __iter__(self):
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)


class _BatchExtras(MutableMapping):
    """A device-resident batch's extras: each gathered from the split's device copy when first
    read (``batch.extras["mask"]``, ``.get``, ``.items()``); ``in`` and ``len`` read nothing.
    Writable, like the dict a batch usually carries."""

    def __init__(self, extras: _DeviceExtras, rows: torch.Tensor):
        self._extras, self._rows, self._values = extras, rows, {}
        self._keys = list(extras)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._values:
            if key not in self._keys:
                raise KeyError(key)
            self._values[key] = self._extras[key][self._rows]
        return self._values[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if key not in self._keys:
            self._keys.append(key)
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        self._keys.remove(key)
        self._values.pop(key, None)

    def __iter__(self):
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._keys

    def __repr__(self) -> str:
        return f"{{{', '.join(repr(k) for k in self._keys)}}} (gathered when read)"


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
