"""One optimiser step on each default student: PyTorch's per-parameter loop, foreach, and fused.

    python benchmarks/optimizer_step.py                  # SGD (the workbench's default)
    python benchmarks/optimizer_step.py --optimizer adamw --repeats 500

The workbench builds its optimiser with ``fused=True`` where PyTorch has the kernel (the CPU and
CUDA in PyTorch >= 2.4); a hand-written loop gets PyTorch's default (the per-parameter loop on
the CPU, foreach on CUDA). For each student (its parameters given fixed random gradients) this
times ``repeats`` steps of each implementation, in alternating order, in CPU time of this process,
and reports the median step and how far the fused and foreach weights end from the loop's after
all the steps (float rounding: the update is the same). Results:
``benchmarks/results/optimizer_step_cpu.json``.
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
from harness import PAIRS, machine  # noqa: E402

IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def optimizers(name: str, student: str, options: dict, in_channels: int) -> dict:
    """One copy of the student per implementation, same weights and gradients, and its optimiser."""
    out = {}
    for impl, flag in IMPLEMENTATIONS.items():
        torch.manual_seed(0)
        model = wb.models.build(student, num_classes=10, in_channels=in_channels, **options)
        params = list(model.parameters())
        generator = torch.Generator().manual_seed(1)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        if name == "sgd":
            opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True, **flag)
        else:
            opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](params, lr=1e-3, weight_decay=5e-4,
                                                                             **flag)
        out[impl] = (opt, params)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error(f"--repeats must be at least 3, got {args.repeats}")
    torch.set_num_threads(1)
    students = {PAIRS[p][3][0]: (PAIRS[p][3][1], 1 if PAIRS[p][0] == "digits" else 3) for p in PAIRS}
    result = {"benchmark": "optimizer_step", "optimizer": args.optimizer, "repeats": args.repeats,
              "machine": machine(torch.device("cpu")), "students": {}}
    for student, (options, in_channels) in students.items():
        opts = optimizers(args.optimizer, student, options, in_channels)
        times = {impl: [] for impl in opts}
        names = list(opts)
        for repeat in range(args.repeats):
            for impl in names if repeat % 2 == 0 else names[::-1]:
                started = time.process_time()
                opts[impl][0].step()
                times[impl].append(time.process_time() - started)
        loop_weights = torch.cat([p.detach().flatten() for p in opts["loop"][1]])
        row = {"parameter_tensors": len(opts["loop"][1]), "parameters": loop_weights.numel()}
        for impl in names:
            row[f"{impl}_us"] = statistics.median(times[impl]) * 1e6
            weights = torch.cat([p.detach().flatten() for p in opts[impl][1]])
            row[f"{impl}_max_abs_diff_from_loop"] = (weights - loop_weights).abs().max().item()
        row["fused_speedup_over_loop"] = row["loop_us"] / row["fused_us"]
        result["students"][student] = row
        print(f"{student}: {row['parameter_tensors']} tensors, loop {row['loop_us']:.0f} µs, foreach "
              f"{row['foreach_us']:.0f} µs, fused {row['fused_us']:.0f} µs (x{row['fused_speedup_over_loop']:.2f}); "
              f"fused - loop after {args.repeats} steps: {row['fused_max_abs_diff_from_loop']:.1e}", flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / "optimizer_step_cpu.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
