"""Registry-wide checks: every registered method, with no per-method edits here.

A new method file is picked up automatically: it must train on two zoo pairs (one with mismatched
feature widths), keep the teacher frozen, reject bad hyper-parameters and unknown taps, and appear
in docs/methods.md.
"""
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.methods_table import methods_table
from workbench.registry import METHODS
from workbench.taps import TapError

ROOT = Path(__file__).resolve().parents[1]
NAMES = METHODS.names()
# methods whose metadata declares `needs` (attention taps, a distillation token) cannot run on the
# CNN pairs below; their own family's tests train them on models that have what they need
CNN_NAMES = [name for name in NAMES if not METHODS.get(name).meta.get("needs")]
PAIRS = {"same-width": ("resnet8", "resnet14"), "mismatched-width": ("wrn_16_1", "resnet8x4")}


@pytest.fixture(scope="module")
def shapes():
    return wb.data.load("shapes", n_train=32, n_test=16)


@pytest.fixture(scope="module")
def teachers(shapes):
    torch.manual_seed(0)
    return {name: wb.models.build(name, num_classes=10, in_channels=3) for _, name in PAIRS.values()}


def test_the_registry_has_the_survey_sources_chapter():
    categories = {e.meta["category"] for e in METHODS}
    assert {"logit", "feature", "similarity"} <= categories
    assert len(CNN_NAMES) >= len(NAMES) - 2, "only attention-only methods may skip the CNN pairs"
    for entry in METHODS:
        for key in ("category", "paper", "venue", "year", "link", "notebook"):
            assert entry.meta.get(key), f"{entry.name} lacks {key}"


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("name", CNN_NAMES)
def test_every_method_trains_a_few_steps_with_a_frozen_teacher(name, pair, shapes, teachers):
    student_name, teacher_name = PAIRS[pair]
    teacher = teachers[teacher_name]
    torch.manual_seed(1)
    student = wb.models.build(student_name, num_classes=10, in_channels=3)
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    student_before = [p.detach().clone() for p in student.parameters()]
    run = wb.distill(student, teacher, shapes, methods={name: {}}, epochs=1, batch_size=16,
                     log_every=1, store=None, progress=False).fit()
    assert run.step == 2 and run.status == "finished"
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in run.history)
    assert any(key.startswith(f"{name}.") for key in run.history[-1]), run.history[-1]
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_every_method_rejects_a_weight_that_is_not_finite(name):
    with pytest.raises(ValueError, match="weight=nan"):
        wb.methods.build_method(name, weight=float("nan"))
    defaults = METHODS.get(name).factory.defaults()
    if "temperature" in defaults:
        with pytest.raises(ValueError, match="temperature=-1"):
            wb.methods.build_method(name, temperature=-1)


@pytest.mark.parametrize("name", [n for n in NAMES if wb.methods.build_method(n).student_taps])
def test_every_tapping_method_names_an_unknown_tap(name, shapes, teachers):
    method = wb.methods.build_method(name)
    method.student_taps = ("no_such_layer",)
    student = wb.models.build("resnet8", num_classes=10, in_channels=3)
    with pytest.raises(TapError, match="no tap 'no_such_layer'"):
        wb.distill(student, teachers["resnet14"], shapes, methods={name: method}, batch_size=16, store=None)


def test_methods_table_is_current():
    assert (ROOT / "docs" / "methods.md").read_text() == methods_table(), \
        "docs/methods.md is stale: run `kdwb methods-table`"
    for name in NAMES:
        assert f"| `{name}` |" in methods_table()


def test_methods_table_lists_every_scheme_with_its_arguments():
    from workbench.registry import SCHEMES
    table = methods_table()
    for entry in SCHEMES:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{entry.name}` |"))
        assert f"| {entry.meta['category']} |" in row
    assert "epsilon=0.03137254901960784" in table  # ARD's budget, 8/255, from its signature
