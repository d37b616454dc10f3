"""``python -m workbench``: the ``kdwb`` command, also under ``torchrun``.

    python -m workbench distill --config run.yaml
    torchrun --nproc_per_node=4 -m workbench distill --config run.yaml     # DDP, one process per GPU

Under ``torchrun`` every rank runs the same command; the engine joins the process group on its
first run (see :mod:`workbench.engine.distributed`). Only rank 0 prints results and writes the run
store; the other ranks' standard output is silenced (their errors still reach standard error).
"""
import os
import sys

from .cli import main

if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) > 0:
        sys.stdout = open(os.devnull, "w")
    status = main()
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(status)
