"""The run store side of a `Run`: checkpoints, resume, reuse of finished runs, metric rows."""
from __future__ import annotations

import os
import platform
import socket
import time
from typing import Any

import torch

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class Persistence:
    """Mixed into :class:`~workbench.engine.trainer.Run`; uses its store, config and state."""

    def _state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "scheme": self.scheme.state_dict(),
                "hparams": {n: m.hparams() for n, m in self.methods.items()},
                "task_weight": self._task_weight,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state(), "history": self.history, "evals": self.evals}

    def _checkpoint(self) -> None:
        if self.store is None:
            return
        _check_finite_weights(self)
        path = self.store.checkpoint_root / self.run_id / f"epoch_{self.epoch:04d}.pt"
        digest = save_checkpoint(path, self._state())
        self.store.add_artifact(self.run_id, "checkpoint", path, epoch=self.epoch, sha256=digest)
        self.store.update_run(self.run_id, steps=self.step, epochs_done=self.epoch)
        self._flush_rows()

    def _restore(self, state: dict[str, Any]) -> None:
        self.scheme.load_state_dict(state["scheme"])
        for name, method in self.methods.items():
            for key, value in state["hparams"][name].items():
                setattr(method, key, value)
        self._task_weight = state["task_weight"]
        # a checkpoint's param groups carry the implementation flags of the optimiser that saved it
        # (foreach, fused); this PyTorch's choice stays, whichever PyTorch or device saved it
        chosen = [{k: g.get(k) for k in ("foreach", "fused")} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, flags in zip(self.optimizer.param_groups, chosen):
            group.update(flags)
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.evals = list(state["history"]), list(state["evals"])
        self.result = {k: v for k, v in (self.evals[-1] if self.evals else {}).items()
                       if k not in ("step", "epoch")}

    def _load_latest_good(self, run_id: str) -> dict[str, Any] | None:
        """The newest checkpoint of ``run_id`` whose checksum holds; damaged ones are skipped."""
        for artifact in self.store.checkpoints(run_id):
            try:
                return load_checkpoint(artifact["path"], artifact["sha256"])
            except CheckpointError as error:
                print(f"kdwb: skipping {error}")
        return None

    def _reuse_finished(self) -> bool:
        """Load the weights of an equal finished run instead of training again."""
        if self.store is None or not self.reuse:
            return False
        row = self.store.find(self.config.hash())
        state = self._load_latest_good(row["id"]) if row else None
        if state is None:
            return False
        if state["epoch"] != self.config.epochs:
            print(f"kdwb: run {row['id']} finished but its last checkpoint is damaged; "
                  "training again instead of reusing it")
            return False
        # connectors are built from a first batch's shapes: build them, then load every weight
        first = self.scheme.first_batch(self.config.batch_size)
        self.scheme.to(self.device)
        self.scheme.prepare(first.to(self.device))
        self.scheme.close()
        self.scheme.load_state_dict(state["scheme"])
        self.scheme.to(self.device)
        self.run_id, self.status = row["id"], "reused"
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.evals = list(state["history"]), list(state["evals"])
        self.result = row["result"] or {}
        return True

    def _open_store_run(self) -> None:
        self._rows = []
        self._started = time.time()
        if self.store is None:
            return
        if self.resume_ok and self.run_id is None:
            # "interrupted" includes a "running" row whose process is gone (killed, crashed)
            row = self.store.find(self.config.hash(), ("interrupted",))
            state = self._load_latest_good(row["id"]) if row else None
            if state is not None:
                self._restore(state)
                self.run_id = row["id"]
                # rows the lost session logged after its checkpoint are logged again from here
                self.store.delete_metrics_after(self.run_id, self.step)
        if self.run_id is None:
            self.run_id = self.store.create_run(self.config.to_dict(), self.config.hash(),
                                                self.label, _versions())
        # pid and host tell a live run from one whose process was killed (see RunStore.find)
        self.store.update_run(self.run_id, status="running", started=self._started, error=None,
                              pid=os.getpid(), host=socket.gethostname())

    def _log_rows(self, row: dict[str, float]) -> None:
        self._rows.extend((self.step, self.epoch, k, float(v)) for k, v in row.items()
                          if k not in ("step", "epoch"))

    def _flush_rows(self) -> None:
        if self.store is not None and self._rows:
            self.store.log_metrics(self.run_id, self._rows)
        self._rows = []


def _check_finite_weights(run) -> None:
    """Refuse to checkpoint non-finite weights (one host sync per checkpoint, not per step).

    The loss terms are checked first; this catches weights that a last, finite-loss step with an
    infinite gradient has poisoned."""
    tensors = [t for t in run.scheme.state_dict().values()
               if isinstance(t, torch.Tensor) and t.is_floating_point()]  # extra state may be anything
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        from .trainer import NonFiniteLossError
        raise NonFiniteLossError(
            f"the weights became non-finite by step {run.step} (epoch {run.epoch}) although the "
            "logged loss terms were finite; the checkpoint was not written and the last good one "
            "is kept. Lower the learning rate or set grad_clip.")


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "python": platform.python_version()}
