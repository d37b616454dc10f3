"""Where one workbench step's time goes, and the lower bound it implies.

Builds a workbench KD run (the harness's pair, data and settings), prepares it, and times, step by
step after a warm-up, each phase of the engine's step with a device sync around it:

  data        gathering the batch (by index; on the GPU from the device-resident split)
  teacher     the frozen teacher's forward (``scheme.teacher_outputs``: no_grad, taps)
  student     the student's forward (``scheme.student_taps``)
  loss        cross-entropy + the methods' terms (``scheme.method_terms``)
  backward    ``zero_grad`` + ``loss.backward()``
  optimiser   ``optimizer.step()`` + ``scheduler.step()``
  telemetry   the on-device bookkeeping of ``Run._train_step`` (accuracy, stacked terms,
              first-non-finite step, running sums): no host read

These mirror ``Offline.step`` and ``Run._train_step`` piece by piece. Times are this process's CPU
time on the CPU (other processes sharing the cores do not count) and wall-clock time on a GPU. Then, without per-phase
syncs: the real ``Run._train_step`` (the engine's step as it runs), the hand-written step of
``benchmarks/overhead.py``, and the lower bound: the teacher's plain forward (no hooks, no_grad)
timed alone plus the student's plain forward + backward (cross-entropy only) timed alone.

    python benchmarks/profile_step.py                       # resnet32x4 -> resnet8x4, CPU-sized
    python benchmarks/profile_step.py --device cuda --batch-size 128 --out benchmarks/results/gpu_profile.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402  (puts the repository on sys.path)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import workbench as wb  # noqa: E402
from overhead import SOFT_WEIGHT, TASK_WEIGHT, TEMPERATURE, hand_step  # noqa: E402
from workbench.engine import distributed  # noqa: E402

PHASES = ("data", "teacher", "student", "loss", "backward", "optimiser", "telemetry")


def clock(device):
    """This process's CPU time on the CPU (robust on a shared machine), wall-clock time on a GPU."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def timed(device, fn):
    harness.sync(device)
    start = clock(device)
    out = fn()
    harness.sync(device)
    return out, clock(device) - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="resnet", choices=sorted(harness.PAIRS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 8 on CPU, 40 on CUDA)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    steps = args.steps or (40 if device.type == "cuda" else 8)
    batch_size = args.batch_size or harness.PAIRS[args.pair][4]
    data, _ = harness.load_data(args.pair, batch_size, max(steps, 4))
    teacher = harness.build(harness.PAIRS[args.pair][2], data, 0)
    student = harness.build(harness.PAIRS[args.pair][3], data, 1)
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": TEMPERATURE, "weight": SOFT_WEIGHT}},
                     task_weight=TASK_WEIGHT, epochs=1000, batch_size=batch_size, device=str(device),
                     store=None, progress=False)
    run._prepare()
    run.scheme.train()
    run._start_telemetry()  # as Run._loop does
    scheme, settings = run.scheme, run.settings
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=settings.amp)  # noqa: E731

    def batches():
        epoch = 0
        while True:
            yield from distributed.batches(run, data.train, torch.Generator().manual_seed(epoch))
            epoch += 1

    stream = batches()
    phases = {p: [] for p in PHASES}
    for i in range(args.warmup + steps):
        t = {}
        batch, t["data"] = timed(device, lambda: next(stream))
        with autocast():
            teacher_out, t["teacher"] = timed(device, lambda: scheme.teacher_outputs(batch))
            student_out, t["student"] = timed(device, lambda: scheme.student_taps(batch.x))

            def loss_fn():
                ce = F.cross_entropy(student_out.logits, batch.y)
                distill, terms = scheme.method_terms(student_out, teacher_out, batch)
                return TASK_WEIGHT * ce + distill, {"ce": ce, **terms}
            (loss, terms), t["loss"] = timed(device, loss_fn)

        def backward():
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        _, t["backward"] = timed(device, backward)

        def optimise():
            run.optimizer.step()
            run.scheduler.step()
        _, t["optimiser"] = timed(device, optimise)

        def telemetry():  # as Run._train_step, after the optimiser; the read is not a step's
            run._record_telemetry(loss, terms, student_out.logits, batch)
            if len(run._pending_rows) == run.config.log_every:
                run._start_telemetry()
        _, t["telemetry"] = timed(device, telemetry)
        if i >= args.warmup:
            for p in PHASES:
                phases[p].append(t[p])

    median = {p: statistics.median(v) * 1e3 for p, v in phases.items()}  # ms

    def per_step(fn, reps):
        for _ in range(args.warmup):
            fn()
        harness.sync(device)
        start = clock(device)
        for _ in range(reps):
            fn()
        harness.sync(device)
        return (clock(device) - start) / reps * 1e3

    def engine_step():
        run._train_step(next(stream))
        if len(run._pending_rows) == run.config.log_every:
            run._start_telemetry()
    engine_ms = per_step(engine_step, steps)

    # plain models, no hooks: the lower bound's two parts, and the hand-written step
    plain_teacher = harness.build(harness.PAIRS[args.pair][2], data, 0).to(device).eval()
    plain_student = harness.build(harness.PAIRS[args.pair][3], data, 1).to(device)
    if settings.channels_last:
        plain_teacher.to(memory_format=torch.channels_last)
        plain_student.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(plain_student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sample = next(stream)
    x, y = sample.x, sample.y

    def teacher_alone():
        with torch.no_grad(), autocast():
            plain_teacher(x)

    def student_alone():
        with autocast():
            loss = F.cross_entropy(plain_student(x), y)
        plain_student.zero_grad(set_to_none=True)
        loss.backward()

    teacher_ms, student_ms = per_step(teacher_alone, steps), per_step(student_alone, steps)
    hand_ms = per_step(lambda: hand_step(plain_teacher, plain_student, optimizer, x, y, settings.amp), steps)
    run._finish()
    result = {
        "benchmark": "profile_step", "pair": args.pair, "batch_size": batch_size, "steps": steps,
        "settings": settings.as_dict(), "machine": harness.machine(device),
        "phases_ms": median, "phases_sum_ms": sum(median.values()),
        "engine_step_ms": engine_ms, "hand_step_ms": hand_ms,
        "lower_bound_ms": teacher_ms + student_ms,
        "lower_bound_parts_ms": {"teacher_forward": teacher_ms, "student_forward_backward": student_ms},
    }
    result["engine_over_lower_bound"] = engine_ms / result["lower_bound_ms"]
    result["hand_over_lower_bound"] = hand_ms / result["lower_bound_ms"]
    total = result["phases_sum_ms"]
    print(f"{args.pair} on {device}, batch {batch_size}, median of {steps} steps")
    print("| phase | ms | share |\n| --- | ---: | ---: |")
    for p in PHASES:
        print(f"| {p} | {median[p]:.2f} | {median[p] / total:.0%} |")
    print(f"| sum of phases (synced) | {total:.2f} | |")
    print(f"engine step {engine_ms:.2f} ms, hand step {hand_ms:.2f} ms, lower bound {result['lower_bound_ms']:.2f} ms "
          f"(teacher forward {teacher_ms:.2f} + student forward+backward {student_ms:.2f}); "
          f"engine / lower bound {result['engine_over_lower_bound']:.2f}, hand / lower bound {result['hand_over_lower_bound']:.2f}")
    out = Path(args.out or harness.ROOT / "benchmarks" / "results" / f"profile_{args.pair}_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
