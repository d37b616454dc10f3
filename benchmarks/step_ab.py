"""The engine's training step against the hand-written step and torchdistill's, on one batch, alternated.

    python benchmarks/step_ab.py --pair resnet --repeats 10
    python benchmarks/step_ab.py --pair cnn --repeats 400
    python benchmarks/step_ab.py --pair cnn --amp --batch-size 8 --repeats 1000   # the GPU's regime
    python benchmarks/step_ab.py --device cuda --pair cnn --batch-size 128 --repeats 300   # on a GPU

One process, one teacher, one fixed batch, one copy of the student (same initial weights) per
implementation, each with its own optimiser:

  hand          the hand-written KD step (``overhead.hand_step``: teacher forward under ``no_grad``,
                student forward, CE + KD, backward, SGD step) and the scheduler step, with PyTorch's
                default SGD (the per-parameter loop on the CPU);
  hand_fused    the same with ``SGD(fused=True)``, the optimiser the engine builds: what is left
                between it and ``engine`` is what the engine adds to a step;
  engine        the engine's ``Run._train_step`` (scheme step with taps and methods, backward,
                optimiser, scheduler, telemetry rows);
  cache         the same with the teacher cache serving the batch (filled by one epoch first), the
                batch gathered from a copy of the training split as the trainer keeps it on a GPU,
                so that the cache takes the path it takes there (no input checksum per step);
  torchdistill  its ``DistillationBox`` (the harness's config): ``forward_process`` then
                ``post_forward_process`` (backward, optimiser and scheduler steps); if installed.

Each repeat runs every implementation once, in an order that rotates from repeat to repeat, timed
in CPU time of this process (on CUDA: wall-clock time between device syncs before and after the
step, with the workbench's CUDA settings, bf16 autocast and channels_last, for every
implementation, and the training split on the device). Interleaving single steps (milliseconds) puts every implementation
under the same machine speed, where whole runs (the harness) take turns over seconds on a machine
whose speed can change between them. Medians of the repeats, and the number of ATen operators
each implementation's step dispatches (profiled once after the timing); results in
``benchmarks/results/step_ab_<pair>[_amp][_b<batch>]_<cpu|cuda>.json``.

The GPU's regime on the CPU: on a GPU the small pairs are bound by the host, which spends each
step dispatching operators (the GPU finishes each kernel before the next is launched). ``--amp``
puts every implementation's forward passes under bf16 autocast, as the workbench does on CUDA by
default (autocast's casts are operators too), and a small ``--batch-size`` makes the CPU's
kernels nearly free, so that what is timed is, as there, the dispatching and the Python around
it. An emulation, not a GPU measurement: a CUDA launch costs more than a CPU dispatch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import workbench as wb  # noqa: E402
from harness import (LR, PAIRS, SOFT_WEIGHT, TASK_WEIGHT, TEMPERATURE, build, load_data, machine,  # noqa: E402
                     settings_for, sync, torchdistill_box)
from overhead import hand_optimizer, hand_step  # noqa: E402
from workbench.engine import distributed  # noqa: E402

IMPLEMENTATIONS = ("hand", "hand_fused", "engine", "cache", "torchdistill")


def aten_ops(step) -> int:
    """How many ATen operators one call of ``step`` dispatches (nested calls included), from the
    PyTorch profiler: on a GPU most of them (all but views and allocations) are kernel launches,
    the fixed cost that dominates small models there."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(1 for event in prof.events() if event.name.startswith("aten::"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="cnn", choices=sorted(PAIRS))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the pair's CPU batch")
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast on the CPU around every implementation's forward passes "
                             "(on CUDA it is on: the workbench's default there)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error(f"--repeats must be at least 3, got {args.repeats}")
    if args.batch_size is not None and args.batch_size < 2:
        parser.error(f"--batch-size must be at least 2, got {args.batch_size}")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available here")
    torch.set_num_threads(1)
    amp = args.amp or cuda
    batch_size = args.batch_size or PAIRS[args.pair][4]
    data, steps_per_epoch = load_data(args.pair, batch_size, PAIRS[args.pair][5])
    settings = settings_for(device, data)  # the workbench's defaults there, for every implementation
    layout = torch.channels_last if settings["channels_last"] else torch.preserve_format
    teacher = build(PAIRS[args.pair][2], data, 0).to(device=device, memory_format=layout).eval()
    student = {name: build(PAIRS[args.pair][3], data, 1).to(device=device, memory_format=layout)
               for name in IMPLEMENTATIONS}
    precision = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def engine_run(model, **scheme_args):
        run = wb.distill(model, teacher, data, methods={"kd": {"temperature": TEMPERATURE, "weight": SOFT_WEIGHT}},
                         scheme_args=scheme_args or None, task_weight=TASK_WEIGHT, lr=LR, epochs=2,
                         batch_size=batch_size, store=None, progress=False, device=str(device))
        run._prepare()  # what fit() does before its loop: connectors, optimiser, device settings
        run._autocast = amp  # what _prepare sets on CUDA (amp is the default there)
        run._start_telemetry()
        return run

    def engine_with(run, batch):
        def step() -> None:
            run._train_step(batch)
            run._start_telemetry()  # the telemetry read is not part of a step
        return step

    run = engine_run(student["engine"])
    batch = data.train.batch(torch.arange(batch_size)).to(device)
    if settings["channels_last"] and batch.x.dim() == 4:
        batch.x = batch.x.contiguous(memory_format=torch.channels_last)
    total = run.total_steps
    cached = engine_run(student["cache"], cache=True)
    # the training split as the trainer keeps it on a GPU (there it did), and one epoch to fill the cache
    if cached._device_train is None:
        cached._device_train = distributed._to_device(data.train, cached.settings)
    for filling in cached.scheme.batches(torch.Generator().manual_seed(0)):
        cached._train_step(filling)
    cached.epoch = 1
    served = next(iter(cached.scheme.batches(torch.Generator().manual_seed(1))))
    cached._start_telemetry()

    def hand_with(model, optimizer, scheduler):
        def step() -> None:
            hand_step(teacher, model, optimizer, batch.x, batch.y, amp=amp)  # autocast on x's device
            scheduler.step()
        return step

    steps = {"hand": hand_with(student["hand"], *hand_optimizer(student["hand"], total)),
             "hand_fused": hand_with(student["hand_fused"], *hand_optimizer(student["hand_fused"], total, fused=True)),
             "engine": engine_with(run, batch), "cache": engine_with(cached, served)}
    try:
        box = torchdistill_box(student["torchdistill"], teacher, device, 2, total // 2)

        def torchdistill_step() -> None:
            with precision():
                loss = box.forward_process(batch.x, batch.y, None)
            box.post_forward_process(loss)

        box.pre_epoch_process(epoch=0)
        steps["torchdistill"] = torchdistill_step
    except ImportError:
        print("torchdistill is not installed: its step is left out")
    names = list(steps)
    times = {name: [] for name in names}
    clock = time.perf_counter if cuda else time.process_time
    for repeat in range(args.repeats):
        # the order rotates too: a step run after another finds caches warmed by it
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            started = clock()
            steps[name]()
            sync(device)
            times[name].append(clock() - started)
    steps_ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    cache = cached.scheme.cache
    if cache.reason is not None or cache.served < args.repeats or cache.teacher_forwards != steps_per_epoch:
        raise RuntimeError(f"the cache did not serve every timed step (served {cache.served}, teacher "
                           f"forwards {cache.teacher_forwards}, reason {cache.reason!r})")
    result = {"benchmark": "step_ab", "pair": args.pair, "batch_size": batch_size, "amp": amp,
              "channels_last": settings["channels_last"], "device": str(device),
              "clock": "wall, device synced" if cuda else "process CPU time",
              "repeats": args.repeats, "steps_ms": steps_ms,
              "aten_ops_per_step": {name: aten_ops(step) for name, step in steps.items()},
              "hand_step_ms": steps_ms["hand"], "engine_step_ms": steps_ms["engine"],
              "machine": machine(device)}
    # as in the harness: > 1 when the engine is faster (time of the other / time of the engine)
    result["engine_vs_hand"] = steps_ms["hand"] / steps_ms["engine"]
    result["engine_vs_hand_fused"] = steps_ms["hand_fused"] / steps_ms["engine"]
    result["cache_vs_hand"] = steps_ms["hand"] / steps_ms["cache"]
    if "torchdistill" in steps_ms:
        result["engine_vs_torchdistill"] = steps_ms["torchdistill"] / steps_ms["engine"]
        result["cache_vs_torchdistill"] = steps_ms["torchdistill"] / steps_ms["cache"]
    suffix = ("_amp" if args.amp else "") + (f"_b{batch_size}" if args.batch_size else "")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"step_ab_{args.pair}{suffix}_{device.type}.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.pair}: median step of {args.repeats} interleaved repeats: "
          + ", ".join(f"{name} {ms:.3f} ms" for name, ms in steps_ms.items())
          + f"; engine speed / hand {result['engine_vs_hand']:.3f}, / hand_fused {result['engine_vs_hand_fused']:.3f}"
          + (f", / torchdistill {result['engine_vs_torchdistill']:.3f}" if "torchdistill" in steps_ms else "")
          + f"; cache speed / hand {result['cache_vs_hand']:.3f}"
          + (f", / torchdistill {result['cache_vs_torchdistill']:.3f}" if "torchdistill" in steps_ms else "")
          + "; ATen ops per step: " + ", ".join(f"{n} {c}" for n, c in result["aten_ops_per_step"].items())
          + f" -> {out}")
    return result


if __name__ == "__main__":
    main()
