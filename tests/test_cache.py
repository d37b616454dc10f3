"""The offline scheme's teacher-output cache: it returns exactly the outputs it replaces, the teacher
stops running from the second epoch on, and it refuses to serve (saying why) when the inputs are
not reproducible or the teacher changed."""
import warnings

import pytest
import torch

import workbench as wb
from workbench.engine.cache import TeacherCache, checksum, layout, weights_checksum, with_layout
from workbench.schemes import Offline

BATCH = 32


@pytest.fixture(scope="module")
def digits():
    return wb.data.load("digits", n_train=128)       # 4 full batches: every sample seen in epoch 0


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    model = wb.models.build("cnn", num_classes=10, in_channels=1, width=16)
    wb.train(model, digits, epochs=2, batch_size=BATCH, store=None, progress=False).fit()
    return model


def student(seed=1):
    torch.manual_seed(seed)
    return wb.models.build("cnn", num_classes=10, in_channels=1, width=4)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


METHODS = {"kd": {}, "at": {}}          # logits and every stage's feature map go through the cache


def distill(data, teacher, scheme=None, epochs=3, **options):
    scheme = scheme or Offline(cache=True)
    return wb.distill(student(), teacher, data, METHODS, scheme=scheme, epochs=epochs, batch_size=BATCH,
                      log_every=1, store=None, progress=False, **options)


def count_teacher_forwards(run, teacher):
    """The epoch of every teacher pass made inside a training step (not the set-up on a first
    batch, not the evaluation)."""
    calls, in_step = [], []
    step = run.scheme.step

    def counted_step(batch):
        in_step.append(True)
        try:
            return step(batch)
        finally:
            in_step.pop()

    def count(module, inputs):
        if in_step:
            calls.append(run.epoch)

    run.scheme.step = counted_step
    handle = teacher.register_forward_pre_hook(count)
    run.on("run_end", lambda r, _: handle.remove())
    return calls


class Spy(Offline):
    """Offline with the cache, checking each served batch against a fresh teacher forward."""

    def teacher_outputs(self, batch):
        out = super().teacher_outputs(batch)
        with torch.no_grad():
            fresh = self.teacher_taps(batch.x)
        self.compared.append(torch.equal(out.logits, fresh.logits) and all(
            torch.equal(v, fresh.features[k]) and v.stride() == fresh.features[k].stride()
            for k, v in out.features.items()) and set(out.features) == set(fresh.features))
        return out


# -- it replaces the teacher exactly --------------------------------------------------------------
def test_a_cached_run_equals_an_uncached_run_bit_for_bit(digits, teacher):
    plain = distill(digits, teacher, Offline()).fit()
    cached = distill(digits, teacher).fit()
    assert cached.scheme.cache.served == 8 and cached.scheme.cache.reason is None
    assert [r["loss"] for r in cached.history] == [r["loss"] for r in plain.history]
    assert cached.history == plain.history            # every term, every step
    assert torch.equal(params(cached.student), params(plain.student))


def test_served_outputs_equal_a_fresh_teacher_forward(digits, teacher):
    spy = Spy(cache=True)
    spy.compared = []
    run = distill(digits, teacher, spy).fit()
    assert len(spy.compared) == 13 and all(spy.compared)       # the set-up's first batch + 12 steps
    cache = run.scheme.cache
    assert set(cache.features) == {"stage1", "stage2", "stage3"}
    # memory as documented: N x (K logits + every tap) in the teacher's dtype, plus 9 bytes a row
    per_sample = 10 + sum(16 * 2 ** i * (8 // 2 ** i) ** 2 for i in range(3))
    assert cache.nbytes == len(digits.train) * (per_sample * 4 + 9)


def test_the_teacher_runs_only_in_the_first_epoch(digits, teacher):
    run = distill(digits, teacher)
    calls = count_teacher_forwards(run, teacher)
    run.fit()
    assert calls == [0, 0, 0, 0]                               # 4 batches in epoch 0, none after
    assert run.scheme.cache.teacher_forwards == 4 and run.scheme.cache.served == 8
    assert run.result["cache_served"] == 8 and run.result["cache_on"] == 1
    plain = distill(digits, teacher, Offline())
    plain_calls = count_teacher_forwards(plain, teacher)
    plain.fit()
    assert plain_calls == [0] * 4 + [1] * 4 + [2] * 4


def test_samples_left_out_by_drop_last_are_filled_when_they_come(teacher):
    data = wb.data.load("digits", n_train=100)                  # 3 batches of 32, 4 samples left out
    run = distill(data, teacher, epochs=4)
    run.fit()
    # the trainer's batches, replayed: a batch is served when all its samples were seen before
    seen, expected = set(), []
    for epoch in range(4):
        order = torch.randperm(100, generator=torch.Generator().manual_seed(epoch))  # seed 0
        for start in range(0, 96, BATCH):
            batch = set(order[start:start + BATCH].tolist())
            expected.append(batch <= seen)
            seen |= batch
    cache = run.scheme.cache
    assert (cache.served, cache.teacher_forwards) == (sum(expected), 12 - sum(expected))
    assert 0 < sum(expected) < 9 and cache.filled.sum() == len(seen)


# -- it refuses when it cannot be right -------------------------------------------------------------
class Augmenting(Offline):
    """Random, unseeded noise on the inputs: not reproducible."""

    def step(self, batch):
        batch.x = batch.x + 0.1 * torch.randn_like(batch.x)
        return super().step(batch)


def test_unseeded_augmentation_is_refused_with_the_reason(digits, teacher):
    run = distill(digits, teacher, Augmenting(cache=True))
    calls = count_teacher_forwards(run, teacher)
    with pytest.warns(RuntimeWarning, match="teacher cache off: an input differs") as caught:
        run.fit()
    assert len([w for w in caught if "teacher cache off" in str(w.message)]) == 1   # said once
    assert "augmentation" in run.scheme.cache.reason and run.scheme.cache.served == 0
    assert calls == [0] * 4 + [1] * 4 + [2] * 4                 # the teacher ran on every batch
    assert run.result["cache_on"] == 0


def test_a_modified_split_is_refused(teacher):
    data = wb.data.load("digits", n_train=128)
    run = distill(data, teacher, epochs=2)
    run.on("epoch_end", lambda r, epoch: data.train.x[5].add_(0.5) if epoch == 1 else None)
    with pytest.warns(RuntimeWarning, match="modified training split"):
        run.fit()
    assert run.scheme.cache.served < 4 and run.scheme.cache.reason


@pytest.mark.parametrize("how", ["in place", "through .data", "replaced"])
def test_a_changed_teacher_is_refused(digits, how):
    torch.manual_seed(0)
    teacher = wb.models.build("cnn", num_classes=10, in_channels=1, width=8)
    run = distill(digits, teacher, epochs=2)

    def change(r, epoch):
        weight = teacher.classifier.weight
        if how == "in place":
            with torch.no_grad():
                weight.mul_(1.5)           # bumps the version counter: caught on the next step
        elif how == "replaced":            # a new tensor: caught by the epoch's identity check
            teacher.classifier.weight = torch.nn.Parameter(weight.detach() * 1.5, requires_grad=False)
        else:
            weight.data.mul_(1.5)          # no version bump: caught by the epoch's content checksum

    run.on("epoch_end", change)
    with pytest.warns(RuntimeWarning, match="teacher's weights changed"):
        run.fit()
    assert run.scheme.cache.served == 0 and "weights changed" in run.scheme.cache.reason


def test_a_cache_that_would_not_fit_is_refused(digits, teacher):
    run = distill(digits, teacher, Offline(cache=True, cache_max_mb=0.01), epochs=1)
    with pytest.warns(RuntimeWarning, match="more than max_bytes"):
        run.fit()
    assert run.scheme.cache.nbytes == run.scheme.cache.filled.numel()


class ReplayedAugmentation(Offline):
    """Two fixed views per sample (identity and a flip), chosen by a seed the batch carries."""

    def step(self, batch):
        seed = (batch.index + self.run.epoch) % 2
        flipped = torch.where(seed.view(-1, 1, 1, 1).bool(), batch.x.flip(-1), batch.x)
        batch = wb.data.Batch(flipped, batch.y, batch.index, {"augmentation_seed": seed})
        return super().step(batch)


def test_replayable_augmentations_are_cached_per_view(digits, teacher):
    run = distill(digits, teacher, ReplayedAugmentation(cache=True, cache_views=2), epochs=4)
    calls = count_teacher_forwards(run, teacher)
    run.fit()
    cache = run.scheme.cache
    assert cache.reason is None and calls == [0] * 4 + [1] * 4    # both views stored by epoch 1
    assert cache.served == 8 and bool(cache.filled.all())
    with pytest.warns(RuntimeWarning, match=r"outside \[0, 1\)"):
        distill(digits, teacher, ReplayedAugmentation(cache=True), epochs=1).fit()


def test_describe_records_only_settings_that_differ_from_the_defaults(digits, teacher):
    assert Offline().describe() == {}            # old runs keep their config hash
    assert Offline(cache=True).describe() == {"cache": True}
    run = wb.distill(student(), teacher, digits, scheme_args={"cache": True}, store=None)
    assert run.config.scheme_args == {"cache": True}
    with pytest.raises(ValueError, match="no teacher"):
        wb.distill(student(), None, digits, scheme_args={"cache": True}, store=None)


# -- the checksums ---------------------------------------------------------------------------------
def test_checksums_are_exact_per_row_and_see_any_change():
    x = torch.randn(6, 3, 4, 4)
    sums = checksum(x)
    assert torch.equal(checksum(x[[2, 0]]), sums[[2, 0]])              # a row's sum is its own
    assert torch.equal(checksum(x.contiguous(memory_format=torch.channels_last)), sums)
    y = x.clone()
    y[1, 2, 3, 3] = torch.nextafter(y[1, 2, 3, 3], torch.tensor(10.0))  # one ulp
    assert (checksum(y) != sums).tolist() == [False, True, False, False, False, False]
    swapped = x.clone()
    swapped[0, 0, 0, [0, 1]] = swapped[0, 0, 0, [1, 0]]
    assert checksum(swapped)[0] != sums[0]
    assert checksum(x.half())[0] != 0 and checksum(torch.zeros(2, 5, dtype=torch.uint8)).tolist() == [0, 0]
    model = torch.nn.Linear(3, 2)
    before = weights_checksum(model)
    model.weight.data[0, 0] += 1e-3
    assert weights_checksum(model) != before


def test_layouts_are_restored():
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    order = layout(x)
    assert order == (0, 2, 3, 1)
    y = with_layout(x.contiguous(), order)
    assert torch.equal(y, x) and y.stride() == x.stride()


def test_cache_unit_keys_and_counts():
    cache = TeacherCache(size=4)
    teacher = torch.nn.Linear(3, 2).eval()
    forward = lambda b: wb.Outputs(teacher(b.x))   # noqa: E731
    batch = wb.data.Batch(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([3, 1]))
    first = cache.outputs(batch, teacher, forward)
    again = cache.outputs(batch, teacher, forward)
    assert torch.equal(first.logits, again.logits) and (cache.teacher_forwards, cache.served) == (1, 1)
    outside = wb.data.Batch(torch.randn(1, 3), torch.tensor([0]), torch.tensor([7]))
    with pytest.warns(RuntimeWarning, match="outside the 4 rows"):
        cache.outputs(outside, teacher, forward)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # refused once: no second warning
        cache.outputs(batch, teacher, forward)


# -- batches gathered from the device copy of the split: served with no per-step check ------------
@pytest.fixture
def device_resident(monkeypatch):
    """The GPU's whole-split-on-device path, forced on the CPU (as in test_gpu_path.py); returns
    the shapes of every input ``checksum`` hashed (each is a host read on a GPU)."""
    from workbench.engine import cache as cache_module
    from workbench.engine import distributed
    real_settings, real_checksum, hashed = distributed.resolve_settings, cache_module.checksum, []

    def on_device(*args, **kwargs):
        settings = real_settings(*args, **kwargs)
        settings.data_on_device = True
        return settings

    def spied(x):
        hashed.append(tuple(x.shape))
        return real_checksum(x)

    monkeypatch.setattr(distributed, "resolve_settings", on_device)
    monkeypatch.setattr(cache_module, "checksum", spied)
    return hashed


def test_device_resident_batches_are_served_unhashed_and_unchanged(digits, teacher, device_resident,
                                                                 monkeypatch):
    plain = distill(digits, teacher, Offline()).fit()
    device_resident.clear()
    looked_up = []
    real_keys = TeacherCache._keys
    monkeypatch.setattr(TeacherCache, "_keys", lambda self, batch: looked_up.append(1) or real_keys(self, batch))
    cached = distill(digits, teacher).fit()
    assert cached.settings.data_on_device and cached.scheme.cache.served == 8
    batches = [shape for shape in device_resident if shape == (BATCH, 1, 8, 8)]
    assert len(batches) == 4                    # the 4 filling batches of epoch 0; none served after
    # once every row is stored, a served batch needs no host-side look-up of its rows either
    assert len(looked_up) == 4
    assert cached.history == plain.history and torch.equal(params(cached.student), params(plain.student))


class AugmentingInPlace(Offline):
    """Unseeded noise written into the batch's own input tensor (its version counter moves)."""

    def step(self, batch):
        batch.x.add_(0.1 * torch.randn_like(batch.x))
        return super().step(batch)


@pytest.mark.parametrize("scheme", [Augmenting, AugmentingInPlace], ids=["new tensor", "in place"])
def test_a_changed_device_batch_is_still_checked_and_refused(digits, teacher, device_resident, scheme):
    run = distill(digits, teacher, scheme(cache=True), epochs=2)
    with pytest.warns(RuntimeWarning, match="an input differs"):
        run.fit()
    assert run.settings.data_on_device and run.scheme.cache.served == 0


def linear_cache(size: int, split_rows: int):
    """A cache of ``size`` rows for a linear teacher, a device copy of ``split_rows`` rows and a
    batch of its rows 0 and 1: (cache, model, forward, split, rows, batch)."""
    cache = TeacherCache(size=size)
    model = torch.nn.Linear(3, 2).eval()
    forward = lambda b: wb.Outputs(model(b.x))   # noqa: E731
    split = torch.randn(split_rows, 3)
    rows = torch.tensor([0, 1])
    return cache, model, forward, split, rows, wb.data.Batch(split[rows], torch.tensor([0, 1]), rows)


def test_rows_stored_from_elsewhere_turn_the_unchecked_path_off(teacher):
    cache, model, forward, split, rows, batch = linear_cache(4, 4)
    cache.outputs(batch, model, forward)                       # stored from no device copy
    served = cache.outputs(batch, model, forward, rows=(rows, split))
    assert cache.served == 1 and torch.equal(served.logits, model(batch.x))
    # the checked path served it: a changed input with the same rows is refused, not served
    changed = wb.data.Batch(batch.x + 1, batch.y, rows)
    with pytest.warns(RuntimeWarning, match="an input differs"):
        cache.outputs(changed, model, forward, rows=(rows, split))


def test_a_device_copy_of_another_size_is_never_served_unchecked():
    """Rows of a copy longer than the cached split could index past its rows: such a copy never
    becomes the source of the unchecked path, so every batch of it is looked up and hashed."""
    cache, model, forward, split, rows, batch = linear_cache(2, 6)
    cache.outputs(batch, model, forward, rows=(rows, split))   # fills both rows: complete
    assert cache._complete
    outside = wb.data.Batch(split[torch.tensor([4, 5])], torch.tensor([0, 1]), torch.tensor([4, 5]))
    with pytest.warns(RuntimeWarning, match="outside the 2 rows"):
        cache.outputs(outside, model, forward, rows=(torch.tensor([4, 5]), split))
    assert cache.served == 0
