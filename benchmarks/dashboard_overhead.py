"""Dashboard overhead: the same background run with and without a headless `kdviz.Dashboard`.

Same models (same initial weights), data, batches and KD loss; each run trains in its own thread
(``run.start()`` then ``join()``, as in a notebook) on one CPU thread, the process pinned to one
core. A/B runs alternate after a warm-up run, so drift in the machine's speed hits both alike.
Steps per second count the training loop only (``run_start`` to ``run_end``), evaluations
included; the time spent inside the dashboard's hooks on the training thread is measured too. The
goal: the dashboard costs at most 5% of throughput.

    python benchmarks/dashboard_overhead.py                    # digits, cnn(32) -> cnn(8), 3 A/B rounds
    python benchmarks/dashboard_overhead.py --probe-every 100  # also refresh the three probe views
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import kdviz
import workbench as wb
from workbench.engine.events import EVENTS, Callback

BATCH_SIZE, EPOCHS = 64, 29           # digits: 21 steps per epoch -> 609 steps


class Clock(Callback):
    """Times the training loop: from ``run_start`` to ``run_end``."""

    def on_run_start(self, run):
        self.started = time.perf_counter()

    def on_run_end(self, run, status):
        self.seconds = time.perf_counter() - self.started


class Timed(Callback):
    """Forwards every event to ``inner`` and adds up the time spent in it: the dashboard's direct
    cost on the training thread, a number that the machine's speed drift does not blur."""

    def __init__(self, inner: Callback):
        self.inner, self.seconds = inner, 0.0
        for event in EVENTS:
            setattr(self, f"on_{event}", self._timed(getattr(inner, f"on_{event}")))

    def _timed(self, hook):
        def call(*args):
            started = time.perf_counter()
            hook(*args)
            self.seconds += time.perf_counter() - started
        return call


def timed_run(data, teacher, dashboard: bool, probe_every: int | None,
              device: str) -> tuple[float, float, int]:
    """(steps per second, fraction of the loop's time spent in the dashboard, steps)."""
    torch.manual_seed(1)
    student = wb.models.build("cnn", num_classes=data.num_classes, in_channels=data.in_channels, width=8)
    clock = Clock()
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": 4.0, "weight": 0.9}},
                     epochs=EPOCHS, batch_size=BATCH_SIZE, seed=0, device=device, store=None,
                     progress=False)
    timed = None
    if dashboard:
        timed = Timed(kdviz.Dashboard(run, probe_every=probe_every))
        run.callbacks[-1] = timed                # the dashboard added itself last
    run.callbacks.append(clock)                  # after the dashboard: its final flush is timed
    run.start().join()
    share = timed.seconds / clock.seconds if timed else 0.0
    return run.step / clock.seconds, share, run.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds after one warm-up round")
    parser.add_argument("--probe-every", type=int, default=None,
                        help="steps between refreshes of the dashboard's probe views (default: no views)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the process to one CPU core (pinning cuts run-to-run noise)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dashboard_overhead.json"))
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    torch.set_num_threads(args.threads)
    pinned = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        pinned = max(os.sched_getaffinity(0))   # the last core: core 0 serves most interrupts
        os.sched_setaffinity(0, {pinned})
    data = wb.data.load("digits")
    torch.manual_seed(0)
    teacher = wb.models.build("cnn", num_classes=data.num_classes, in_channels=data.in_channels, width=32)
    rates: dict[str, list[float]] = {"without": [], "with": []}
    shares: list[float] = []
    steps = 0
    for round_ in range(args.rounds + 1):
        arms = ("without", "with") if round_ % 2 == 0 else ("with", "without")
        for arm in arms:
            rate, share, steps = timed_run(data, teacher, arm == "with", args.probe_every, args.device)
            if round_ > 0:  # round 0 warms up imports, caches and the first FigureWidget
                rates[arm].append(rate)
                if arm == "with":
                    shares.append(share)
                print(f"round {round_}: {arm:>7} dashboard {rate:7.1f} steps/s"
                      + (f", {100 * share:.2f}% of the loop in the dashboard" if arm == "with" else ""))
    median = {arm: statistics.median(r) for arm, r in rates.items()}
    ratio = median["with"] / median["without"]
    result = {
        "benchmark": "dashboard_overhead", "dataset": "digits", "teacher": "cnn(width=32)",
        "student": "cnn(width=8)", "batch_size": BATCH_SIZE, "steps_per_run": steps,
        "rounds": args.rounds, "threads": args.threads, "device": args.device,
        "probe_every": args.probe_every, "pinned_cpu": pinned,
        "steps_per_s": rates, "median_steps_per_s": median, "ratio_with_to_without": ratio,
        "overhead_percent": 100 * (1 - ratio),
        "dashboard_share_of_loop_percent": [100 * s for s in shares],
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"without dashboard {median['without']:.1f} steps/s, with {median['with']:.1f} steps/s, "
          f"ratio {ratio:.3f} ({100 * (1 - ratio):+.1f}% overhead; median of {args.rounds} alternating "
          f"rounds, {steps} steps each); time in the dashboard's hooks: "
          f"{100 * statistics.mean(shares):.2f}% of the loop -> {out}")


if __name__ == "__main__":
    main()
