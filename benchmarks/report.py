"""Markdown tables from the recorded results (for docs/benchmarks.md).

    python benchmarks/report.py                                   # every results/*.json it knows
    python benchmarks/report.py benchmarks/results/harness_cpu.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_line(m: dict) -> str:
    where = m.get("gpu") or f"{m.get('processor')} CPU, {m.get('cpus')} cores, {m.get('torch_threads')} torch thread(s)"
    load = f", load average at start {m['load_average_at_start']}" if m.get("load_average_at_start") else ""
    return f"{where}; Python {m.get('python')}, torch {m.get('torch')}, torchdistill {m.get('torchdistill')}{load}"


def harness(result: dict) -> str:
    out = [f"Machine: {machine_line(result['machine'])}.", ""]
    for pair, r in result["pairs"].items():
        clock = r.get("clock", "wall")
        out.append(f"**{r['teacher']} → {r['student']}** on {r['dataset']}, batch {r['batch_size']}, "
                   f"{r['steps_timed']} timed steps per run ({r['epochs_per_run']} epochs of {r.get('steps_per_epoch')} "
                   f"steps, the first untimed), median of {r['rounds']} alternating rounds; samples per "
                   f"{'CPU' if clock == 'cpu' else 'wall-clock'} second.")
        out.append("")
        out.append("| variant | samples/s | × hand | best round × hand | wall samples/s | peak MB | memory × hand |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        mem = r.get("memory", {})
        hand_mem = (mem.get("hand") or {}).get("peak_mb")
        for v, rate in r["samples_per_s"].items():
            peak = (mem.get(v) or {}).get("peak_mb")
            out.append(f"| {v} | {rate:,.1f} | {r['ratio_to_hand'].get(v, float('nan')):.3f} | "
                       f"{r.get('best_round_ratio_to_hand', {}).get(v, float('nan')):.3f} | "
                       f"{r.get('samples_per_wall_s', {}).get(v, float('nan')):,.1f} | "
                       + (f"{peak:,.1f} | " if peak is not None else "– | ")
                       + (f"{peak / hand_mem:.2f} |" if peak is not None and hand_mem else "– |"))
        for v, e in r.get("errors", {}).items():
            out.append(f"| {v} | failed: {e} | | | | | |")
        met = r["targets"]["met"]
        out.append("")
        out.append("Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met' if v is False else 'n/a'}"
                                        for k, v in met.items()) + ".")
        out.append("")
    return "\n".join(out)


def profile(r: dict) -> str:
    total = r["phases_sum_ms"]
    out = [f"{r['pair']} (batch {r['batch_size']}, {r['settings']['device']}), median of {r['steps']} steps; "
           f"{machine_line(r['machine'])}.", "", "| phase | ms | share |", "| --- | ---: | ---: |"]
    out += [f"| {p} | {ms:.2f} | {ms / total:.0%} |" for p, ms in r["phases_ms"].items()]
    out.append(f"| **sum (each phase synced)** | {total:.2f} | |")
    lb = r["lower_bound_parts_ms"]
    out += ["", f"Engine step (no per-phase syncs): {r['engine_step_ms']:.2f} ms; hand-written step: "
            f"{r['hand_step_ms']:.2f} ms; lower bound = teacher forward alone {lb['teacher_forward']:.2f} ms + "
            f"student forward+backward alone {lb['student_forward_backward']:.2f} ms = {r['lower_bound_ms']:.2f} ms "
            f"(engine / lower bound {r['engine_over_lower_bound']:.2f}, hand / lower bound {r['hand_over_lower_bound']:.2f})."]
    return "\n".join(out)


def main(paths) -> None:
    paths = [Path(p) for p in paths] or sorted(RESULTS.glob("*.json"))
    for path in paths:
        data = json.loads(path.read_text())
        kind = data.get("benchmark")
        if kind not in ("harness", "profile_step"):
            continue
        print(f"<!-- {path.name} -->")
        print(harness(data) if kind == "harness" else profile(data))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
