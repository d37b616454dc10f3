"""What every method-family test checks after a few real training steps."""
import math

import torch

import workbench as wb


def distil_three_steps(student, teacher, data, name, hparams=None, **options):
    """Train ``student`` from ``teacher`` with method ``name`` for one epoch of 48 images in batches
    of 16 and check: three steps, finite losses, a finite term of the method in the last row, and a
    teacher that neither changed nor got a gradient. Returns the run."""
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    run = wb.distill(student, teacher, data, methods={name: hparams or {}}, epochs=1, batch_size=16,
                     log_every=1, store=None, progress=False, **options).fit()
    assert run.step == 3 and run.status == "finished"
    assert all(math.isfinite(row["loss"]) for row in run.history)
    assert any(key.startswith(f"{name}.") and math.isfinite(value) for key, value in run.history[-1].items())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    return run
