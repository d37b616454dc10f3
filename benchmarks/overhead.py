"""Engine overhead: the workbench's KD run against a hand-written PyTorch loop doing the same work.

Same models (same initial weights), same data, same batches in the same order, same optimiser and
cosine schedule, same KD loss, one process; A/B runs alternate after a warm-up so that drift in
the machine's speed hits both alike. Prints steps per second and the ratio workbench / hand loop.

    python benchmarks/overhead.py                 # digits, cnn(32) -> cnn(8), 5 rounds
    python benchmarks/overhead.py --pair resnet   # shapes 32x32, resnet32x4 -> resnet8x4
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import workbench as wb
from workbench.methods.logit.kd import kd_loss

PAIRS = {
    "cnn": dict(dataset="digits", data={}, teacher=("cnn", {"width": 32}), student=("cnn", {"width": 8}),
                batch_size=64),
    "resnet": dict(dataset="shapes", data={"n_train": 1024, "n_test": 256},
                   teacher=("resnet32x4", {}), student=("resnet8x4", {}), batch_size=64),
}
TEMPERATURE, SOFT_WEIGHT, TASK_WEIGHT, LR = 4.0, 0.9, 0.1, 0.05


def build(spec, data, seed):
    torch.manual_seed(seed)
    return wb.models.build(spec[0], num_classes=data.num_classes, in_channels=data.in_channels, **spec[1])


def cosine(total: int):
    """The per-step cosine learning-rate factor over ``total`` steps (the workbench's schedule)."""
    return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))


def hand_optimizer(student, total: int, fused: bool = False):
    """The hand loop's SGD (PyTorch's default implementation, or ``fused=True``) and its per-step
    cosine schedule over ``total`` steps: (optimizer, scheduler)."""
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4, nesterov=True,
                                **({"fused": True} if fused else {}))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(total))


def hand_step(teacher, student, optimizer, x, y, amp: bool = False) -> None:
    """One step of the minimal loop: teacher forward under no_grad, student forward, CE + KD,
    backward, optimiser step (bf16 autocast on the inputs' device when ``amp``)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        with torch.no_grad():
            teacher_logits = teacher(x)
        logits = student(x)
        loss = TASK_WEIGHT * F.cross_entropy(logits, y) + SOFT_WEIGHT * kd_loss(logits, teacher_logits, TEMPERATURE)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def hand_loop(student, teacher, data, batch_size, epochs, seed, device="cpu", amp=False,
              channels_last=False, on_epoch_end=None, fused=False):
    """The minimal loop: teacher forward under no_grad, student forward+backward, KD, SGD step.

    On a GPU it is written as a careful user would: the whole training split moved to the device
    once, batches gathered there by index, bf16 autocast (``amp``) and NHWC (``channels_last``) when
    asked; ``fused``: ``SGD(fused=True)`` (the workbench's optimiser) instead of PyTorch's default.
    ``on_epoch_end(epoch)`` is called after each epoch's last step (the harness times there).
    """
    device = torch.device(device)
    layout = torch.channels_last if channels_last else torch.preserve_format
    teacher.to(device=device, memory_format=layout).eval()
    student.to(device=device, memory_format=layout)
    inputs, labels = data.train.x.to(device), data.train.y.to(device)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    total = epochs * (len(data.train) // batch_size)
    optimizer, scheduler = hand_optimizer(student, total, fused)
    torch.manual_seed(seed)
    for epoch in range(epochs):
        student.train()
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order.to(device)
        for start in range(0, len(order) - len(order) % batch_size, batch_size):
            index = order[start:start + batch_size]
            hand_step(teacher, student, optimizer, inputs[index], labels[index], amp and device.type == "cuda")
            scheduler.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    student.eval()  # the final evaluation, in batches of the training size as the engine does
    with torch.no_grad():
        correct = sum((student(x.to(device)).argmax(1) == y.to(device)).sum().item()
                      for x, y in zip(data.test.x.split(batch_size), data.test.y.split(batch_size)))
    return total


def engine_loop(student, teacher, data, batch_size, epochs, seed):
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": TEMPERATURE, "weight": SOFT_WEIGHT}},
                     task_weight=TASK_WEIGHT, lr=LR, epochs=epochs, batch_size=batch_size, seed=seed,
                     eval_every=epochs, store=None, progress=False)
    run.fit()
    return run.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="cnn")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/overhead_<pair>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair = PAIRS[args.pair]
    data = wb.data.load(pair["dataset"], **pair["data"])
    epochs = args.epochs or (15 if args.pair == "cnn" else 1)
    teacher = build(pair["teacher"], data, 0)
    times = {"hand": [], "engine": []}
    steps = 0
    for round_ in range(args.rounds + 1):
        for name, loop in (("hand", hand_loop), ("engine", engine_loop)) if round_ % 2 == 0 else \
                (("engine", engine_loop), ("hand", hand_loop)):
            student = build(pair["student"], data, 1)
            started = time.perf_counter()
            steps = loop(student, teacher, data, pair["batch_size"], epochs, seed=0)
            if round_ > 0:  # round 0 warms up caches and allocators
                times[name].append(time.perf_counter() - started)
    rate = {name: steps / statistics.median(t) for name, t in times.items()}
    result = {
        "benchmark": "overhead", "pair": args.pair, "dataset": pair["dataset"],
        "teacher": pair["teacher"][0], "student": pair["student"][0], "batch_size": pair["batch_size"],
        "steps_per_run": steps, "rounds": args.rounds, "threads": args.threads,
        "seconds": times, "steps_per_s": rate, "ratio_engine_to_hand": rate["engine"] / rate["hand"],
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine(), "cpus": torch.get_num_threads()},
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"overhead_{args.pair}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.pair}: hand loop {rate['hand']:.1f} steps/s, workbench {rate['engine']:.1f} steps/s, "
          f"ratio {result['ratio_engine_to_hand']:.3f} (median of {args.rounds} alternating rounds, "
          f"{steps} steps each) -> {out}")


if __name__ == "__main__":
    main()
