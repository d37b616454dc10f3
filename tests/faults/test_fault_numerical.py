"""Numerical faults: a loss term that becomes NaN or infinite stops the run at that step, naming the
term and the step; the last good checkpoint is kept and no checkpoint with non-finite weights is
ever written; the store marks the run failed. Optional gradient clipping, without a host sync."""
import math

import pytest
import torch

import workbench as wb
from workbench.engine.checkpoint import load_checkpoint
from workbench.engine.trainer import NonFiniteLossError
from workbench.store import RunStore


class PoisonAt(wb.methods.Method):
    """A zero term that turns into ``value`` from training step ``at`` on (it counts its calls)."""

    def __init__(self, at: int = 0, value: float = math.nan, weight: float = 1.0):
        super().__init__(weight=weight)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "calls", 0)

    def forward(self, student, teacher, batch):
        step = self.calls
        object.__setattr__(self, "calls", step + 1)
        zero = student.logits.sum() * 0.0
        return {"bad": zero + self.value if step >= self.at else zero}


class InfiniteGradientAt(PoisonAt):
    """A term whose value stays finite (0) but whose gradient is NaN at step ``at``: sqrt at 0."""

    def forward(self, student, teacher, batch):
        step = self.calls
        object.__setattr__(self, "calls", step + 1)
        zero = (student.logits * 0.0).sum()
        return {"sqrt": torch.sqrt(zero) if step == self.at else zero}


def checkpoint_epochs(store, run_id):
    return sorted(a["epoch"] for a in store.checkpoints(run_id))


@pytest.mark.parametrize("value, at", [(math.nan, 6), (math.inf, 5), (-math.inf, 7)])
def test_a_non_finite_term_stops_the_run_naming_term_and_step_and_keeps_the_last_good_checkpoint(
        value, at, digits, make_student, make_teacher):
    # 256 images, batch 64: 4 steps an epoch, so steps 5-7 are in the second epoch
    store = RunStore()
    run = wb.distill(make_student(), make_teacher(), digits, methods={"kd": {}, "poison": PoisonAt(at, value)},
                     epochs=3, batch_size=64, log_every=100, progress=False, store=store)
    with pytest.raises(NonFiniteLossError, match=rf"loss term 'poison.bad' became non-finite at step {at} "
                                                 r"\(in epoch 2, counting from 1\)"):
        run.fit()
    row = store.get(run.run_id)
    assert run.status == row["status"] == "failed"
    assert f"'poison.bad' became non-finite at step {at}" in row["error"]
    assert checkpoint_epochs(store, run.run_id) == [1]           # epoch 2's was never written
    state = load_checkpoint(store.checkpoints(run.run_id)[0]["path"])
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["scheme"].values() if t.is_floating_point())
    folder = store.checkpoint_root / run.run_id
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0001.pt", "epoch_0001.pt.sha256"]


def test_the_term_is_named_not_the_total_it_poisoned_and_the_earliest_step_wins(digits, make_student,
                                                                               make_teacher):
    run = wb.distill(make_student(), make_teacher(), digits, methods={"late": PoisonAt(3), "early": PoisonAt(1)},
                     epochs=1, log_every=2, progress=False, store=None)
    with pytest.raises(NonFiniteLossError, match=r"'early.bad' became non-finite at step 1 "):
        run.fit()
    assert run.status == "failed" and run.step == 2  # read at the telemetry interval, not later


def test_weights_made_non_finite_by_a_finite_loss_are_never_checkpointed(digits, make_student, make_teacher):
    """The last step of epoch 1 has a finite loss but a NaN gradient: the loss check cannot see it,
    the check of the weights before the checkpoint does."""
    store = RunStore()
    run = wb.distill(make_student(), make_teacher(), digits, methods={"sqrt": InfiniteGradientAt(3)},
                     epochs=2, log_every=100, progress=False, store=store)
    with pytest.raises(NonFiniteLossError, match=r"the weights became non-finite by step 4 \(epoch 1\) although "
                                                 r"the logged loss terms were finite; the checkpoint was not written"):
        run.fit()
    assert run.status == store.get(run.run_id)["status"] == "failed"
    assert store.checkpoints(run.run_id) == []
    assert not (store.checkpoint_root / run.run_id).exists() or \
        not any((store.checkpoint_root / run.run_id).iterdir())


def test_grad_clip_bounds_each_update(digits, make_student, make_teacher):
    """Plain SGD (no momentum, no decay, constant rate), one step: |delta w| = lr * min(|g|, clip)."""
    options = dict(methods={"kd": {}}, epochs=1, batch_size=256, optimizer="sgd", momentum=0.0,
                   weight_decay=0.0, schedule="constant", lr=0.5, store=None, progress=False)
    moves = {}
    for clip in (None, 1e-3):
        student = make_student()
        before = torch.cat([p.detach().flatten().clone() for p in student.parameters()])
        wb.distill(student, make_teacher(), digits, grad_clip=clip, **options).fit()
        after = torch.cat([p.detach().flatten() for p in student.parameters()])
        moves[clip] = (after - before).norm().item()
    assert moves[1e-3] == pytest.approx(0.5 * 1e-3, rel=1e-3)
    assert moves[None] > 10 * moves[1e-3]


def test_grad_clip_is_part_of_the_config_and_old_configs_keep_their_hash(monkeypatch):
    """Without clipping the hashed fields are those of a config from before grad_clip existed, so
    runs stored then are still found and reused."""
    import workbench.engine.config as config_module
    hashed = []
    real_dumps = config_module.json.dumps
    monkeypatch.setattr(config_module.json, "dumps", lambda data, **kw: hashed.append(data) or real_dumps(data, **kw))
    plain, clipped = wb.RunConfig(epochs=2), wb.RunConfig(epochs=2, grad_clip=1.0)
    assert plain.hash() != clipped.hash()
    assert "grad_clip" not in hashed[0] and hashed[1]["grad_clip"] == 1.0
    assert wb.RunConfig.from_dict({**plain.to_dict(), "grad_clip": 5}).grad_clip == 5


SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu")


def test_grad_clip_adds_no_host_sync_to_a_step(digits, make_student, make_teacher, monkeypatch):
    """No tensor is read to the host inside a training step, with clipping on (CPU stand-in for
    CUDA's sync debug mode, which the next test uses where a GPU exists)."""
    run = wb.distill(make_student(), make_teacher(), digits, methods={"kd": {}}, epochs=1, grad_clip=0.1,
                     log_every=1000, store=None, progress=False)
    in_step, reads = [False], []
    original_step = run._train_step

    def watched_step(batch):
        in_step[0] = True
        try:
            return original_step(batch)
        finally:
            in_step[0] = False

    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            if in_step[0]:
                reads.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, spy)
    monkeypatch.setattr(run, "_train_step", watched_step)
    called = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: called.append(1) or real_clip(*a, **k))
    run.fit()
    assert run.step == 4 and len(called) == 4
    assert reads == [], f"host reads inside a training step: {sorted(set(reads))}"
    in_step[0] = True  # the spies do see a read: the check above can fail
    bool(torch.ones(()) > 0), torch.ones(()).item()
    assert reads == ["__bool__", "item"]


def test_a_diverging_run_from_the_command_line_prints_one_line_and_is_marked_failed(capsys):
    from workbench.cli import main
    assert main(["train", "--lr", "1e30", "--epochs", "2", "--n-train", "128", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "became non-finite at step" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    runs = RunStore().runs()
    assert list(runs["status"]) == ["failed"] and "non-finite" in runs["error"][0]
