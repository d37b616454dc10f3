"""`kdwb demo`: a teacher, a student from scratch and the same student with KD, on `digits`.

The setting is one where KD's gain is real: the student sees only 50 labelled images (5 per
class, 800 steps) and learns the rest of what it knows from the teacher's soft labels on those
same images. With 100 images the gain was smaller and less reliable across seeds, and with all
1,347 it nearly vanishes (docs/benchmarks.md has the numbers and the commands).
"""
from __future__ import annotations

import time

import torch

from . import data as datasets
from . import models
from .api import distill, train

TEACHER = {"name": "cnn", "width": 32}
STUDENT = {"name": "cnn", "width": 8}
N_LABELLED = 50
TEACHER_RUN = {"epochs": 70, "batch_size": 64, "lr": 0.05, "eval_every": 70, "checkpoint_every": 70}
STUDENT_RUN = {"epochs": 400, "batch_size": 25, "lr": 0.05, "eval_every": 400, "checkpoint_every": 400}
KD = {"kd": {"temperature": 4.0, "weight": 0.9}}


def _model(spec: dict, data, seed: int):
    torch.manual_seed(seed)
    return models.build(spec["name"], num_classes=data.num_classes, in_channels=data.in_channels,
                        **{k: v for k, v in spec.items() if k != "name"})


def run_demo(seed: int = 0, quiet: bool = False, store: object = "default") -> dict[str, float]:
    """Train the three models (or reuse them from the store); print and return the accuracies."""
    torch.set_num_threads(1)  # tiny models run faster on one thread (DESIGN.md, calibration)
    started = time.perf_counter()
    full = datasets.load("digits")
    few = datasets.load("digits", n_train=N_LABELLED, seed=seed)
    progress = not quiet

    teacher = _model(TEACHER, full, seed)
    teacher_run = train(teacher, full, seed=seed, progress=progress, store=store,
                        label="teacher cnn(width=32)", **TEACHER_RUN).fit()

    scratch = _model(STUDENT, few, seed + 1)
    scratch_run = distill(scratch, teacher, few, methods={}, seed=seed, progress=progress, store=store,
                          label="student cnn(width=8), scratch", **STUDENT_RUN).fit()

    student = _model(STUDENT, few, seed + 1)  # the same initial weights as the scratch student
    kd_run = distill(student, teacher, few, methods=KD, task_weight=0.1, seed=seed, progress=progress,
                     store=store, label="student cnn(width=8), KD", **STUDENT_RUN).fit()

    elapsed = time.perf_counter() - started
    result = {"teacher": teacher_run.result["test_acc"], "scratch": scratch_run.result["test_acc"],
              "kd": kd_run.result["test_acc"], "seconds": elapsed}
    reused = [r.label for r in (teacher_run, scratch_run, kd_run) if r.status == "reused"]
    print(f"\nKD demo on digits (seed {seed}): teacher cnn(width=32) trained on all "
          f"{len(full.train)} training images; student cnn(width=8) sees {N_LABELLED} labelled images.")
    print(f"  teacher accuracy               {result['teacher']:.2%}")
    print(f"  student from scratch accuracy  {result['scratch']:.2%}")
    print(f"  student with KD accuracy       {result['kd']:.2%}  (T=4, soft weight 0.9)")
    print(f"  KD gain                        {100 * (result['kd'] - result['scratch']):+.2f} points")
    print(f"  time taken                     {elapsed:.1f} s"
          + (f"  (reused from the store: {', '.join(reused)})" if reused else ""))
    return result
