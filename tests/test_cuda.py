"""The GPU path on a real GPU: skipped where CUDA is absent (CI), run by ``benchmarks/gpu.sh``.

What the CPU tests of ``test_gpu_path.py`` cannot show: that a CUDA run in float32 computes what the
CPU computes, that the defaults (bf16 autocast, channels_last, data on the device) train to nearly
the same losses, that the pinned per-batch copies equal the device-resident batches, that a training
step never waits for the device, that the teacher cache and ``torch.compile`` keep the numbers, and
that an interrupted CUDA run resumes to the weights of an uninterrupted one.
"""
import pytest
import torch

import workbench as wb
from workbench.engine import distributed
from workbench.store import RunStore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FP32 = dict(amp=False, channels_last=False)


@pytest.fixture(autouse=True)
def exact_float32(monkeypatch):
    """TF32 off (cuDNN uses it for float32 convolutions by default), so float32 means float32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.fixture(scope="module")
def shapes():
    return wb.data.load("shapes", size=16, n_train=128, n_test=32, seed=0)


def _models(data, teacher="resnet8", student="resnet8"):
    torch.manual_seed(0)
    t = wb.models.build(teacher, num_classes=data.num_classes, in_channels=data.in_channels)
    torch.manual_seed(1)
    s = wb.models.build(student, num_classes=data.num_classes, in_channels=data.in_channels)
    return s, t


def _run(data, device="cuda", epochs=2, store=None, scheme_args=None, **options):
    student, teacher = _models(data)
    options.setdefault("log_every", 1)
    return wb.distill(student, teacher, data, methods={"kd": {"temperature": 4}}, epochs=epochs, batch_size=32,
                      seed=3, device=device, store=store, progress=False, scheme_args=scheme_args,
                      **options)


def _losses(run):
    return torch.tensor([row["loss"] for row in run.history])


def _weights(model):
    return torch.cat([p.detach().float().cpu().flatten() for p in model.state_dict().values()])


def test_float32_on_cuda_computes_what_the_cpu_computes(shapes):
    cpu = _run(shapes, device="cpu").fit()
    gpu = _run(shapes, **FP32).fit()
    assert not gpu.settings.amp and gpu.settings.data_on_device
    torch.testing.assert_close(_losses(gpu), _losses(cpu), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_weights(gpu.student), _weights(cpu.student), rtol=1e-3, atol=1e-4)


def test_the_gpu_defaults_train_to_nearly_the_float32_losses(shapes):
    fp32 = _run(shapes, **FP32).fit()
    fast = _run(shapes).fit()
    s = fast.settings
    assert s.amp and s.channels_last and s.cudnn_benchmark and s.data_on_device
    conv = next(m for m in fast.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(_losses(fast)).all()
    # bf16 keeps 8 bits of mantissa: the first step's loss agrees to about 1%, later ones drift
    torch.testing.assert_close(_losses(fast)[0], _losses(fp32)[0], rtol=2e-2, atol=0)
    torch.testing.assert_close(_losses(fast), _losses(fp32), rtol=0.1, atol=0.05)


def test_pinned_per_batch_copies_equal_the_device_resident_batches(shapes, monkeypatch):
    resident = _run(shapes, **FP32).fit()
    real = distributed.resolve_settings

    def too_big(*args, **kwargs):  # what a split larger than the GPU's free memory gets
        settings = real(*args, **kwargs)
        settings.data_on_device, settings.pin_memory = False, True
        return settings

    monkeypatch.setattr(distributed, "resolve_settings", too_big)
    pinned = _run(shapes, **FP32).fit()
    assert pinned.settings.pin_memory and not pinned.settings.data_on_device
    torch.testing.assert_close(_losses(pinned), _losses(resident), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme_args", [None, {"cache": True}], ids=["plain", "cache"])
def test_a_training_step_never_waits_for_the_gpu(shapes, scheme_args):
    """No host read in a step. With the cache: from the second epoch on (the first fills it),
    except each epoch's first step, where the cache checks the teacher's weights (one read)."""
    run = _run(shapes, epochs=3, scheme_args=scheme_args, log_every=1000, grad_clip=1.0)
    original = run._train_step
    strict_steps = []

    def strict_step(batch):
        first_of_epoch = run.step % run.steps_per_epoch == 0
        strict = not scheme_args or (run.epoch >= 1 and not first_of_epoch)
        strict_steps.append(strict)
        torch.cuda.set_sync_debug_mode("error" if strict else "default")
        try:
            return original(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    run._train_step = strict_step
    run.fit()
    assert run.status == "finished" and sum(strict_steps) >= 6
    if scheme_args:
        assert run.scheme.cache.served == 8 and run.scheme.cache.reason is None


def test_the_teacher_cache_keeps_the_float32_numbers(shapes):
    """Not bit for bit as on the CPU: cuDNN's convolution backward sums with atomics, so two
    plain runs of a ResNet already differ in the last digits (one of twelve losses by 2.1e-5
    relative in the third epoch, on an H200); serving wrong rows would move them by far more."""
    plain = _run(shapes, epochs=3, **FP32).fit()
    cached = _run(shapes, epochs=3, scheme_args={"cache": True}, **FP32).fit()
    assert cached.scheme.cache.served == 8 and cached.scheme.cache.reason is None
    torch.testing.assert_close(_losses(cached), _losses(plain), rtol=1e-3, atol=1e-5)


def test_compile_on_cuda_keeps_the_float32_numbers(shapes):
    plain = _run(shapes, epochs=1, **FP32).fit()
    compiled = _run(shapes, epochs=1, compile=True, **FP32).fit()
    assert compiled.settings.compile is True
    torch.testing.assert_close(_losses(compiled), _losses(plain), rtol=1e-3, atol=1e-4)


def test_an_interrupted_cuda_run_resumes_to_the_uninterrupted_weights():
    """MLPs on digits: every CUDA kernel they use is deterministic (a conv net's backward through
    cuDNN and adaptive pooling is not, run to run), so the resumed run must match exactly."""
    digits = wb.data.load("digits", n_train=128)

    def run(store=None):
        torch.manual_seed(0)
        teacher = wb.models.build("mlp", num_classes=10, in_channels=1, image_size=8)
        torch.manual_seed(1)
        student = wb.models.build("mlp", num_classes=10, in_channels=1, image_size=8, hidden_sizes=(32,))
        return wb.distill(student, teacher, digits, methods={"kd": {}}, epochs=3, batch_size=32, seed=3,
                          device="cuda", store=store, progress=False, log_every=1)

    whole = run().fit()
    store = RunStore()
    interrupted = run(store)

    def interrupt(run, metrics):
        if run.step == 6:  # mid-epoch 2 (4 steps an epoch): resume goes back to epoch 1's checkpoint
            raise KeyboardInterrupt

    interrupted.on("step_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert interrupted.status == "interrupted"
    resumed = run(store).fit()
    assert resumed.run_id == interrupted.run_id and resumed.status == "finished"
    assert torch.equal(_weights(resumed.student), _weights(whole.student))
    assert resumed.history == whole.history


def test_a_cross_modal_teacher_reads_its_modality_from_the_device_copy():
    """The teacher's modality is an extra of the data: copied to the GPU when first read, alone
    (not the masks and maps the run never reads), and the run computes what the CPU computes."""
    pairs = wb.data.load("shapes_paired", size=16, n_train=64, n_test=32, seed=0)
    copied = []

    def run(device):
        torch.manual_seed(0)
        teacher = wb.models.build("resnet8", num_classes=pairs.num_classes, in_channels=3)
        torch.manual_seed(1)
        student = wb.models.build("resnet8", num_classes=pairs.num_classes, in_channels=pairs.in_channels)
        r = wb.distill(student, teacher, pairs, scheme="cross_modal", epochs=2, batch_size=16, seed=3,
                       device=device, store=None, progress=False, log_every=1, **FP32)
        if device == "cuda":
            r.on("step_end", lambda r, m: copied.append(sorted(r._device_train.extras._copies)))
        return r.fit()

    cpu, gpu = run("cpu"), run("cuda")
    assert gpu.settings.data_on_device and copied and all(keys == ["rgb"] for keys in copied)
    torch.testing.assert_close(_losses(gpu), _losses(cpu), rtol=1e-4, atol=1e-5)
