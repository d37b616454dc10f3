"""DDP on the CPU: two gloo ranks give the single-process result, write the store once, resume.

Two processes (``torch.multiprocessing.spawn``, MASTER_ADDR=127.0.0.1 on a free port) distil the
same teacher into the same student with the same *global* batch as one process does; rank r takes
every 2nd sample of each epoch's permutation from r on, gradients are averaged by DDP, so the final
weights equal the single-process ones up to float rounding. The student is an MLP: batch norm's
statistics are per rank under DDP, so a batch-norm student would differ by design.
The two-rank run is stopped after its first epoch and resumed by a second ``fit`` (from rank 0's
checkpoint, sent to rank 1), and still ends where the uninterrupted single process ends.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

import workbench as wb
from workbench.engine.events import FunctionCallback

EPOCHS, BATCH = 2, 64
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models(data):
    torch.manual_seed(0)
    teacher = wb.models.build("cnn", num_classes=data.num_classes, in_channels=data.in_channels, width=8)
    torch.manual_seed(1)
    student = wb.models.build("mlp", num_classes=data.num_classes, in_channels=data.in_channels,
                              image_size=8, hidden_sizes=(64,))
    return teacher, student


def _distill(data, store, callbacks=()):
    teacher, student = _models(data)
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": 4}}, epochs=EPOCHS,
                     batch_size=BATCH, log_every=4, device="cpu", store=store, progress=False,
                     callbacks=callbacks)
    return run, student


def _stop_after_first_epoch(run, epoch):
    if epoch == 1:
        run.stop()


def _worker(rank: int, world: int, port: int, home: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), KDWB_HOME=home)
    torch.set_num_threads(1)
    data = wb.data.load("digits", n_train=512)
    store = wb.RunStore()
    first, _ = _distill(data, store, [FunctionCallback("epoch_end", _stop_after_first_epoch)])
    first.fit()
    assert first.status == "interrupted" and first.epoch == 1, (first.status, first.epoch)
    second, student = _distill(data, store)
    second.fit()
    assert second.status == "finished" and second.epoch == EPOCHS and second.settings.world == world
    torch.save({"state": student.state_dict(), "history": second.history, "result": second.result},
               Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_write_once_and_resume(tmp_path):
    home = tmp_path / "ddp_home"
    mp.spawn(_worker, args=(2, _free_port(), str(home), str(tmp_path)), nprocs=2, join=True)

    data = wb.data.load("digits", n_train=512)
    single, student = _distill(data, store=None)
    single.fit()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for name, value in student.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ranks[1]["state"][name], ranks[0]["state"][name], rtol=0, atol=0)
    # telemetry is averaged over ranks: the logged training loss is the global batch's
    torch.testing.assert_close(torch.tensor([r["loss"] for r in ranks[0]["history"]]),
                               torch.tensor([r["loss"] for r in single.history]), rtol=1e-4, atol=1e-5)
    assert abs(ranks[0]["result"]["test_acc"] - single.result["test_acc"]) < 0.01

    runs = _runs(home)
    assert len(runs) == 1, runs                      # rank 1 wrote nothing: one run, resumed in place
    assert runs[0]["status"] == "finished"
    assert sorted(a["epoch"] for a in runs[0]["checkpoints"]) == [1, 2]


def _runs(home: Path) -> list[dict]:
    old = os.environ.get("KDWB_HOME")
    os.environ["KDWB_HOME"] = str(home)
    try:
        store = wb.RunStore()
        table = store.runs()
        return [{"status": row["status"], "checkpoints": store.checkpoints(row["id"])}
                for _, row in table.iterrows()]
    finally:
        os.environ["KDWB_HOME"] = old


def test_torchrun_launches_the_cli_on_two_cpu_ranks(tmp_path):
    """``torchrun --nproc_per_node=2 -m workbench distill --config run.yaml``: one store, rank 0 prints."""
    config = tmp_path / "run.yaml"
    config.write_text(
        "dataset: digits\ndataset_args: {n_train: 256}\n"
        "teacher: {name: cnn, width: 8}\nstudent: {name: mlp, image_size: 8, hidden_sizes: [32]}\n"
        "methods: {kd: {temperature: 4}}\nepochs: 1\nbatch_size: 32\ndevice: cpu\n")
    env = {**os.environ, "KDWB_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", "-m", "workbench", "distill", "--config", str(config), "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mlp:kd: finished") == 1, done.stdout  # rank 1's stdout is silenced
    runs = _runs(tmp_path / "home")
    assert len(runs) == 2 and all(r["status"] == "finished" for r in runs), runs  # teacher + student
