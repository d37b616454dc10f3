"""Teacher-output cache: an offline KD run with the cache against the same run without it.

resnet32x4 (teacher) -> resnet8x4 (student) on `shapes` 32x32, KD, the same seed, data and batches.
The first epoch fills the cache (the teacher runs as usual); from the second on the teacher's
forward pass is skipped. Times the training steps of every epoch, alternates the two runs over
``--rounds`` rounds (uncached, cached, then cached, uncached, ...) so that drift in the machine's
speed hits both alike, reports the median epoch time of epochs >= 2 of each kind and their ratio,
checks that the runs end with equal weights (the cache serves exactly what the teacher computed),
and writes the result as JSON.

    python benchmarks/cache.py                        # CPU, one thread, 256 images, 4 epochs, 2 rounds
    python benchmarks/cache.py --device cuda --n-train 8192 --epochs 4 --threads 16
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import workbench as wb


def build(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return wb.models.build(name, num_classes=10, in_channels=3)


def timed_run(data, teacher, cache: bool, args) -> tuple[list[float], wb.Run]:
    """One distillation run and the wall time of each epoch's training steps (from the end of the
    previous epoch's last step to the end of its own; set-up and evaluation are not counted)."""
    student = build("resnet8x4", 1)
    methods = {name: {} for name in args.methods.split(",")}
    run = wb.distill(student, teacher, data, methods, scheme_args={"cache": True} if cache else None,
                     epochs=args.epochs, batch_size=args.batch_size, seed=0, device=args.device,
                     eval_every=args.epochs, checkpoint_every=args.epochs, log_every=10 ** 6,
                     store=None, progress=False)
    marks = []

    def mark(r, _=None):
        if r.device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    run.on("run_start", mark)
    run.on("step_end", lambda r, _: mark(r) if r.step % r.steps_per_epoch == 0 else None)
    run.fit()
    return [b - a for a, b in zip(marks, marks[1:])], run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", default="kd", help="comma-separated methods, e.g. kd,at")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/cache.json)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the cache serves from the second epoch")
    torch.set_num_threads(args.threads)
    data = wb.data.load("shapes", size=32, n_train=args.n_train, n_test=256)
    teacher = build("resnet32x4", 0)   # untrained: its speed is what is measured
    epochs, runs = {"uncached": [], "cached": []}, {}
    for round_ in range(args.rounds):
        order = (("uncached", False), ("cached", True))
        for name, cache in order if round_ % 2 == 0 else order[::-1]:
            times, runs[name] = timed_run(data, teacher, cache, args)
            epochs[name].append(times)
            print(f"round {round_} {name:9s} epoch times (s): " + ", ".join(f"{t:.2f}" for t in times),
                  flush=True)
    later = {name: statistics.median(t for times in rounds for t in times[1:]) for name, rounds in epochs.items()}
    cache = runs["cached"].scheme.cache
    same = all(torch.equal(a, b) for a, b in zip(runs["cached"].student.state_dict().values(),
                                                 runs["uncached"].student.state_dict().values()))
    result = {
        "benchmark": "cache", "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "dataset": "shapes", "image_size": 32, "n_train": args.n_train, "batch_size": args.batch_size,
        "teacher": "resnet32x4", "student": "resnet8x4", "methods": args.methods.split(","),
        "epochs": args.epochs, "rounds": args.rounds, "threads": args.threads, "device": args.device,
        "epoch_seconds": epochs,
        "median_epoch_s_from_epoch_2": later,
        "speedup_uncached_over_cached": later["uncached"] / later["cached"],
        "first_epoch_cached_over_uncached": statistics.median(t[0] for t in epochs["cached"])
        / statistics.median(t[0] for t in epochs["uncached"]),
        "cache": {"teacher_forwards": cache.teacher_forwards, "served": cache.served,
                  "bytes": cache.nbytes, "reason_off": cache.reason},
        "equal_final_weights": same,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
    }
    print(f"epochs >= 2: uncached {later['uncached']:.2f} s, cached {later['cached']:.2f} s -> "
          f"{result['speedup_uncached_over_cached']:.2f}x faster; cache {cache.nbytes / 2**10:.1f} KiB, "
          f"equal final weights: {same}")
    out = Path(args.out or Path(__file__).parent / "results" / "cache.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
