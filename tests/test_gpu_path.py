"""The GPU path's settings and their numbers, checked on the CPU (no test needs a GPU).

On CUDA a run uses bf16 autocast, channels_last, cuDNN's autotuner and the training split moved
to the device once (or pinned, non-blocking batches when it does not fit); ``torch.compile`` is
opt-in. Here: the settings resolve as documented for cpu and cuda, and channels_last, compile and
device-resident batching give the same losses as the plain path.
"""
import pytest
import torch

import workbench as wb
from workbench.engine import distributed
from workbench.engine.config import RunConfig
from workbench.engine.distributed import resolve_settings

GiB = 2 ** 30


def test_settings_on_cpu_are_all_off():
    s = resolve_settings(RunConfig(), "cpu", (3, 32, 32), split_bytes=10, free_bytes=None)
    assert (s.amp, s.channels_last, s.compile, s.data_on_device, s.pin_memory, s.cudnn_benchmark) == \
        (False, False, False, False, False, False)


def test_settings_on_cuda_turn_the_gpu_path_on():
    s = resolve_settings(RunConfig(), torch.device("cuda"), (3, 32, 32), split_bytes=GiB, free_bytes=40 * GiB)
    assert s.amp and s.channels_last and s.cudnn_benchmark and s.data_on_device and not s.pin_memory
    assert s.compile is False  # opt-in


def test_a_split_too_big_for_the_gpu_is_pinned_and_copied_per_batch():
    s = resolve_settings(RunConfig(), "cuda", (3, 32, 32), split_bytes=20 * GiB, free_bytes=40 * GiB)
    assert not s.data_on_device and s.pin_memory


def test_explicit_choices_win_over_auto():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not resolve_settings(RunConfig(channels_last=False, amp=False), cuda, (3, 8, 8), 1, GiB).channels_last
    assert not resolve_settings(RunConfig(amp=False), cuda, (3, 8, 8), 1, GiB).amp
    assert resolve_settings(RunConfig(channels_last=True), cpu, (3, 8, 8)).channels_last
    assert not resolve_settings(RunConfig(channels_last=True), cpu, (64,)).channels_last  # not an image
    assert resolve_settings(RunConfig(compile="aot_eager"), cpu).compile == "aot_eager"


def test_config_checks_the_new_fields_and_keeps_hashes():
    with pytest.raises(ValueError, match="channels_last"):
        RunConfig(channels_last="yes")
    with pytest.raises(ValueError, match="compile"):
        RunConfig(compile="")
    with pytest.raises(ValueError, match="compile"):
        RunConfig(compile=1.5)
    base = RunConfig().hash()
    assert RunConfig(channels_last=True, compile=True).hash() == base  # speed settings, same numbers


@pytest.fixture(scope="module")
def shapes():
    return wb.data.load("shapes", size=16, n_train=96, n_test=32, seed=0)


def _run(data, teacher_name="resnet8", student_name="resnet8", epochs=1, **options):
    torch.manual_seed(0)
    teacher = wb.models.build(teacher_name, num_classes=data.num_classes, in_channels=data.in_channels)
    torch.manual_seed(1)
    kwargs = {"image_size": data.input_shape[1]} if student_name == "mlp" else {}
    student = wb.models.build(student_name, num_classes=data.num_classes, in_channels=data.in_channels, **kwargs)
    options.setdefault("device", "cpu")  # these tests are about the CPU, also on a machine with a GPU
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": 4}}, epochs=epochs,
                     batch_size=32, log_every=1, store=None, progress=False, **options)
    run.fit()
    return run, student


def _losses(run):
    return torch.tensor([row["loss"] for row in run.history])


def test_channels_last_on_cpu_gives_the_same_losses(shapes):
    plain, plain_student = _run(shapes)
    nhwc, nhwc_student = _run(shapes, channels_last=True)
    assert nhwc.settings.channels_last and not plain.settings.channels_last
    conv = next(m for m in nhwc_student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_losses(nhwc), _losses(plain), rtol=1e-4, atol=1e-5)
    for a, b in zip(plain_student.parameters(), nhwc_student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_device_resident_batches_equal_the_split_batches(shapes, monkeypatch):
    """The GPU's whole-split-on-device path, forced on the CPU: same batches, same losses."""
    plain, _ = _run(shapes)
    real = distributed.resolve_settings

    def on_device(*args, **kwargs):
        settings = real(*args, **kwargs)
        settings.data_on_device = True
        return settings

    monkeypatch.setattr(distributed, "resolve_settings", on_device)
    resident, _ = _run(shapes)
    assert resident.settings.data_on_device
    torch.testing.assert_close(_losses(resident), _losses(plain), rtol=0, atol=0)
    # the permutation and the shards are those of Split.batches
    generator = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    ours = [b.index for b in distributed.batches(resident, shapes.train, generator())]
    theirs = [b.index for b in shapes.train.batches(32, shuffle=True, generator=generator(), drop_last=True)]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs)) and len(ours) == len(theirs)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param(True, marks=pytest.mark.slow)])
def test_compile_on_cpu_gives_the_same_losses(backend):
    """``compile="aot_eager"`` checks the wiring fast (dynamo traces the models with their taps);
    ``compile=True`` is inductor, C++ code generated on the CPU (tens of seconds)."""
    digits = wb.data.load("digits", n_train=128)
    plain, plain_student = _run(digits, "cnn", "mlp", epochs=1)
    compiled, compiled_student = _run(digits, "cnn", "mlp", epochs=1, compile=backend)
    torch.testing.assert_close(_losses(compiled), _losses(plain), rtol=1e-4, atol=1e-5)
    for a, b in zip(plain_student.parameters(), compiled_student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert compiled_student._compiled_call_impl is None  # the caller's model is given back plain


def test_device_resident_extras_are_copied_and_gathered_only_when_read(shapes):
    """A device copy of the split carries its extras lazily: KD never reads ``shapes``' masks,
    boxes and segmentation maps, so none is copied; a batch's ``extras`` gathers a key on read."""
    settings = resolve_settings(RunConfig(), "cpu", (3, 16, 16))
    on_device = distributed._to_device(shapes.train, settings)
    assert set(on_device.extras) == {"mask", "box", "segmentation"} and on_device.extras._copies == {}
    rows = torch.tensor([3, 1, 4])
    batch = distributed.Batch(on_device.x[rows], on_device.y[rows], rows,
                              distributed._BatchExtras(on_device.extras, rows))
    assert "mask" in batch.extras and len(batch.extras) == 3 and on_device.extras._copies == {}
    assert torch.equal(batch.extras["mask"], shapes.train.extras["mask"][rows])
    assert set(on_device.extras._copies) == {"mask"}
    assert batch.extras.get("nothing") is None and "nothing" not in batch.extras
    batch.extras["augmentation_seed"] = torch.zeros(3, dtype=torch.long)
    assert set(batch.extras) == {"mask", "box", "segmentation", "augmentation_seed"}
    assert torch.equal(dict(batch.extras)["box"], shapes.train.extras["box"][rows])
    del batch.extras["box"]
    with pytest.raises(KeyError):
        batch.extras["box"]
