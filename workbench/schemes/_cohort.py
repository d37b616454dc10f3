"""What the online schemes share: a cohort of peers trained together in one run.

Peer 0 is the run's ``student`` (what ``run.evaluate`` measures); the other peers are sub-modules
of the scheme (``scheme.others``), so one optimiser trains them all and one checkpoint saves them.
A peer is given as
- nothing (``peers=3``): a fresh copy of the student's architecture: rebuilt from the zoo with its
  spec when the student came from ``wb.models.build`` (so it is initialised exactly as the zoo
  initialises it), else a deep copy whose layers are re-initialised with ``reset_parameters``;
  peer k's weights are drawn with a seed hashed from (scheme, run seed, k) (:func:`derived_seed`),
  so equal configs give equal peers, and a peer never repeats a student made with a small
  ``torch.manual_seed`` (a peer equal to another raises);
- a zoo name (``"resnet8"``) or spec (``{"name": "cnn", "width": 8}``), built for the data's classes
  and channels with the same seed rule;
- a built ``nn.Module``, used as it is (the run config records its spec and weight fingerprint).

Methods are shared by every (student peer, teacher peer) pair: a method's taps are resolved against
peer 0 (as student) and peer 1 (as teacher), so methods with taps need peers that declare the same
taps, and a method with connectors (FitNet's regressor) needs the same tap shapes on every peer:
give such methods peers of one architecture. Logit methods (KD, DKD, ...) work for any cohort.
"""
from __future__ import annotations

import copy
import hashlib
from typing import Any

import torch
from torch import nn

from ..taps import Outputs, resolve_tap
from .base import Scheme, predict


def derived_seed(*parts: Any) -> int:
    """A seed hashed from ``parts``: far from the small seeds people pass to ``torch.manual_seed``."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A new model of ``model``'s architecture, freshly initialised from ``seed`` (global RNG untouched)."""
    from .. import models
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        spec = getattr(model, "spec", None)
        if spec and spec.get("name") in models.names():
            return models.build(**spec)
        clone = copy.deepcopy(model)
        for module in clone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return clone


def build_peer(entry: Any, student: nn.Module, seed: int) -> nn.Module:
    """One peer from ``entry``: None, a zoo name, a spec dict or a module (see the module docstring)."""
    from .. import models
    if entry is None:
        return fresh_copy(student, seed)
    if isinstance(entry, nn.Module):
        return entry
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise TypeError(f"a peer is a zoo name, a spec dict with a 'name', or an nn.Module; got {entry!r}")
    spec = {"num_classes": student.num_classes, "in_channels": student.in_channels, **entry}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.build(**spec)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


def describe_peers(peers: "int | list") -> "int | list":
    """How a run config records the peers: a count, or each peer's spec (a module's with its
    weight fingerprint, which names it but cannot rebuild it)."""
    if isinstance(peers, int):
        return peers
    from ..api import model_spec
    return [model_spec(p) if isinstance(p, nn.Module) else p for p in peers]


class Cohort(Scheme):
    """Base of the online schemes whose members are whole networks (DML, KDCL).

    ``peers``: the cohort's size (an int >= 2: the student plus fresh copies of it), or the list of
    the OTHER peers (each a zoo name, a spec dict or a module); the student is always peer 0.
    """

    needs_teacher = False
    uses_teacher = False
    #: True when the methods' teacher is an ensemble of logits (no taps to offer)
    logit_teacher = False

    def __init__(self, peers: "int | list" = 2):
        super().__init__()
        if isinstance(peers, bool) or not isinstance(peers, (int, list, tuple)):
            raise TypeError(f"{self.name}: peers must be a cohort size (int >= 2) or a list of peers, "
                            f"got {peers!r}")
        if isinstance(peers, int) and peers < 2:
            raise ValueError(f"{self.name}: a cohort needs peers >= 2, got {peers}")
        if not isinstance(peers, int) and not peers:
            raise ValueError(f"{self.name}: the list of other peers is empty; a cohort needs two or more")
        self.peer_specs = peers if isinstance(peers, int) else list(peers)

    @property
    def peers(self) -> list[nn.Module]:
        """Every peer, the student first."""
        return [self.student, *self.others]

    def attach(self, run) -> None:
        Scheme.attach(self, run)
        entries = [None] * (self.peer_specs - 1) if isinstance(self.peer_specs, int) else self.peer_specs
        self.others = nn.ModuleList(build_peer(e, run.student, derived_seed(self.name, run.config.seed, k))
                                    for k, e in enumerate(entries, start=1))
        for k, peer in enumerate(self.others, start=1):
            for j, earlier in enumerate(self.peers[:k]):
                if peer is earlier or _same_weights(peer, earlier):
                    raise ValueError(f"{self.name}: peer {k} is (or has the weights of) peer {j}; "
                                     "peers must be distinct networks, or they learn nothing from "
                                     "each other")
        for name, method in self.methods.items():
            if self.logit_teacher:
                if tuple(method.teacher_taps):
                    raise ValueError(f"{self.name}: the teacher is an ensemble of the peers' logits, "
                                     f"with no features; method {name!r} needs teacher taps "
                                     f"{tuple(method.teacher_taps)}: use logit methods (kd, dkd, ...)")
                method.bind(self.student, None)
            else:
                method.bind(self.student, self.others[0])
            for peer in self.peers:  # every peer plays both roles
                for tap in (*method.student_taps, *([] if self.logit_teacher else method.teacher_taps)):
                    resolve_tap(peer, tap)

    def taps(self) -> list[str]:
        roles = [m.student_taps if self.logit_teacher else (*m.student_taps, *m.teacher_taps)
                 for m in self.methods.values()]
        return [t for r in roles for t in r]

    def prepare(self, first) -> None:
        self.peer_taps = [self.recorder(peer, self.taps()) for peer in self.peers]
        with torch.no_grad():
            outs = [record(first.x) for record in self.peer_taps]
            for method in self.methods.values():
                method.setup(outs[0], self.method_teacher(outs, 1, first))
            # connectors were built for peer 0 learning from peer 1: they must fit every pair
            for i, j in [(i, j) for i in range(len(outs)) for j in range(len(outs)) if i != j]:
                try:
                    self.method_terms(outs[i], self.method_teacher(outs, j, first), first)
                except (RuntimeError, ValueError) as error:
                    raise ValueError(f"{self.name}: the methods do not fit peer {i} learning from "
                                     f"peer {j} ({error}); peers of different architectures "
                                     "need methods without connectors (kd, at, ...)") from error

    def method_teacher(self, outs: list[Outputs], j: int, batch) -> Outputs:
        """The teacher outputs the methods see when peer ``j`` teaches (DML: peer j itself;
        KDCL overrides it with the ensemble)."""
        return outs[j].detach()

    @torch.no_grad()
    def peer_logits(self, test, batch_size: int) -> list[torch.Tensor]:
        return [predict(peer, test, batch_size) for peer in self.peers]

    def extra_metrics(self, test, batch_size) -> dict[str, float]:
        from .. import probes
        logits = self.peer_logits(test, batch_size)
        metrics = {f"peer{k}_acc": probes.accuracy(z, test.y) for k, z in enumerate(logits)}
        ensemble = torch.stack([z.softmax(1) for z in logits]).mean(0)  # average of probabilities
        metrics["ensemble_acc"] = probes.accuracy(ensemble, test.y)
        return metrics

    def describe(self) -> dict[str, Any]:
        return {"peers": describe_peers(self.peer_specs)}
