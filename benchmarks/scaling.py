"""How the workbench's time per epoch grows with batch size, student, teacher and data set size.

One factor at a time around a base run (KD, offline scheme, shapes 32x32), each point the median
of ``--repeats`` workbench runs of two epochs, the second timed (as in ``harness.py``: CPU time of
the process on the CPU, wall-clock time on a GPU). Writes the
numbers as JSON, a markdown table and an SVG figure of four panels (drawn here, no plotting
library needed).

    python benchmarks/scaling.py                                  # CPU-sized base
    python benchmarks/scaling.py --device cuda --out benchmarks/results/gpu_scaling.json --svg docs/scaling_gpu.svg
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402  (puts the repository on sys.path)
import torch  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.models.summary import summary  # noqa: E402

#: base run and the values each sweep takes, per device kind
PRESETS = {
    "cpu": {"base": {"teacher": "resnet20", "student": "resnet8", "batch_size": 64, "n_train": 512},
            "batch_size": [16, 32, 64, 128, 256],
            "student": ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44"],
            "teacher": ["resnet8", "resnet20", "resnet32", "resnet56", "resnet110"],
            "n_train": [256, 512, 1024, 2048]},
    "cuda": {"base": {"teacher": "resnet32x4", "student": "resnet8x4", "batch_size": 128, "n_train": 2560},
             "batch_size": [32, 64, 128, 256, 512],
             "student": ["resnet8", "resnet20", "resnet56", "wrn_16_2", "resnet8x4"],
             "teacher": ["resnet20", "resnet56", "resnet110", "wrn_40_2", "resnet32x4"],
             "n_train": [640, 1280, 2560, 5120]},
}
AXES = {"batch_size": "batch size (log scale)", "student": "student MMACs / image", "teacher": "teacher MMACs / image",
        "n_train": "training images"}


def epoch_seconds(device, data, teacher_name, student_name, batch_size) -> float:
    teacher = harness.build((teacher_name, {}), data, 0)
    student = harness.build((student_name, {}), data, 1)
    watch = harness.Stopwatch(device, 2)
    steps = len(data.train) // batch_size
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": 4}}, epochs=2, batch_size=batch_size,
                     device=str(device), eval_every=2, checkpoint_every=2, store=None, progress=False,
                     callbacks=[harness._WorkbenchWatch(watch, 2 * steps)])
    run.fit()
    return watch.seconds if device.type == "cuda" else watch.cpu_seconds


def macs(name: str) -> float:
    model = wb.models.build(name, num_classes=10, in_channels=3)
    return summary(model, (3, 32, 32)).macs / 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--svg", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    preset = PRESETS["cuda" if device.type == "cuda" else "cpu"]
    base = preset["base"]
    datasets: dict[int, object] = {}

    def data_for(n):
        if n not in datasets:
            datasets[n] = wb.data.load("shapes", size=32, n_train=n, n_test=128, seed=0)
        return datasets[n]

    # one untimed run first: libraries, allocator, cuDNN autotuning
    epoch_seconds(device, data_for(base["n_train"]), base["teacher"], base["student"], base["batch_size"])
    sweeps = {}
    result = {"benchmark": "scaling", "machine": harness.machine(device), "base": base, "repeats": args.repeats,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sweeps": sweeps,
              "note": "seconds of the second epoch of a two-epoch workbench KD run on shapes 32x32: "
                      + ("wall-clock" if device.type == "cuda" else "CPU seconds of the process")}
    out = Path(args.out or harness.ROOT / "benchmarks" / "results" / f"scaling_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    for factor in AXES:
        points = []
        for value in preset[factor]:
            setting = {**base, factor: value}
            times = [epoch_seconds(device, data_for(setting["n_train"]), setting["teacher"], setting["student"],
                                   setting["batch_size"]) for _ in range(args.repeats)]
            x = macs(value) if factor in ("student", "teacher") else value
            points.append({"value": value, "x": x, "seconds_per_epoch": statistics.median(times), "runs": times})
            print(f"{factor}={value}: {statistics.median(times):.3f} s/epoch", flush=True)
        sweeps[factor] = points
        out.write_text(json.dumps(result, indent=2, default=str))  # after each sweep: partial results survive
    print(markdown(result))
    svg = Path(args.svg or harness.ROOT / "docs" / f"scaling_{device.type}.svg")
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(figure(result))
    print(f"-> {out}, {svg}")


def markdown(result: dict) -> str:
    lines = []
    for factor, points in result["sweeps"].items():
        lines.append(f"| {AXES[factor]} | " + " | ".join(
            f"{p['value']}" + (f" ({p['x']:.0f})" if factor in ("student", "teacher") else "") for p in points) + " |")
        lines.append("| --- |" + " ---: |" * len(points))
        lines.append("| s / epoch | " + " | ".join(f"{p['seconds_per_epoch']:.3f}" for p in points) + " |\n")
    return "\n".join(lines)


def figure(result: dict, width: int = 920, height: int = 660) -> str:
    """Four panels (seconds per epoch against each factor), as a standalone SVG."""
    panel_w, panel_h, margin = width // 2, (height - 40) // 2, {"l": 62, "r": 48, "t": 30, "b": 46}
    base = result["base"]
    unit = "seconds" if result["machine"]["device"].startswith("cuda") else "CPU seconds"
    title = (f"KD Workbench: {unit} per epoch ({result['machine'].get('gpu') or result['machine']['processor']}, "
             f"{result['machine']['device']}); base: {base['teacher']} -> {base['student']}, batch {base['batch_size']}, "
             f"{base['n_train']} images")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="13">{_escape(title)}</text>']
    for i, (factor, points) in enumerate(result["sweeps"].items()):
        ox, oy = (i % 2) * panel_w, 36 + (i // 2) * panel_h
        x0, x1 = ox + margin["l"], ox + panel_w - margin["r"]
        y0, y1 = oy + panel_h - margin["b"], oy + margin["t"]
        log = factor == "batch_size"  # powers of two: a log2 axis spaces them evenly
        xs = [math.log2(p["x"]) if log else p["x"] for p in points]
        ys = [p["seconds_per_epoch"] for p in points]
        ymax = max(ys) * 1.1 or 1.0
        xmin, xmax = min(xs), max(xs)
        span = (xmax - xmin) or 1.0
        px = lambda v: x0 + (v - xmin) / span * (x1 - x0)  # noqa: E731
        py = lambda v: y0 - v / ymax * (y0 - y1)  # noqa: E731
        parts.append(f'<text x="{(x0 + x1) / 2}" y="{oy + 18}" text-anchor="middle" font-weight="bold">'
                     f'{_escape(AXES[factor])}</text>')
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>')
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>')
        for k in range(5):
            v = ymax * k / 4
            parts.append(f'<line x1="{x0 - 4}" y1="{py(v):.1f}" x2="{x1}" y2="{py(v):.1f}" stroke="#ddd"/>')
            parts.append(f'<text x="{x0 - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.2g}</text>')
        for k, (p, x) in enumerate(zip(points, xs)):
            label = f"{p['value']}" if factor not in ("student", "teacher") else f"{p['value']} ({p['x']:.0f})"
            parts.append(f'<text x="{px(x):.1f}" y="{y0 + 14 + 11 * (k % 2)}" text-anchor="middle" font-size="9">'
                         f'{_escape(label)}</text>')
        path = " ".join(f"{'M' if k == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for k, (x, y) in enumerate(zip(xs, ys)))
        parts.append(f'<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
        for x, y in zip(xs, ys):
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="#1f77b4"/>')
            parts.append(f'<text x="{px(x) + 4:.1f}" y="{py(y) - 7:.1f}" text-anchor="start" font-size="9">{y:.2f}</text>')
        parts.append(f'<text x="{ox + 14}" y="{(y0 + y1) / 2}" transform="rotate(-90 {ox + 14} {(y0 + y1) / 2})" '
                     'text-anchor="middle">s / epoch</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


if __name__ == "__main__":
    main()
