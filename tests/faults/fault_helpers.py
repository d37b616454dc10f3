"""Helpers of the fault tests (imported by name: pytest puts this folder on sys.path)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def weights(model: torch.nn.Module) -> torch.Tensor:
    """Every floating-point entry of the state dict, flattened (buffers included)."""
    return torch.cat([t.detach().flatten() for t in model.state_dict().values() if t.is_floating_point()])


def child_env(home: Path) -> dict[str, str]:
    """Environment of a child Python process: this repository importable, its own KDWB_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "KDWB_DEBUG"}
    env.update(KDWB_HOME=str(home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


def run_cli_in_parallel(argvs: list[list[str]], home: Path, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """``python -m workbench.cli ARGV`` for each argv, all at once (each one pays the torch import)."""
    procs = [subprocess.Popen([PYTHON, "-m", "workbench.cli", *argv], cwd=ROOT, env=child_env(home),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in argvs]
    results = []
    for argv, proc in zip(argvs, procs):
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return results
