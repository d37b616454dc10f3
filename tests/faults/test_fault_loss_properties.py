"""Property-based tests (hypothesis) of every registered KD loss.

For each name in ``workbench.registry.METHODS`` (a new method is covered without an edit here):
random batch sizes and values, with logits and features from 1e-6 to 1e4 in scale, give finite
terms and finite gradients, for a pair of equal zoo models and a pair of mismatched widths. The
method is bound to real models and set up on their real tap outputs (so connectors are built as in
training); the tensors it is then fed are random, of the shapes those taps have.

Then the invariances that each method's equation implies, listed per method below (a new method
gets only the finiteness checks until it is listed):
- logit methods built on softmax ignore a constant added to all logits of a sample;
- LS (and NormKD, on the student side) ignore a positive factor on a sample's logits;
- methods that compare normalised maps or relations ignore a positive factor on the features;
- methods with no connector and no transformed teacher give zero loss when student = teacher.
"""
from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import workbench as wb
from workbench.data.bundle import Batch
from workbench.registry import METHODS
from workbench.taps import Outputs, TapError, capture

NAMES = METHODS.names()
NUM_CLASSES = 10
#: (student, teacher, input side); a method is bound to the first pair whose taps it finds:
#: CNNs, then transformers (attention taps), then DeiT's ViT with a distillation token
PAIRS = {"equal": [("resnet8", "resnet8", 16), ("vit_tiny", "vit_tiny", 32), ("distilled_vit", "resnet8", 32)],
         "mismatched": [("resnet8", "resnet8x4", 16), ("vit_tiny", "vit_tiny", 32),
                        ("distilled_vit", "resnet8x4", 32)]}
SCALES = [1e-6, 1e-3, 1.0, 1e2, 1e4]

#: softmax(z + c) = softmax(z): a per-sample constant on either side changes nothing
SHIFT_INVARIANT = {"kd", "dkd", "dist", "ls", "normkd", "ttm", "wttm"}
#: a positive per-sample factor on the logits changes nothing: LS standardises both sides;
#: NormKD divides the student's logits by their own standard deviation
SCALE_INVARIANT = {"ls": ("student", "teacher"), "normkd": ("student",)}
#: a positive factor on the student's features changes nothing: each compares normalised
#: attention maps (AT), normalised neuron statistics (NST), row-normalised Gram matrices (SP),
#: cosine kernels (PKT, CC), or distances divided by their mean and angles (RKD)
FEATURE_SCALE_INVARIANT = {"at": {}, "nst": {}, "sp": {}, "pkt": {}, "rkd": {}, "cc": {"embed_dim": None}}
#: zero loss for identical student and teacher outputs: the methods with no connector between
#: the two (CC without its projections) and no transformed teacher (TTM and WTTM sharpen it).
#: Not DIST: its Pearson correlation has an eps in the denominator (the authors' code), so
#: 1 - r = eps / (|a||b| + eps) is far from 0 for nearly constant rows (small logits, batch of 2).
ZERO_AT_IDENTITY = {"kd": {}, "dkd": {}, "ls": {}, "normkd": {}, "at": {}, "nst": {}, "fsp": {},
                    "irg": {}, "pkt": {}, "rkd": {}, "sp": {}, "cc": {"embed_dim": None}}

FAST = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.lru_cache(maxsize=None)
def prepared(name: str, pair: str, hparams: tuple = ()):
    """(method bound and set up, student tap shapes, teacher tap shapes, attention taps, input side)."""
    errors = []
    for student_name, teacher_name, side in PAIRS[pair]:
        torch.manual_seed(0)
        student, teacher = build_model(student_name, side), build_model(teacher_name, side)
        method = wb.methods.build_method(name, **dict(hparams))
        try:
            method.bind(student, teacher)
        except (TapError, ValueError) as error:
            errors.append(f"{student_name}/{teacher_name}: {error}")
            continue
        x = torch.randn(4, 3, side, side)
        with torch.no_grad():
            s_out, t_out = capture(student, x, method.student_taps), capture(teacher, x, method.teacher_taps)
            method.setup(s_out, t_out)
        shapes = lambda out: {k: tuple(v.shape[1:]) for k, v in {**out.features, **out.attentions}.items()}
        return method, shapes(s_out), shapes(t_out), set(s_out.attentions) | set(t_out.attentions), side
    raise AssertionError(f"{name}: no zoo pair in PAIRS has the taps it needs ({'; '.join(errors)}); "
                         "add one to PAIRS in this file")


def build_model(name: str, side: int) -> torch.nn.Module:
    if name == "distilled_vit":
        from workbench.methods.attention.deit import DistilledViT
        return DistilledViT(build_model("vit_tiny", side))
    extra = {"image_size": side} if name.startswith("vit") else {}
    return wb.models.build(name, num_classes=NUM_CLASSES, in_channels=3, **extra)


def random_outputs(shapes, attention, batch, logit_scale, feature_scale, generator, grad):
    def tensor(shape, scale):
        return torch.randn(batch, *shape, generator=generator) * scale

    features = {k: tensor(s, feature_scale) for k, s in shapes.items() if k not in attention}
    attentions = {k: torch.softmax(tensor(s, feature_scale), dim=-1) for k, s in shapes.items() if k in attention}
    logits = tensor((NUM_CLASSES,), logit_scale)
    for t in (logits, *features.values(), *attentions.values()):
        t.requires_grad_(grad)
    out = Outputs(logits, features, attentions)
    if "embedding" in features:
        out.embedding = features["embedding"].flatten(1)
    return out


def with_tensors(out: Outputs, logits=None, features=None) -> Outputs:
    """A copy of ``out`` with other logits and/or features (the embedding follows its tap)."""
    features = dict(out.features if features is None else features)
    new = Outputs(out.logits if logits is None else logits, features, dict(out.attentions))
    if "embedding" in features:
        new.embedding = features["embedding"].flatten(1)
    return new


def make_batch(n, side, generator):
    return Batch(torch.randn(n, 3, side, side, generator=generator),
                 torch.randint(0, NUM_CLASSES, (n,), generator=generator), torch.arange(n))


def terms_of(method, student, teacher, batch) -> dict[str, torch.Tensor]:
    return method(student, teacher, batch)


# -- finite terms and gradients ------------------------------------------------------------------
@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("name", NAMES)
@FAST
@given(batch=st.integers(1, 8), logit_scale=st.sampled_from(SCALES), feature_scale=st.sampled_from(SCALES),
       seed=st.integers(0, 2**31 - 1))
@example(batch=1, logit_scale=1e4, feature_scale=1e4, seed=0)       # the extremes, always tried
@example(batch=8, logit_scale=1e-6, feature_scale=1e-6, seed=1)
@example(batch=2, logit_scale=1e4, feature_scale=1e-6, seed=2)
@example(batch=3, logit_scale=1e-6, feature_scale=1e4, seed=3)
def test_random_inputs_give_finite_terms_and_gradients(name, pair, batch, logit_scale, feature_scale, seed):
    method, s_shapes, t_shapes, attention, side = prepared(name, pair)
    batch_size = max(batch, getattr(method, "min_batch_size", 1))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # methods that draw (MGD's masks) draw the same for the same example
    student = random_outputs(s_shapes, attention, batch_size, logit_scale, feature_scale, generator, True)
    teacher = random_outputs(t_shapes, attention, batch_size, logit_scale, feature_scale, generator, False)
    method.zero_grad(set_to_none=True)
    terms = terms_of(method, student, teacher, make_batch(batch_size, side, generator))
    assert terms, f"{name} returned no terms"
    values = {k: float(v.detach()) for k, v in terms.items()}
    assert all(torch.isfinite(v).all() for v in terms.values()), f"{name}: non-finite terms {values}"
    loss = sum(method.weight * v for v in terms.values())
    if not loss.requires_grad:
        return  # nothing of the student reaches this method's terms at all (checked elsewhere)
    loss.backward()
    grads = {"logits": student.logits.grad, **{k: v.grad for k, v in student.features.items()},
             **{k: v.grad for k, v in student.attentions.items()},
             **{f"connector {k}": p.grad for k, p in method.named_parameters()}}
    bad = sorted(k for k, g in grads.items() if g is not None and not torch.isfinite(g).all())
    assert not bad, f"{name}: non-finite gradients of {bad} (terms {values})"
    assert any(g is not None for k, g in grads.items() if not k.startswith("connector")), \
        f"{name}: no gradient reaches the student's outputs"


# -- invariances ---------------------------------------------------------------------------------
def close(a: dict, b: dict, rtol=1e-4, atol=1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=rtol, atol=atol) for k in a)


def evaluate(method, student, teacher, batch):
    with torch.no_grad():
        method.eval()  # DKD's warm-up counter, and the like, stay put between the two calls
        try:
            return {k: v.detach() for k, v in terms_of(method, student, teacher, batch).items()}
        finally:
            method.train()


@pytest.mark.parametrize("name", sorted(SHIFT_INVARIANT & set(NAMES)))
@FAST
@given(batch_size=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), shift=st.floats(-50, 50))
def test_logit_methods_ignore_a_constant_added_to_a_sample(name, batch_size, seed, shift):
    method, s_shapes, t_shapes, attention, side = prepared(name, "equal")
    g = torch.Generator().manual_seed(seed)
    student = random_outputs(s_shapes, attention, batch_size, 3.0, 1.0, g, False)
    teacher = random_outputs(t_shapes, attention, batch_size, 3.0, 1.0, g, False)
    batch = make_batch(batch_size, side, g)
    per_sample = shift * torch.rand(batch_size, 1, generator=g)
    shifted = evaluate(method, with_tensors(student, logits=student.logits + per_sample),
                       with_tensors(teacher, logits=teacher.logits - 2 * per_sample), batch)
    assert close(evaluate(method, student, teacher, batch), shifted, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(set(SCALE_INVARIANT) & set(NAMES)))
@FAST
@given(batch_size=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_standardising_methods_ignore_a_positive_factor_on_a_sample(name, batch_size, seed):
    method, s_shapes, t_shapes, attention, side = prepared(name, "equal")
    g = torch.Generator().manual_seed(seed)
    student = random_outputs(s_shapes, attention, batch_size, 3.0, 1.0, g, False)
    teacher = random_outputs(t_shapes, attention, batch_size, 3.0, 1.0, g, False)
    batch = make_batch(batch_size, side, g)
    factor = lambda: 0.1 + 10 * torch.rand(batch_size, 1, generator=g)
    sides = SCALE_INVARIANT[name]
    scaled = evaluate(method,
                      with_tensors(student, logits=student.logits * factor()) if "student" in sides else student,
                      with_tensors(teacher, logits=teacher.logits * factor()) if "teacher" in sides else teacher,
                      batch)
    assert close(evaluate(method, student, teacher, batch), scaled, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(set(FEATURE_SCALE_INVARIANT) & set(NAMES)))
@FAST
@given(batch_size=st.integers(3, 8), seed=st.integers(0, 2**31 - 1), factor=st.floats(0.1, 10))
def test_relation_and_map_methods_ignore_a_positive_factor_on_the_features(name, batch_size, seed, factor):
    hparams = tuple(FEATURE_SCALE_INVARIANT[name].items())
    method, s_shapes, t_shapes, attention, side = prepared(name, "mismatched", hparams)
    g = torch.Generator().manual_seed(seed)
    student = random_outputs(s_shapes, attention, batch_size, 1.0, 1.0, g, False)
    teacher = random_outputs(t_shapes, attention, batch_size, 1.0, 1.0, g, False)
    batch = make_batch(batch_size, side, g)
    scaled = with_tensors(student, features={k: v * factor for k, v in student.features.items()})
    assert close(evaluate(method, student, teacher, batch), evaluate(method, scaled, teacher, batch),
                 rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(ZERO_AT_IDENTITY) & set(NAMES)))
@FAST
@given(batch_size=st.integers(2, 8), seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_zero_loss_when_the_student_equals_the_teacher(name, batch_size, seed, scale):
    hparams = tuple(ZERO_AT_IDENTITY[name].items())
    method, s_shapes, t_shapes, attention, side = prepared(name, "equal", hparams)
    assert s_shapes == t_shapes
    g = torch.Generator().manual_seed(seed)
    same = random_outputs(s_shapes, attention, batch_size, scale, scale, g, False)
    terms = evaluate(method, same, same, make_batch(batch_size, side, g))
    assert all(abs(float(v)) < 1e-4 for v in terms.values()), {k: float(v) for k, v in terms.items()}
