"""Speed harness: the workbench against a hand-written loop, its teacher cache, and torchdistill.

For each teacher -> student pair it runs, in one process, alternating the order every round after
a warm-up round:

  hand          the minimal PyTorch loop of ``benchmarks/overhead.py`` (teacher forward under
                no_grad, student forward + backward, KD loss, SGD step), data on the device once;
  workbench     ``wb.distill(...).fit()`` with the same models, data, batches, loss and optimiser;
  cache         the same run with ``scheme_args={"cache": True}`` (the teacher-output cache);
  torchdistill  torchdistill's ``DistillationBox`` (its PyPI package) built by
                ``get_distillation_box`` from a config naming its ``KDLoss`` (alpha = task weight,
                beta = soft weight, T) in a ``WeightedSumLoss``, SGD and a per-step LambdaLR with our
                cosine; our loop feeds it the same in-memory batches and calls its
                ``pre_epoch_process``, ``forward_process`` (teacher forward under no_grad, student
                forward, its loss) and ``post_forward_process`` (backward, optimiser and scheduler
                steps). Its data loaders, logging and evaluation are not used.

Optional variants: ``hand_fused`` (the hand loop with ``SGD(fused=True)``, the workbench's
optimiser), ``workbench_fp32`` (the workbench with its GPU defaults off: no autocast, NCHW) and
``compile`` (the workbench with ``compile=True``); ``--variants`` picks.

Every run is two epochs of ``steps`` batches over the same ``steps * batch`` training images;
the first epoch warms up (and fills the cache), the second is timed (with a device sync at both
ends on a GPU). Samples per second = images in the timed epoch / its seconds, median over rounds.
All variants get the same device settings: on CUDA bf16 autocast and channels_last (the
workbench's defaults, applied by hand to the others), cuDNN autotuning on, data on the device.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over a run minus what was allocated
before it (the shared teacher's weights), max over rounds. On the CPU, one fresh subprocess per
variant: the peak resident set (VmHWM, reset through /proc/self/clear_refs just before the run)
minus the resident set then, i.e. what the run added on top of the loaded data and models. Each
probe first runs one teacher forward and one student forward+backward+SGD step, then the variant
once (its growth is recorded as ``first_run_growth_mb``: it includes one-time set-up such as the
first call of each operator), then the variant ``--memory-runs`` more times (default 5):
``peak_growth_mb`` is the median of those (the lower middle of an even count), the memory the
training itself holds (on the cnn pair a run's growth is about 1.3 MB and moves by ±10% from run
to run: a few heap blocks more or less). MALLOC_MMAP_THRESHOLD_=65536 (tensors of
64 KiB and more are unmapped when freed, so the resident set follows live memory).

    python benchmarks/harness.py                               # the three default pairs, CPU-sized
    python benchmarks/harness.py --pairs resnet --rounds 5     # one pair
    python benchmarks/harness.py --device cuda --batch-size 128 --steps 20 --out benchmarks/results/gpu_harness.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.engine.config import RunConfig  # noqa: E402
from workbench.engine.distributed import resolve_settings  # noqa: E402
from workbench.engine.events import Callback  # noqa: E402
from overhead import LR, SOFT_WEIGHT, TASK_WEIGHT, TEMPERATURE, cosine, hand_loop  # noqa: E402

#: name -> (dataset, loader args, teacher spec, student spec, CPU batch, CPU steps per epoch)
PAIRS = {
    "resnet": ("shapes", {"size": 32}, ("resnet32x4", {}), ("resnet8x4", {}), 32, 4),
    "wrn": ("shapes", {"size": 32}, ("wrn_40_2", {}), ("wrn_16_2", {}), 32, 4),
    "cnn": ("digits", {}, ("cnn", {"width": 32}), ("mlp", {"image_size": 8}), 64, 20),
}
VARIANTS = ("hand", "workbench", "cache", "torchdistill")
EPOCHS = 2  # per run by default: the first warms up (and fills the cache), the others are timed
EPOCHS_BY_PAIR = {"cnn": 6}  # digits' 1,347 images make short epochs: time five of them


# -- set-up ------------------------------------------------------------------------------------
def load_data(pair: str, batch_size: int, steps: int):
    dataset, args, *_ = PAIRS[pair]
    if dataset == "digits":
        full = len(wb.data.load("digits").train)
        steps = min(steps, full // batch_size)
        return wb.data.load("digits", n_train=steps * batch_size), steps
    return wb.data.load(dataset, n_train=steps * batch_size, n_test=256, seed=0, **args), steps


def build(spec, data, seed):
    torch.manual_seed(seed)
    return wb.models.build(spec[0], num_classes=data.num_classes, in_channels=data.in_channels, **spec[1])


def settings_for(device: torch.device, data, epochs: int = EPOCHS):
    """What the workbench does on this device by default; the harness applies it to every variant."""
    s = resolve_settings(RunConfig(), device, tuple(data.input_shape))
    return {"amp": s.amp, "channels_last": s.channels_last, "epochs": epochs}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Times the epochs after the first: from the end of epoch 1 to the end of the last step."""

    def __init__(self, device, epochs: int):
        self.device, self.epochs, self.start, self.end = device, epochs, None, None
        # on CUDA, the peak allocated bytes up to the end of epoch 1 and over the timed epochs
        self.setup_peak = self.timed_peak = None

    def epoch_end(self, epoch: int) -> None:
        if epoch not in (1, self.epochs):
            return
        sync(self.device)
        now = (time.perf_counter(), time.process_time())
        if epoch == 1:
            self.start = now
            if self.device.type == "cuda":
                self.setup_peak = torch.cuda.max_memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
        elif self.end is None:
            self.end = now
            if self.device.type == "cuda":
                self.timed_peak = torch.cuda.max_memory_allocated(self.device)

    @property
    def seconds(self) -> float:
        """Wall-clock seconds."""
        return self.end[0] - self.start[0]

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of this process: what the work cost, whatever else shares the cores."""
        return self.end[1] - self.start[1]


class _WorkbenchWatch(Callback):
    def __init__(self, watch: Stopwatch, last_step: int):
        self.watch, self.last_step = watch, last_step

    def on_step_end(self, run, metrics):
        if run.step == self.last_step:  # before the last epoch's evaluation
            self.watch.epoch_end(self.watch.epochs)

    def on_epoch_end(self, run, epoch):
        self.watch.epoch_end(epoch)


# -- the variants ------------------------------------------------------------------------------
def run_hand(student, teacher, data, batch_size, steps, device, opts, watch, fused=False):
    hand_loop(student, teacher, data, batch_size, opts["epochs"], seed=0, device=device, amp=opts["amp"],
              channels_last=opts["channels_last"], on_epoch_end=watch.epoch_end, fused=fused)
    return {}


def run_hand_fused(*args):
    """The hand loop with ``SGD(fused=True)``, the workbench's optimiser: what is left between it
    and ``workbench`` is the engine's own cost."""
    return run_hand(*args, fused=True)


def run_workbench(student, teacher, data, batch_size, steps, device, opts, watch, cache=False, **options):
    epochs = opts["epochs"]
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": TEMPERATURE, "weight": SOFT_WEIGHT}},
                     scheme="offline", scheme_args={"cache": True} if cache else None, **options,
                     task_weight=TASK_WEIGHT, lr=LR, epochs=epochs, batch_size=batch_size, seed=0,
                     device=str(device), eval_every=epochs, checkpoint_every=epochs, store=None,
                     progress=False, callbacks=[_WorkbenchWatch(watch, epochs * steps)])
    run.fit()
    info = {"settings": run.settings.as_dict()}
    if cache:
        c = run.scheme.cache
        info.update(cache_served=c.served, cache_teacher_forwards=c.teacher_forwards, cache_reason=c.reason)
        if c.reason is not None or c.served < steps:
            raise RuntimeError(f"the teacher cache did not serve the timed epoch: {info}")
    return info


def run_cache(*args):
    return run_workbench(*args, cache=True)


def run_workbench_fp32(*args):
    """The workbench with its GPU defaults off (no autocast, NCHW): what the defaults buy."""
    return run_workbench(*args, amp=False, channels_last=False)


def run_compile(*args):
    """The workbench with ``compile=True`` (teacher and student through torch.compile)."""
    return run_workbench(*args, compile=True)


def torchdistill_box(student, teacher, device, epochs: int, steps: int):
    """torchdistill's ``DistillationBox`` for this KD configuration (its KDLoss in a WeightedSumLoss,
    SGD, a per-step LambdaLR with our cosine over ``epochs * steps`` steps)."""
    from torchdistill.core.distillation import get_distillation_box
    total = epochs * steps
    kd = {"student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
          "teacher_module_io": "output", "temperature": TEMPERATURE, "alpha": TASK_WEIGHT,
          "beta": SOFT_WEIGHT, "reduction": "batchmean"}
    config = {
        "num_epochs": epochs,
        "teacher": {"requires_grad": False, "forward_proc": "forward_batch_only"},
        "student": {"forward_proc": "forward_batch_only"},
        "criterion": {"key": "WeightedSumLoss",
                      "kwargs": {"sub_terms": {"kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}}},
        "optimizer": {"key": "SGD", "kwargs": {"lr": LR, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}},
        "scheduler": {"key": "LambdaLR", "scheduling_step": 1,
                      "kwargs": {"lr_lambda": cosine(total)}},
    }
    return get_distillation_box(teacher, student, {}, config, device, None, False, 1)


def run_torchdistill(student, teacher, data, batch_size, steps, device, opts, watch):
    layout = torch.channels_last if opts["channels_last"] else torch.preserve_format
    teacher.to(device=device, memory_format=layout).eval()
    student.to(device=device, memory_format=layout)
    epochs = opts["epochs"]
    box = torchdistill_box(student, teacher, device, epochs, steps)
    inputs, labels = data.train.x.to(device), data.train.y.to(device)
    if opts["channels_last"]:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(epoch)).to(device)
        for start in range(0, steps * batch_size, batch_size):
            index = order[start:start + batch_size]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=opts["amp"]):
                loss = box.forward_process(inputs[index], labels[index], None)
            box.post_forward_process(loss)
        box.post_epoch_process()
        watch.epoch_end(epoch + 1)
    return {}


RUNNERS = {"hand": run_hand, "hand_fused": run_hand_fused, "workbench": run_workbench, "cache": run_cache, "torchdistill": run_torchdistill,
           "workbench_fp32": run_workbench_fp32, "compile": run_compile}


def time_variant(name, teacher, data, pair, batch_size, steps, device, opts):
    """One run of ``name``: ((wall, cpu) seconds of the timed epochs, peak device bytes or None, info)."""
    student = build(PAIRS[pair][3], data, 1)
    watch = Stopwatch(device, opts["epochs"])
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    info = RUNNERS[name](student, teacher, data, batch_size, steps, device, opts, watch)
    if device.type == "cuda":  # the whole run; where the peak was: set-up + epoch 1, timed epochs, end
        end = torch.cuda.max_memory_allocated(device)
        peak = max(watch.setup_peak, end) - before
        info = {**info, "peak_mb_by_phase": {"setup_and_first_epoch": (watch.setup_peak - before) / 2 ** 20,
                                             "timed_epochs": (watch.timed_peak - before) / 2 ** 20,
                                             "timed_epochs_and_end": (end - before) / 2 ** 20}}
    del student
    return (watch.seconds, watch.cpu_seconds), peak, info


# -- CPU memory: one fresh process per variant ----------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def probe(args) -> None:
    """Run one variant once in this (fresh) process; print its peak resident-set growth as JSON."""
    torch.set_num_threads(args.threads)
    data, steps = load_data(args.pair, args.batch_size, args.steps)
    device = torch.device("cpu")
    teacher = build(PAIRS[args.pair][2], data, 0)
    opts = settings_for(device, data, args.epochs_for(args.pair))
    # the same warm-up for every variant, so that one-time library set-up (an optimiser's first
    # step alone imports ~150 MB of torch modules) is not counted: one teacher forward and one
    # forward + backward + SGD step of a throwaway student
    spare = build(PAIRS[args.pair][3], data, 1)
    with torch.no_grad():
        teacher(data.train.x[:args.batch_size])
    F.cross_entropy(spare(data.train.x[:args.batch_size]), data.train.y[:args.batch_size]).backward()
    optimizer = torch.optim.SGD(spare.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    optimizer.step()
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0).step()
    del spare, optimizer
    method = "VmHWM after reset"

    def measured_run() -> tuple[float, float, float]:
        """(resident set before, peak during, seconds) of one run of the variant."""
        nonlocal method
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current
        except OSError:
            method = "ru_maxrss (not resettable: a lower bound of the growth)"
        base = _status_kb("VmRSS")
        (seconds, _), _, _ = time_variant(args.probe, teacher, data, args.pair, args.batch_size, steps,
                                          device, opts)
        peak = _status_kb("VmHWM") if method.startswith("VmHWM") else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return base, peak, seconds

    # the first run of a variant also pays for one-time set-up of the code paths it uses (the
    # first call of each operator, lazily imported modules): recorded, but the target compares
    # the second run, whose growth is the memory that training itself holds
    # the growth of a small run is a few heap blocks more or less: the median of several runs
    first_base, first_peak, _ = measured_run()
    runs = [measured_run() for _ in range(args.memory_runs)]
    growths = [(peak - base) / 1024 for base, peak, _ in runs]
    middle = statistics.median_low(growths)  # a measured run's (an even count: the lower middle)
    base, peak, seconds = runs[growths.index(middle)]
    print(json.dumps({"variant": args.probe, "rss_before_mb": base / 1024, "rss_peak_mb": peak / 1024,
                      "peak_growth_mb": middle, "growths_mb": growths,
                      "first_run_growth_mb": (first_peak - first_base) / 1024,
                      "method": method, "seconds": seconds}))


def cpu_memory(args, pair: str, variants) -> dict:
    out = {}
    for name in variants:
        command = [sys.executable, __file__, "--probe", name, "--pairs", pair, "--pair", pair,
                   "--batch-size", str(args.batch_size_for(pair)), "--steps", str(args.steps_for(pair)),
                   "--threads", str(args.threads), "--epochs", str(args.epochs_for(pair)),
                   "--memory-runs", str(args.memory_runs)]
        # blocks of 64 KiB and more are mmapped and unmapped on free, so the resident set follows
        # the live tensors instead of what the heap keeps for reuse
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
        if done.returncode != 0:
            out[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
            continue
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# -- the benchmark -----------------------------------------------------------------------------
def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        import torchdistill
        info["torchdistill"] = torchdistill.__version__
    except ImportError:
        info["torchdistill"] = None
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def memory_only(args, pair: str, earlier: dict) -> dict:
    """Measure the CPU memory of an earlier result's variants again; keep its timings."""
    result = dict(earlier)
    result["memory"] = cpu_memory(args, pair, list(earlier["samples_per_s"]))
    for m in result["memory"].values():
        if "peak_growth_mb" in m:
            m["peak_mb"] = m["peak_growth_mb"]
    result["targets"] = targets(result)
    return result


def bench_pair(args, pair: str, device: torch.device) -> dict:
    batch_size, steps = args.batch_size_for(pair), args.steps_for(pair)
    data, steps = load_data(pair, batch_size, steps)
    teacher = build(PAIRS[pair][2], data, 0)
    opts = settings_for(device, data, args.epochs_for(pair))
    variants = [v for v in args.variants if v != "torchdistill" or _has_torchdistill()]
    seconds = {v: [] for v in variants}
    cpu_seconds = {v: [] for v in variants}
    peaks = {v: [] for v in variants}
    infos = {}
    errors = {}
    for round_ in range(args.warmup_rounds + args.rounds):
        order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]  # rotate
        for name in order:
            if name in errors:
                continue
            try:
                secs, peak, info = time_variant(name, teacher, data, pair, batch_size, steps, device, opts)
            except Exception as error:  # noqa: BLE001 - reported, the others go on
                errors[name] = f"{type(error).__name__}: {error}"
                print(f"  {pair}/{name}: {errors[name]}", flush=True)
                continue
            infos[name] = info
            if round_ >= args.warmup_rounds:
                seconds[name].append(secs[0])
                cpu_seconds[name].append(secs[1])
                if peak is not None:
                    peaks[name].append(peak)
        print(f"  {pair} round {round_}{' (warm-up)' if round_ < args.warmup_rounds else ''}: "
              + ", ".join(f"{n} {seconds[n][-1]:.3f}s (cpu {cpu_seconds[n][-1]:.3f}s)" for n in order if seconds.get(n) and round_ >= args.warmup_rounds),
              flush=True)
    samples = steps * batch_size * (opts["epochs"] - 1)
    clock = args.clock if args.clock != "auto" else ("wall" if device.type == "cuda" else "cpu")
    timed = cpu_seconds if clock == "cpu" else seconds
    rate = {v: samples / statistics.median(t) for v, t in timed.items() if t}
    wall_rate = {v: samples / statistics.median(t) for v, t in seconds.items() if t}
    best_rate = {v: samples / min(t) for v, t in timed.items() if t}  # the least disturbed round
    memory: dict = {}
    if device.type == "cuda":
        memory = {v: {"peak_mb": max(p) / 2 ** 20, "method": "torch.cuda.max_memory_allocated minus allocated before"}
                  for v, p in peaks.items() if p}
    elif not args.no_memory:
        memory = cpu_memory(args, pair, [v for v in variants if v not in errors])
        for v, m in memory.items():
            if "peak_growth_mb" in m:
                m["peak_mb"] = m["peak_growth_mb"]
    result = {
        "pair": pair, "dataset": PAIRS[pair][0], "teacher": PAIRS[pair][2][0], "student": PAIRS[pair][3][0],
        "batch_size": batch_size, "steps_per_epoch": steps, "epochs_per_run": opts["epochs"],
        "steps_timed": steps * (opts["epochs"] - 1), "samples_timed": samples,
        "rounds": args.rounds, "warmup_rounds": args.warmup_rounds, "settings": opts,
        "clock": clock, "seconds": seconds, "cpu_seconds": cpu_seconds, "samples_per_s": rate,
        "samples_per_wall_s": wall_rate, "samples_per_s_best_round": best_rate,
        "best_round_ratio_to_hand": {v: r / best_rate["hand"] for v, r in best_rate.items()} if "hand" in best_rate else {},
        "ratio_to_hand": {v: r / rate["hand"] for v, r in rate.items()} if "hand" in rate else {},
        "memory": memory, "info": infos, "errors": errors,
    }
    result["targets"] = targets(result)
    return result


def _has_torchdistill() -> bool:
    try:
        import torchdistill  # noqa: F401
        return True
    except ImportError:
        return False


def targets(r: dict) -> dict:
    """The issue's targets, each True/False, or None when a variant is missing."""
    rate, mem = r["samples_per_s"], r["memory"]
    ratio = lambda a, b: rate[a] / rate[b] if a in rate and b in rate else None  # noqa: E731
    peak = lambda v: (mem.get(v) or {}).get("peak_mb")  # noqa: E731
    out = {"workbench_vs_hand": ratio("workbench", "hand"), "cache_vs_hand": ratio("cache", "hand"),
           "workbench_vs_torchdistill": ratio("workbench", "torchdistill"),
           "cache_vs_torchdistill": ratio("cache", "torchdistill"),
           "memory_workbench_vs_hand": peak("workbench") / peak("hand") if peak("workbench") and peak("hand") else None}
    check = lambda value, bound: None if value is None else value >= bound  # noqa: E731
    out["met"] = {"within_5pct_of_hand": check(out["workbench_vs_hand"], 0.95),
                  "cache_1.5x_hand": check(out["cache_vs_hand"], 1.5) if r["pair"] == "resnet" else None,
                  "not_slower_than_torchdistill": check(out["workbench_vs_torchdistill"], 1.0),
                  "cache_1.5x_torchdistill": check(out["cache_vs_torchdistill"], 1.5),
                  "memory_within_10pct": None if out["memory_workbench_vs_hand"] is None
                  else out["memory_workbench_vs_hand"] <= 1.10}
    return out


def report(result: dict) -> str:
    lines = [f"{result['pair']}: {result['teacher']} -> {result['student']} on {result['dataset']}, "
             f"batch {result['batch_size']}, {result['steps_timed']} timed steps, median of {result['rounds']} rounds, "
             f"samples per {result['clock']} second"]
    lines.append(f"  {'variant':13s} {'samples/s':>10s} {'x hand':>7s} {'peak MB':>9s} {'x hand':>7s}")
    hand_mem = (result["memory"].get("hand") or {}).get("peak_mb")
    for v, rate in result["samples_per_s"].items():
        mem = (result["memory"].get(v) or {}).get("peak_mb")
        lines.append(f"  {v:13s} {rate:10.1f} {result['ratio_to_hand'].get(v, float('nan')):7.3f} "
                     f"{mem if mem is not None else float('nan'):9.1f} "
                     f"{mem / hand_mem if mem and hand_mem else float('nan'):7.3f}")
    for name, error in result["errors"].items():
        lines.append(f"  {name}: FAILED {error}")
    lines.append("  targets: " + ", ".join(f"{k}={v}" for k, v in result["targets"]["met"].items()))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="resnet,wrn,cnn", help="comma-separated: " + ", ".join(PAIRS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: per pair (CPU-sized)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps = steps per epoch")
    parser.add_argument("--epochs", type=int, default=None, help="per run, >= 2; all but the first are timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="what samples/s divides by; auto: this process's CPU time on the CPU (robust "
                             "on a shared machine), wall-clock time (with device syncs) on a GPU")
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU memory subprocesses")
    parser.add_argument("--memory-runs", type=int, default=5,
                        help="CPU: measured runs per variant after the first (their median is reported)")
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/harness_<device>.json)")
    parser.add_argument("--merge", action="store_true", help="keep the other pairs already in --out")
    parser.add_argument("--memory-only", action="store_true",
                        help="CPU: measure memory again for pairs already in --out (implies --merge)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--pair", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if args.memory_runs < 1:
        parser.error(f"--memory-runs must be at least 1, got {args.memory_runs}")
    args.batch_size_for = lambda p: args.batch_size or PAIRS[p][4]
    args.steps_for = lambda p: args.steps or PAIRS[p][5]
    args.epochs_for = lambda p: args.epochs or EPOCHS_BY_PAIR.get(p, EPOCHS)
    if args.probe:
        args.batch_size, args.steps = args.batch_size_for(args.pair), args.steps_for(args.pair)
        return probe(args)
    torch.set_num_threads(args.threads)
    device = wb.engine.pick_device(args.device) if args.device == "auto" else torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = {"benchmark": "harness", "machine": machine(device), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "pairs": {}}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"harness_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if (args.merge or args.memory_only) and out.exists():  # add or replace pairs in an earlier result file
        earlier = json.loads(out.read_text())
        results["pairs"] = earlier.get("pairs", {})
        results["earlier_machines"] = earlier.get("earlier_machines", []) + [earlier.get("machine")]
    for pair in [p for p in args.pairs.split(",") if p]:
        print(f"{pair}: running {', '.join(args.variants)} on {device}", flush=True)
        if args.memory_only:
            results["pairs"][pair] = memory_only(args, pair, results["pairs"][pair])
        else:
            results["pairs"][pair] = bench_pair(args, pair, device)
        print(report(results["pairs"][pair]), flush=True)
        out.write_text(json.dumps(results, indent=2, default=str))  # after each pair: partial results survive
    print(f"-> {out}")


if __name__ == "__main__":
    main()
