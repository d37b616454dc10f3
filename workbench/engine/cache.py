"""A frozen teacher's outputs, cached per training sample, so later epochs skip its forward pass.

Offline distillation runs the same frozen teacher on the same training images every epoch. When the
inputs are reproducible (no random augmentation) the teacher's answer for a sample never changes, so
:class:`TeacherCache` keeps it: the first time a sample is seen the teacher runs and its logits (and
the taps the methods need: features, attentions) are stored at the sample's row; from then on the
rows are gathered instead. A batch that mixes stored and new samples (``drop_last`` leaves a few
samples out of an epoch) runs the teacher on the whole batch, so every stored row is what the
teacher gives inside a training batch, bit for bit (kernels for other batch sizes round
differently), and a cached run reproduces an uncached one exactly on the CPU. Enable it with
``wb.distill(..., scheme_args={"cache": True})``.

Keys: the sample's index in the training split (``batch.index``), and, when a batch carries
``extras["augmentation_seed"]`` (one int per sample in ``[0, views)``: a fixed, replayable
augmentation), the pair (index, seed). A fresh random augmentation every epoch cannot be cached.

It refuses to serve, says why once (a ``RuntimeWarning`` and :attr:`TeacherCache.reason`) and lets
the teacher run from then on, when
- the inputs are not the ones it stored: every row keeps an exact checksum of the input it was
  filled from (an integer hash of the input's bits, so no rounding hides a change), compared with
  the checksum of every batch before the batch is served; unseeded augmentation, a modified
  split or a different data set all fail it;
- the teacher changed: each step compares the version counters of its parameters and buffers with
  those at fill time (an in-place update, ``load_state_dict``, an optimiser step all bump one), and
  each epoch also compares their identities (a replaced parameter or module) and a checksum of
  their contents (which catches writes through ``.data`` that bump no counter);
- the teacher is in train mode (batch norm would make its outputs depend on the batch), or the
  outputs would not fit in ``max_bytes``.

Memory: ``N x views x (per-sample size)`` where per-sample size = logits (K values) + every cached tap
(C x H x W values each), in the dtype the teacher produced them (bf16 under CUDA autocast, else the
teacher's dtype), on the device they were produced on, plus 9 bytes per row of bookkeeping. E.g.
2,000 images x resnet32x4's 100 logits in float32 = 0.8 MB; with its stage3 map (256 x 8 x 8) it
is 2,000 x 64 KiB = 131 MB. :attr:`TeacherCache.nbytes` is what it holds.

Cost: serving a batch hashes its inputs (one pass over them) and compares the result with the
stored checksums, which reads one flag to the host: one device sync per served step on a GPU, the
price of refusing before a wrong answer is served. Except where the inputs cannot differ: on a GPU
the trainer keeps the training split on the device and gathers each batch from that copy; a batch
it yields unchanged (same tensor, no in-place write since) whose rows were all stored from that
same copy is served with no hash and no host read, so a served step never waits for the GPU (the
teacher-weight checks stay: identities and versions every step, the contents once an epoch, which
is one host read an epoch); once every row is stored, such a batch is not even looked up on the
host (which rows are stored, whether its indices are in range): one gather on the device serves
it, about twenty operators fewer a step than looking it up. Anything else (a scheme that
transforms batches, seeded views, pinned per-batch copies, a split modified and copied again)
takes the checked path.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Callable

import torch
from torch import nn

from ..data.bundle import Batch
from ..taps import Outputs

#: bits of each element viewed as an integer of the same size, for exact checksums
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_weights: dict[tuple[int, str], torch.Tensor] = {}


def _mixing_weights(length: int, device: torch.device) -> torch.Tensor:
    """Fixed pseudo-random odd int64 weights (length,), so that swapped elements change the sum."""
    key = (length, str(device))
    if key not in _weights:
        generator = torch.Generator().manual_seed(0x5EED)
        _weights[key] = (torch.randint(0, 2 ** 31, (length,), generator=generator) * 2 + 1).to(device)
    return _weights[key]


def checksum(x: torch.Tensor) -> torch.Tensor:
    """An exact per-row checksum: (B, ...) -> (B,) int64.

    Each element's bits are read as an integer and summed with fixed odd weights per position
    (int64 arithmetic wraps, and integer sums do not depend on the order of summation, so equal
    rows give equal checksums on any device, and any change of any bit changes the sum unless it
    is cancelled by another change in the same row, which a deliberate attack could do, not noise).
    """
    flat = x.detach().flatten(1).contiguous()
    bits = flat.view(_INT_OF_SIZE[flat.element_size()]).to(torch.int64)  # (B, D)
    return (bits * _mixing_weights(flat.shape[1], flat.device)).sum(1)


def weights_checksum(model: nn.Module, chunk: int = 2 ** 20) -> int:
    """One exact checksum of the contents of every parameter and buffer of ``model``.

    Every tensor's bits, in its memory order, read as int32 words (narrower elements widened), are
    concatenated in chunks of about ``chunk`` words; a chunk's sum weighs word i by the odd 2i + 1
    (int32 products wrap; the sum is int64), and chunk k's sum by 2k + 1. Integer sums do not
    depend on the order of summation, so equal weights give equal checksums on any device. A
    ResNet's ~200 tensors take a few dozen kernel launches and three passes over their bytes."""
    total, count, pending, size = None, 0, [], 0

    def add(pending: list[torch.Tensor]) -> None:
        nonlocal total, count
        words = torch.cat(pending)
        weights = torch.arange(words.numel(), dtype=torch.int32, device=words.device).mul_(2).add_(1)
        part = (words * weights).sum() * (2 * count + 1)
        total = part if total is None else total + part
        count += 1

    for t in _parameters_and_buffers(model):
        flat = t.detach().permute(layout(t)).reshape(-1)  # memory order: a view, no copy
        bits = flat.view(_INT_OF_SIZE[flat.element_size()])
        words = bits.view(torch.int32) if bits.element_size() >= 4 else bits.to(torch.int32)
        if pending and size + words.numel() > chunk:
            add(pending)
            pending, size = [], 0
        pending.append(words)
        size += words.numel()
    if pending:
        add(pending)
    return 0 if total is None else int(total.item())                  # one host read


def layout(x: torch.Tensor) -> tuple[int, ...]:
    """The order of ``x``'s dimensions in memory, outermost first ((0, 2, 3, 1) for channels_last)."""
    return tuple(sorted(range(x.dim()), key=lambda d: (-x.stride(d), d)))


def with_layout(x: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``x`` laid out in memory in ``order``: equal values, equal strides to a tensor of that layout
    (the next op's kernel, and so its rounding, can depend on the strides)."""
    if layout(x) == order:
        return x
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return x.permute(order).contiguous().permute(inverse)


def _MIXED() -> None:
    return None


def _parameters_and_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _versions(tensors: list[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((id(t), t._version) for t in tensors)


class TeacherCache:
    """Per-sample store of a frozen teacher's outputs for one training split of ``size`` samples.

    ``views``: how many replayable augmentations per sample (``extras["augmentation_seed"]``);
    ``max_bytes``: the most it may hold; a bigger need turns it off, with the reason.
    Counters (plain ints): ``teacher_forwards`` (batches the teacher ran on), ``served`` (batches
    answered from the cache). :attr:`reason` is None while it serves, else why it stopped.
    """

    def __init__(self, size: int, views: int = 1, max_bytes: int = 2 ** 31):
        if size <= 0 or views <= 0:
            raise ValueError(f"a teacher cache needs size > 0 and views > 0, got {size}, {views}")
        self.size, self.views, self.max_bytes = size, views, max_bytes
        self.rows = size * views
        self.reason: str | None = None
        self.teacher_forwards = 0
        self.served = 0
        self.filled = torch.zeros(self.rows, dtype=torch.bool)   # on the host: no sync to test it
        self._complete = False                                   # every row filled
        self.checksums: torch.Tensor | None = None               # (rows,) int64
        self.logits: torch.Tensor | None = None                  # (rows, K)
        self.features: dict[str, torch.Tensor] = {}              # tap -> (rows, ...)
        self.attentions: dict[str, torch.Tensor] = {}
        self._layouts: dict[str, tuple[int, ...]] = {}             # as the teacher laid them out
        self._versions: tuple | None = None
        self._tensors: list[torch.Tensor] = []    # the teacher's parameters and buffers at fill time
        self._version_sum = 0
        self._weights: int | None = None
        self._epoch: int | None = None
        # the device copy of the split every stored row was read from (a weak reference), or
        # _MIXED: rows read from it unchanged are served with no per-step check (see ``outputs``)
        self._source: Callable[[], torch.Tensor | None] | None = None

    # -- state -------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held now: the stored outputs and checksums."""
        held = [self.logits, self.checksums, *self.features.values(), *self.attentions.values()]
        return sum(t.numel() * t.element_size() for t in held if t is not None) + self.filled.numel()

    def refuse(self, reason: str) -> None:
        """Stop serving for good, say why once, and free the stored outputs."""
        if self.reason is None:
            self.reason = reason
            warnings.warn(f"teacher cache off: {reason}; the teacher runs on every batch from now on",
                          RuntimeWarning, stacklevel=3)
        self.logits, self.checksums, self.features, self.attentions = None, None, {}, {}

    # -- serving -----------------------------------------------------------------------------
    def outputs(self, batch: Batch, teacher: nn.Module, forward: Callable[[Batch], Outputs],
                epoch: int = 0, rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> Outputs:
        """The teacher's outputs on ``batch``: from the cache when every sample is stored and
        verified, else from ``forward(batch)`` (whose outputs fill the empty rows). ``epoch``: the
        run's epoch, for the once-an-epoch check of the teacher's weights.

        ``rows``: (the samples' rows on the device, the device copy of the split they were
        gathered from) when the batch is exactly those rows, unchanged (the trainer's
        device-resident batches, :func:`~workbench.engine.distributed.pristine_rows`). When every
        stored row was read from that same copy, the inputs cannot differ from the stored ones,
        so the per-step comparison of input checksums (a host read that makes the CPU wait for
        the GPU every step) is skipped and the outputs are gathered on the device.
        """
        if self.reason is None:
            self._check_teacher(teacher, epoch)
        if self.reason is not None:
            return self._forward(forward, batch)
        # the device copy this batch is rows of (one key a sample: no augmentation views), and
        # whether every stored row came from it
        source = rows[1] if rows is not None and "augmentation_seed" not in batch.extras else None
        from_source = source is not None and self._source is not None and self._source() is source
        if from_source and self._complete:
            # every row is stored, all from the device copy this batch is rows of, unchanged:
            # nothing to look up or check on the host (its indices are rows of that copy, which
            # has exactly this cache's rows), one gather on the device
            return self._serve(rows[0])
        keys = self._keys(batch)
        if keys is None:
            return self._forward(forward, batch)
        filled = self.filled[keys]
        if from_source and filled.all():
            return self._serve(rows[0])
        sums = checksum(batch.x)
        if not filled.any():                  # all new: the teacher runs, its outputs are stored
            out = self._forward(forward, batch)
            self._store(keys, sums, out, source)
            return out
        device_keys = keys.to(self.checksums.device)
        if bool((self.checksums[device_keys] != sums)[filled.to(sums.device)].any()):  # one host read
            self.refuse("an input differs from the one its teacher outputs were stored for "
                        "(augmentation without a replayable seed, or a modified training split)")
            return self._forward(forward, batch)
        if filled.all():
            return self._serve(device_keys)
        # some samples are new: the teacher runs on the whole batch, not on the new ones alone,
        # because kernels for other batch sizes round differently (a batch of 1 or 2 does, on the
        # CPU), and every stored row must be what the teacher gives in a training batch
        out = self._forward(forward, batch)
        self._store(keys, sums, out, source)
        return out

    def _serve(self, rows: torch.Tensor) -> Outputs:
        self.served += 1
        return self._gather(rows)

    def _forward(self, forward, batch: Batch) -> Outputs:
        self.teacher_forwards += 1
        return forward(batch)

    def _keys(self, batch: Batch) -> torch.Tensor | None:
        """Row of each sample: index * views + augmentation seed; None (refused) if out of range."""
        index = batch.index.cpu()
        seed = batch.extras.get("augmentation_seed")
        if seed is None:
            if self.views != 1:
                self.refuse(f"the cache was built for {self.views} augmentation views but the batch "
                            "carries no extras['augmentation_seed']")
                return None
            keys = index
        else:
            seed = seed.cpu()
            if bool(((seed < 0) | (seed >= self.views)).any()):
                self.refuse(f"an augmentation seed is outside [0, {self.views}): each distinct seed "
                            "is a stored view; raise `views` or replay a fixed set of seeds")
                return None
            keys = index * self.views + seed
        if bool(((index < 0) | (index >= self.size)).any()):
            self.refuse(f"a sample index is outside the {self.size} rows of the cached split")
            return None
        return keys

    def _check_teacher(self, teacher: nn.Module, epoch: int) -> None:
        if teacher.training:
            self.refuse("the teacher is in train mode, so batch norm makes its outputs depend on "
                        "the batch; a cached teacher must be frozen (eval mode)")
            return
        if self._versions is None:
            self._tensors = _parameters_and_buffers(teacher)
            self._version_sum = sum(t._version for t in self._tensors)
            self._versions, self._weights, self._epoch = _versions(self._tensors), weights_checksum(teacher), epoch
            return
        # every step: version counters only grow, so their sum moves with any in-place write
        # (an optimiser step, load_state_dict, torch.no_grad() updates); tens of microseconds,
        # where walking the teacher's modules again took ~0.4 ms on a ResNet
        if sum(t._version for t in self._tensors) != self._version_sum:
            self.refuse("the teacher's weights changed since its outputs were stored "
                        "(a parameter or buffer was updated in place)")
        elif epoch != self._epoch:  # once an epoch: a replaced tensor, and the contents themselves
            self._epoch = epoch
            if _versions(_parameters_and_buffers(teacher)) != self._versions:
                self.refuse("the teacher's weights changed since its outputs were stored "
                            "(a parameter or buffer was replaced)")
            elif weights_checksum(teacher) != self._weights:
                self.refuse("the teacher's weights changed since its outputs were stored "
                            "(their contents differ from those at fill time)")

    def _allocate(self, out: Outputs, device: torch.device) -> bool:
        per_sample = [out.logits, *out.features.values(), *out.attentions.values()]
        need = self.rows * (sum(t[0].numel() * t.element_size() for t in per_sample) + 9)
        if need > self.max_bytes:
            self.refuse(f"the teacher's outputs for {self.rows:,} samples need {need / 2**20:,.1f} MiB, "
                        f"more than max_bytes={self.max_bytes / 2**20:,.1f} MiB")
            return False
        # stored in the teacher's memory layout, so that gathering rows keeps it (no copy to relayout)
        empty = lambda t: with_layout(torch.empty((self.rows, *t.shape[1:]), dtype=t.dtype,  # noqa: E731
                                                  device=t.device), layout(t))
        self.logits = empty(out.logits)
        self.features = {k: empty(v) for k, v in out.features.items()}
        self.attentions = {k: empty(v) for k, v in out.attentions.items()}
        self.checksums = torch.zeros(self.rows, dtype=torch.int64, device=device)
        self._layouts = {"logits": layout(out.logits),
                         **{f"f:{k}": layout(v) for k, v in out.features.items()},
                         **{f"a:{k}": layout(v) for k, v in out.attentions.items()}}
        return True

    def _store(self, keys: torch.Tensor, sums: torch.Tensor, out: Outputs,
               source: torch.Tensor | None = None) -> None:
        if self.reason is not None:
            return
        if self.logits is None and not self._allocate(out, sums.device):
            return
        if self._source is None and source is not None and len(source) == self.rows:
            self._source = weakref.ref(source)  # a copy of exactly the cached split, one view a row
        elif self._source is None or self._source() is not source:
            self._source = _MIXED  # some row came from elsewhere: every step is checked from now on
        rows = keys.to(self.checksums.device)
        self.checksums[rows] = sums
        self.logits[rows] = out.logits.detach()
        for name, value in out.features.items():
            self.features[name][rows] = value.detach()
        for name, value in out.attentions.items():
            self.attentions[name][rows] = value.detach()
        self.filled[keys] = True
        self._complete = bool(self.filled.all())

    def _gather(self, rows: torch.Tensor) -> Outputs:
        """The stored outputs of ``rows``, in the memory layout the teacher gave them (a conv net's
        maps may come out channels_last), so the methods compute on them exactly as on fresh ones."""
        like = lambda key, t: with_layout(t[rows], self._layouts[key])  # noqa: E731
        out = Outputs(like("logits", self.logits), {k: like(f"f:{k}", v) for k, v in self.features.items()},
                      {k: like(f"a:{k}", v) for k, v in self.attentions.items()})
        if "embedding" in out.features:  # as TapRecorder does
            out.embedding = out.features["embedding"].flatten(1)
        return out
