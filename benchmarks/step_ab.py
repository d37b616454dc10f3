"""The engine's training step against the hand-written step, on the same batch, alternated.

    python benchmarks/step_ab.py --pair resnet --repeats 10
    python benchmarks/step_ab.py --pair cnn --repeats 300

One process, one pair of models, one fixed batch: each repeat times the hand-written KD step
(``overhead.hand_step``: teacher forward under ``no_grad``, student forward, CE + KD, backward,
SGD and scheduler steps) and the engine's ``Run._train_step`` (scheme step with taps and methods,
the same backward and optimiser, telemetry), in alternating order, in CPU time of this process.
The medians isolate what the engine adds to a step from what the harness's whole runs also see
(data, model construction, run-to-run noise).
Results: ``benchmarks/results/step_ab_<pair>_cpu.json``.
"""
from __future__ import annotations

import argparse
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
from harness import LR, PAIRS, SOFT_WEIGHT, TASK_WEIGHT, TEMPERATURE, build, load_data, machine  # noqa: E402
from overhead import hand_step  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="cnn", choices=sorted(PAIRS))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error(f"--repeats must be at least 3, got {args.repeats}")
    torch.set_num_threads(1)
    batch_size = PAIRS[args.pair][4]
    data, _ = load_data(args.pair, batch_size, PAIRS[args.pair][5])
    teacher, student = build(PAIRS[args.pair][2], data, 0), build(PAIRS[args.pair][3], data, 1)
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": TEMPERATURE, "weight": SOFT_WEIGHT}},
                     task_weight=TASK_WEIGHT, lr=LR, epochs=2, batch_size=batch_size, store=None,
                     progress=False, device="cpu")
    run._prepare()  # what fit() does before its loop: connectors, optimiser, device settings
    run._start_telemetry()
    batch = data.train.batch(torch.arange(batch_size))

    def hand() -> None:
        hand_step(teacher, student, run.optimizer, batch.x, batch.y)
        run.scheduler.step()

    def engine_step() -> None:
        run._train_step(batch)
        run._start_telemetry()  # the telemetry read is not part of a step

    times = {hand: [], engine_step: []}
    for repeat in range(args.repeats):
        # the order alternates too: the second of two steps finds caches warmed by the first
        for step in (hand, engine_step) if repeat % 2 == 0 else (engine_step, hand):
            started = time.process_time()
            step()
            times[step].append(time.process_time() - started)
    hand_times, engine_times = times[hand], times[engine_step]
    result = {"benchmark": "step_ab", "pair": args.pair, "batch_size": batch_size, "repeats": args.repeats,
              "hand_step_ms": statistics.median(hand_times) * 1e3,
              "engine_step_ms": statistics.median(engine_times) * 1e3,
              "machine": machine(torch.device("cpu"))}
    result["engine_vs_hand"] = result["engine_step_ms"] / result["hand_step_ms"]
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"step_ab_{args.pair}_cpu.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.pair}: hand step {result['hand_step_ms']:.3f} ms, engine step {result['engine_step_ms']:.3f} ms "
          f"(engine / hand {result['engine_vs_hand']:.3f}), median of {args.repeats} alternated repeats -> {out}")
    return result


if __name__ == "__main__":
    main()
