"""The benchmark scripts run against the engine's current internals (they call its telemetry and
step methods), and the hand-written step they compare with is the engine's KD step."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import workbench as wb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import optimizer_step  # noqa: E402
import overhead  # noqa: E402
import profile_step  # noqa: E402
import step_ab  # noqa: E402


def test_the_hand_step_and_the_engine_step_make_the_same_update():
    data = wb.data.load("digits", n_train=64)
    batch = data.train.batch(torch.arange(32))
    torch.manual_seed(0)
    teacher = wb.models.build("cnn", num_classes=10, in_channels=1, width=8)
    students = []
    for _ in range(2):
        torch.manual_seed(1)
        students.append(wb.models.build("mlp", num_classes=10, in_channels=1, image_size=8))
    run = wb.distill(students[0], teacher, data, methods={"kd": {"temperature": overhead.TEMPERATURE,
                                                                 "weight": overhead.SOFT_WEIGHT}},
                     task_weight=overhead.TASK_WEIGHT, lr=overhead.LR, epochs=1, batch_size=32,
                     store=None, progress=False, device="cpu")
    run._prepare()
    run._start_telemetry()
    run._train_step(batch)
    optimizer = torch.optim.SGD(students[1].parameters(), lr=overhead.LR, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    overhead.hand_step(teacher, students[1], optimizer, batch.x, batch.y)
    for engine, hand in zip(students[0].parameters(), students[1].parameters()):
        torch.testing.assert_close(engine, hand)


def test_step_ab_and_profile_step_run_on_the_cnn_pair(tmp_path):
    ab = step_ab.main(["--pair", "cnn", "--repeats", "3", "--out", str(tmp_path / "ab.json")])
    assert ab["hand_step_ms"] > 0 and ab["engine_step_ms"] > 0
    # torchdistill: a dev dependency
    assert set(ab["steps_ms"]) == {"hand", "hand_fused", "engine", "cache", "torchdistill"}
    assert ab["engine_vs_torchdistill"] == ab["steps_ms"]["torchdistill"] / ab["steps_ms"]["engine"]
    assert ab["cache_vs_torchdistill"] == ab["steps_ms"]["torchdistill"] / ab["steps_ms"]["cache"]
    # operators dispatched per step (on a GPU, launches): the fused optimiser saves several per
    # parameter, and the engine adds only a handful to the hand step with the same optimiser
    # (the argmax for the training accuracy, the detached telemetry terms)
    ops = ab["aten_ops_per_step"]
    assert ops["hand_fused"] < ops["hand"] - 20
    assert ops["hand_fused"] <= ops["engine"] <= ops["hand_fused"] + 10
    # a served step skips the teacher's forward (90 operators in float32) and looks nothing up
    # on the host once every row is stored: at most a handful more than the hand step without it
    teacher_ops = 90
    assert ops["cache"] <= ops["hand_fused"] - teacher_ops + 10
    assert json.loads((tmp_path / "ab.json").read_text())["pair"] == "cnn"
    # the GPU's regime: autocast's casts are operators too, in every implementation alike
    amp = step_ab.main(["--pair", "cnn", "--repeats", "3", "--amp", "--batch-size", "4",
                        "--out", str(tmp_path / "amp.json")])
    amp_ops = amp["aten_ops_per_step"]
    assert amp["amp"] and amp["batch_size"] == 4
    assert all(amp_ops[name] > ops[name] for name in ops)
    assert amp_ops["hand_fused"] <= amp_ops["engine"] <= amp_ops["hand_fused"] + 10
    profile_step.main(["--pair", "cnn", "--steps", "30", "--warmup", "1", "--out", str(tmp_path / "p.json")])
    profile = json.loads((tmp_path / "p.json").read_text())
    assert profile["phases_ms"]["telemetry"] > 0 and profile["engine_step_ms"] > 0


def test_gpu_script_runs_the_parts_it_is_asked_for_on_the_cpu(tmp_path):
    """gpu.sh's CPU dry run (what to do before spending device time): the profile part alone,
    tiny; the others say they were skipped; the profile's JSON is written where asked."""
    env = {**os.environ, "KDWB_BENCH_DEVICE": "cpu", "KDWB_BENCH_BATCH": "8", "KDWB_BENCH_STEPS": "1",
           "KDWB_GPU_PARTS": "profile", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "gpu_log.txt").read_text()
    for part in ("tests", "harness", "step_ab", "scaling", "compile"):
        assert f"== {part}: skipped" in log
    assert "exit status" not in log
    profile = json.loads((tmp_path / "gpu_profile.json").read_text())
    assert profile["machine"]["device"] == "cpu" and profile["batch_size"] == 8


def test_the_harness_times_and_measures_each_variant_and_checks_the_targets(tmp_path):
    """A tiny run of the harness on the cnn pair: every variant timed, the CPU memory measured in
    fresh processes (an even number of runs: the lower middle is reported), targets computed."""
    import harness

    out = tmp_path / "h.json"
    harness.main(["--pairs", "cnn", "--variants", "hand,hand_fused,workbench,cache", "--batch-size", "16", "--steps", "2",
                  "--epochs", "2", "--rounds", "1", "--warmup-rounds", "0", "--memory-runs", "2",
                  "--out", str(out)])
    result = json.loads(out.read_text())["pairs"]["cnn"]
    assert result["steps_timed"] == 2 and result["errors"] == {}
    assert set(result["samples_per_s"]) == {"hand", "hand_fused", "workbench", "cache"}
    for variant, memory in result["memory"].items():
        assert len(memory["growths_mb"]) == 2 and memory["peak_mb"] == min(memory["growths_mb"]), variant
    met = result["targets"]["met"]
    assert met["cache_1.5x_hand"] is None and met["not_slower_than_torchdistill"] is None
    assert isinstance(met["within_5pct_of_hand"], bool) and isinstance(met["memory_within_10pct"], bool)
    assert result["info"]["cache"]["cache_served"] >= 2


def test_optimizer_step_times_each_implementation_and_they_agree(tmp_path):
    result = optimizer_step.main(["--repeats", "3", "--out", str(tmp_path / "o.json")])
    assert set(result["students"]) == {"resnet8x4", "wrn_16_2", "mlp"}
    for row in result["students"].values():
        assert row["loop_us"] > 0 and row["fused_us"] > 0 and row["foreach_us"] > 0
        assert row["fused_max_abs_diff_from_loop"] < 1e-5 and row["foreach_max_abs_diff_from_loop"] < 1e-5
