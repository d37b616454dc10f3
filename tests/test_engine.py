"""The training loop: learning, frozen teacher, determinism, resume, reuse, live control, faults."""
import threading
import time

import pytest
import torch

import workbench as wb
from workbench.engine.trainer import NonFiniteLossError
from workbench.schemes import is_frozen
from workbench.store import RunStore


@pytest.fixture(scope="module")
def digits():
    return wb.data.load("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    model = wb.models.build("cnn", num_classes=10, in_channels=1, width=16)
    wb.train(model, digits, epochs=3, store=None, progress=False).fit()
    return model


def student(seed=1, width=4):
    torch.manual_seed(seed)
    return wb.models.build("cnn", num_classes=10, in_channels=1, width=width)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


def test_a_few_steps_on_digits_reduce_the_loss(digits, teacher):
    run = wb.distill(student(), teacher, digits, methods={"kd": {}}, epochs=2, log_every=5,
                     store=None, progress=False).fit()
    losses = [row["loss"] for row in run.history]
    assert run.status == "finished" and len(losses) >= 6
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert run.result["test_acc"] > 0.5 and 0 <= run.result["agreement"] <= 1


def test_teacher_is_frozen_and_gets_no_gradient(digits, teacher):
    before = params(teacher)
    seen = []
    run = wb.distill(student(), teacher, digits, methods={"kd": {}}, epochs=1, store=None, progress=False)
    run.on("step_end", lambda r, _: seen.append(any(p.grad is not None for p in teacher.parameters())))
    run.fit()
    assert is_frozen(teacher)
    assert not any(seen)
    assert torch.equal(before, params(teacher))


def test_same_seed_gives_the_same_numbers(digits, teacher):
    runs = [wb.distill(student(), teacher, digits, methods={"kd": {}}, epochs=2, seed=3,
                       store=None, progress=False).fit() for _ in range(2)]
    assert runs[0].history == runs[1].history
    assert torch.equal(params(runs[0].student), params(runs[1].student))


def test_interrupt_after_an_epoch_and_resume_equals_an_uninterrupted_run(digits, teacher, tmp_path):
    options = dict(methods={"kd": {"temperature": 3.0}}, epochs=3, seed=5, progress=False)
    whole = wb.distill(student(), teacher, digits, store=RunStore(tmp_path / "a.sqlite"), **options).fit()

    store = RunStore(tmp_path / "b.sqlite")
    first = wb.distill(student(), teacher, digits, store=store, **options)
    first.on("epoch_end", lambda run, epoch: run.stop() if epoch == 1 else None)
    first.fit()
    assert first.status == "interrupted" and first.epoch == 1
    assert store.get(first.run_id)["status"] == "interrupted"

    resumed = wb.distill(student(), teacher, digits, store=store, **options).fit()
    assert resumed.run_id == first.run_id and resumed.status == "finished"
    assert torch.equal(params(resumed.student), params(whole.student))
    assert resumed.history == whole.history


def test_store_reuses_a_finished_run(digits, teacher):
    options = dict(methods={"kd": {}}, epochs=1, seed=2, progress=False)
    first = wb.distill(student(), teacher, digits, **options).fit()
    again = wb.distill(student(), teacher, digits, **options)
    steps = []
    again.on("step_end", lambda r, _: steps.append(1))
    again.fit()
    assert again.status == "reused" and again.run_id == first.run_id and not steps
    assert torch.equal(params(again.student), params(first.student))
    assert again.result == first.result
    fresh = wb.distill(student(), teacher, digits, reuse=False, **options).fit()
    assert fresh.run_id != first.run_id and fresh.status == "finished"
    board = wb.leaderboard(dataset="digits")
    assert {first.run_id, fresh.run_id} <= set(board["id"])


def test_background_run_pause_resume_stop_and_live_temperature(digits, teacher):
    run = wb.distill(student(), teacher, digits, methods={"kd": {"temperature": 4.0}}, epochs=50,
                     store=None, progress=False)
    temperatures = []
    run.on("step_end", lambda r, _: temperatures.append(r.methods["kd"].temperature))
    run.start()
    _wait(lambda: run.step > 5)
    run.methods["kd"].temperature = 8.0
    step_of_change = run.step
    _wait(lambda: run.step > step_of_change + 2)
    assert temperatures[-1] == 8.0
    run.pause()
    time.sleep(0.2)
    paused_at = run.step
    time.sleep(0.3)
    assert run.step == paused_at
    run.resume()
    _wait(lambda: run.step > paused_at + 2)
    run.stop()
    run.join(timeout=10)
    assert not run.is_alive and run.status == "interrupted"
    assert set(temperatures) == {4.0, 8.0}


def test_a_nan_loss_stops_the_run_naming_the_term_and_step(digits, teacher):
    class Poison(wb.methods.Method):
        def forward(self, student, teacher, batch):
            return {"bad": student.logits.sum() * float("nan")}

    run = wb.distill(student(), teacher, digits, methods={"poison": Poison()}, epochs=1, log_every=4,
                     progress=False)
    with pytest.raises(NonFiniteLossError, match=r"'poison.bad' became non-finite at step 0"):
        run.fit()
    assert run.status == "failed"
    assert wb.RunStore().get(run.run_id)["status"] == "failed"


def test_bad_setups_are_caught_before_training(digits, teacher):
    with pytest.raises(ValueError, match="batch_size=5000 is larger than the 1347"):
        wb.distill(student(), teacher, digits, batch_size=5000, store=None)
    wrong = wb.models.build("cnn", num_classes=7, in_channels=1, width=4)
    with pytest.raises(ValueError, match="has 7 outputs but digits has 10 classes"):
        wb.distill(wrong, teacher, digits, store=None)
    with pytest.raises(ValueError, match="lr=-0.1 is not valid"):
        wb.distill(student(), teacher, digits, lr=-0.1, store=None)
    with pytest.raises(KeyError, match="unknown scheme 'sideways'"):
        wb.distill(student(), teacher, digits, scheme="sideways", store=None)


def _wait(condition, timeout=20.0):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_a_run_changed_live_is_not_reused_for_its_starting_config(digits, teacher):
    options = dict(methods={"kd": {"temperature": 4.0}}, epochs=1, seed=4, progress=False)
    changed = wb.distill(student(), teacher, digits, **options)
    changed.on("step_end", lambda run, _: setattr(run.methods["kd"], "temperature", 2.0)
               if run.step == 3 else None)
    changed.fit()
    assert changed.live_changes == [{"step": 3, "kd.temperature": 2.0}]
    again = wb.distill(student(), teacher, digits, **options).fit()
    assert again.status == "finished" and again.run_id != changed.run_id


def test_a_reused_run_gets_its_connectors_back(digits, teacher):
    options = dict(methods={"fitnet": {}}, epochs=1, seed=6, progress=False)
    first = wb.distill(student(), teacher, digits, **options).fit()
    trained = {k: v.clone() for k, v in first.methods["fitnet"].state_dict().items()}
    assert trained, "fitnet builds a regressor"
    again = wb.distill(student(), teacher, digits, **options).fit()
    assert again.status == "reused"
    loaded = again.methods["fitnet"].state_dict()
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)


@pytest.mark.parametrize("sizes", [(4, 4, 4), (4, 3, 2)], ids=["equal batches", "unequal batches"])
def test_telemetry_counts_each_steps_correct_answers(digits, teacher, sizes):
    """The read sums the rows recorded since the last read: loss terms averaged over the steps,
    correct answers counted per step (one reshape when the batches are equal, an index_add else)."""
    torch.manual_seed(1)
    student = wb.models.build("cnn", num_classes=10, in_channels=1, width=4)
    run = wb.distill(student, teacher, digits, methods={"kd": {}}, epochs=1, batch_size=4, store=None,
                     progress=False)
    run._start_telemetry()
    right = 0
    for step, size in enumerate(sizes):
        logits = torch.randn(size, 10)
        labels = torch.randint(0, 10, (size,))
        labels[0] = logits[0].argmax()  # at least one right answer per step
        right += int((logits.argmax(1) == labels).sum())
        batch = wb.data.Batch(torch.zeros(size, 1, 8, 8), labels, torch.arange(size))
        run._record_telemetry(torch.tensor(float(step)), {"ce": torch.tensor(2.0 * step)}, logits, batch)
    run.step, run.optimizer = len(sizes), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    row = run._read_telemetry()
    assert row["loss"] == pytest.approx(1.0) and row["ce"] == pytest.approx(2.0)
    assert row["train_acc"] == pytest.approx(right / (len(sizes) * 4))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_optimiser_is_fused_where_pytorch_has_the_kernel_and_steps_like_the_loop(name):
    """One fused kernel for all parameters where this PyTorch has it; the same update as PyTorch's
    per-parameter loop to float rounding; the plain optimiser where fused=True is refused."""
    from workbench.engine.config import RunConfig
    from workbench.engine.trainer import _optimizer

    config = RunConfig(optimizer=name, lr=0.05, weight_decay=5e-4)
    models = [student(seed=2) for _ in range(2)]
    fused = _optimizer(config, list(models[0].parameters()))
    assert fused.defaults.get("fused") is True  # this project's PyTorch (>= 2.4) has CPU kernels
    options = {k: v for k, v in fused.defaults.items() if k in ("lr", "momentum", "weight_decay", "nesterov")}
    loop = type(fused)(models[1].parameters(), foreach=False, **options)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(5):
        for model, opt in zip(models, (fused, loop)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert torch.allclose(params(models[0]), params(models[1]), rtol=1e-5, atol=1e-6)
    assert not torch.equal(params(models[0]), params(student(seed=2)))  # it did train


def test_the_optimiser_falls_back_where_fused_is_refused(monkeypatch):
    from workbench.engine.config import RunConfig
    from workbench.engine import trainer

    class NoFused(torch.optim.SGD):  # a PyTorch whose SGD has no fused kernel for these parameters
        def __init__(self, params, fused=None, **options):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices")
            super().__init__(params, **options)

    monkeypatch.setattr(trainer.torch.optim, "SGD", NoFused)
    opt = trainer._optimizer(RunConfig(), list(student().parameters()))
    assert isinstance(opt, NoFused) and not opt.defaults.get("fused")
    integers = [torch.zeros(2, dtype=torch.int64)]  # not floating point: fused is not even tried
    assert trainer._optimizer(RunConfig(), integers).defaults.get("fused") is not True


def test_a_resumed_run_keeps_this_pytorchs_optimiser_implementation(digits, teacher):
    """A checkpoint saved by a per-parameter optimiser (an older workbench, or a PyTorch without the
    fused kernel) resumes with the fused one, and the saved state (momentum, lr) still loads."""
    run = wb.distill(student(), teacher, digits, methods={"kd": {}}, epochs=1, store=None, progress=False)
    run._prepare()
    state = run._state()
    for group in state["optimizer"]["param_groups"]:
        group.update(fused=None, foreach=True, lr=0.0123)
    run._restore(state)
    assert all(g["fused"] is True and g["foreach"] is None for g in run.optimizer.param_groups)
    assert run.optimizer.param_groups[0]["lr"] == 0.0123
