"""The model zoo: every model builds and runs on digits-sized and CIFAR-sized inputs, taps follow the
conventions KD losses rely on, summaries count what they claim, torchvision models wrap offline."""
import os
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import workbench.models as models
from workbench.registry import MODELS, UnknownNameError
from workbench.taps import capture

torch.set_num_threads(1)

ZOO = ["mlp", "cnn", "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
       "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13",
       "mobilenetv2", "shufflenetv2", "vit_tiny"]
CIFAR100_PARAMS = {"resnet56": 0.86e6, "resnet110": 1.73e6, "resnet8x4": 1.23e6, "resnet32x4": 7.43e6,
                   "wrn_16_2": 0.70e6, "wrn_40_1": 0.57e6, "wrn_40_2": 2.26e6, "vgg8": 3.96e6,
                   "vgg13": 9.46e6, "mobilenetv2": 0.81e6, "shufflenetv2": 1.36e6}  # CRD / OFD tables


def build(name, size, **kwargs):
    """``name`` for square inputs of ``size`` (mlp and vit fix their input size at construction)."""
    if name in ("mlp", "vit_tiny"):
        kwargs["image_size"] = size
    return models.build(name, **kwargs)


def family(name):
    return MODELS.get(name).meta["family"]


def all_taps(model):
    return [*model.taps, *model.preact_taps, *model.attention_taps]


def test_every_zoo_model_is_registered():
    assert set(ZOO) <= set(models.names())


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("shape, num_classes", [((1, 8, 8), 10), ((3, 32, 32), 100)])
def test_builds_forwards_and_taps_fire(name, shape, num_classes):
    torch.manual_seed(0)
    model = build(name, shape[-1], num_classes=num_classes, in_channels=shape[0]).eval()
    assert (model.num_classes, model.in_channels) == (num_classes, shape[0])
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == num_classes
    x = torch.randn(2, *shape)
    out = capture(model, x, all_taps(model))
    assert out.logits.shape == (2, num_classes)
    torch.testing.assert_close(out.logits, model(x))  # recording taps changes nothing

    names = list(model.taps)
    stages = [n for n in names if n.startswith("stage")]
    assert names == ["stem"] * ("stem" in names) + [f"stage{i + 1}" for i in range(len(stages))] + ["embedding"]
    assert out.embedding.shape == (2, model.classifier.in_features)
    assert out.features["embedding"].dim() == 2
    stage_dims = {"mlp": 2, "vit": 3}.get(family(name), 4)  # vit stages are tokens (B, 1 + N, dim)
    assert all(out.features[s].dim() == stage_dims for s in stages)
    if "stem" in names:
        assert out.features["stem"].dim() == 4


@pytest.mark.parametrize("name", [n for n in ZOO if n not in ("mlp", "vit_tiny")])
def test_preact_taps_are_the_stage_outputs_before_their_relu(name):
    torch.manual_seed(0)
    model = models.build(name, num_classes=10, in_channels=1).eval()
    assert list(model.preact_taps) == [f"{s}_pre" for s in model.taps if s.startswith("stage")]
    out = capture(model, torch.randn(2, 1, 16, 16), all_taps(model))
    for stage in (s for s in model.taps if s.startswith("stage")):
        pre, post = out.features[f"{stage}_pre"], out.features[stage]
        if family(name) == "mobilenetv2":      # linear bottlenecks: no ReLU ends a stage
            torch.testing.assert_close(pre, post)
        elif family(name) == "wrn":            # pre-activation: the next BN before the next ReLU
            bn = {"stage1": model.block2[0].bn1, "stage2": model.block3[0].bn1, "stage3": model.bn}[stage]
            torch.testing.assert_close(pre, bn(post))
        else:
            torch.testing.assert_close(F.relu(pre), post)
            assert (pre < 0).any(), "the recorded pre-activation was overwritten by an in-place ReLU"


def test_shufflenet_blocks_see_non_negative_inputs():
    """Why relu(concat(kept half, branch)) equals CRD's concat(kept half, relu(branch))."""
    model = models.build("shufflenetv2", net_size=0.5).eval()
    seen = []
    for block in model.modules():
        if type(block).__name__ == "BasicBlock":
            block.register_forward_pre_hook(lambda m, args: seen.append(args[0].min().item()))
    model(torch.randn(2, 3, 32, 32))
    assert len(seen) == 13 and min(seen) >= 0


def test_vit_attention_probabilities():
    model = models.build("vit_tiny", image_size=16, patch_size=4, dim=32, depth=2, heads=2).eval()
    out = capture(model, torch.randn(3, 3, 16, 16), list(model.attention_taps))
    assert list(out.attentions) == ["block0", "block1"]
    for attn in out.attentions.values():
        assert attn.shape == (3, 2, 17, 17)  # (B, heads, 1 + 16 patches, same)
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2, 17))


def test_summary_counts_parameters_and_macs():
    linear = nn.Linear(20, 7)
    s = models.summary(linear, (20,))
    assert s.macs == 20 * 7 and s.params == 20 * 7 + 7 == s.trainable_params
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert models.summary(conv, (3, 10, 10)).macs == (8 * 10 * 10) * (3 * 3 * 3)
    grouped = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
    assert models.summary(grouped, (8, 10, 10)).macs == (16 * 5 * 5) * (2 * 3 * 3)

    model = models.build("resnet20", num_classes=100)
    model.classifier.weight.requires_grad_(False)
    s = models.summary(model, (3, 32, 32))
    assert s.params == sum(p.numel() for p in model.parameters())
    assert s.trainable_params == s.params - 64 * 100
    assert s.tap_shapes["stage3"] == (1, 64, 8, 8) and s.tap_shapes["stage3_pre"] == (1, 64, 8, 8)
    assert model.training and "MACs" in str(s) and "stage3_pre" in str(s)


def test_summary_counts_vit_attention_matmuls():
    dim, heads, depth, tokens = 32, 2, 2, 1 + 4  # 8x8 image, 4x4 patches
    model = models.build("vit_tiny", image_size=8, patch_size=4, dim=dim, depth=depth, heads=heads,
                         mlp_ratio=2.0)
    per_block = (tokens * dim * 3 * dim            # qkv
                 + 2 * tokens * tokens * dim       # Q K^T and A V over all heads
                 + tokens * dim * dim              # output projection
                 + 2 * tokens * dim * 2 * dim)     # MLP
    expected = 4 * dim * (3 * 4 * 4) + depth * per_block + dim * 10
    s = models.summary(model, (3, 8, 8))
    assert s.macs == expected
    assert s.tap_shapes["block1"] == (1, heads, tokens, tokens)


def test_summary_counts_multihead_attention_and_agrees_with_torchvision():
    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    tokens, dim = 5, 8
    assert models.summary(SelfAttention(), (tokens, dim)).macs == 4 * tokens * dim * dim + 2 * tokens * tokens * dim
    resnet18 = models.from_torchvision("resnet18", num_classes=1000)
    published = torchvision.models.get_model_weights("resnet18").DEFAULT.meta["_ops"]  # GMACs
    assert models.summary(resnet18, (3, 224, 224)).macs / 1e9 == pytest.approx(published, abs=1e-3)


@pytest.mark.parametrize("name", sorted(CIFAR100_PARAMS))
def test_parameter_counts_match_the_cifar100_literature(name):
    params = sum(p.numel() for p in models.build(name, num_classes=100).parameters())
    assert abs(params - CIFAR100_PARAMS[name]) / CIFAR100_PARAMS[name] < 0.02


def test_from_torchvision_resnet18_grey_five_classes():
    model = models.from_torchvision("resnet18", num_classes=5, in_channels=1).eval()
    out = capture(model, torch.randn(2, 1, 32, 32), list(model.taps))
    assert out.logits.shape == (2, 5)
    assert list(model.taps) == ["stem", "stage1", "stage2", "stage3", "stage4", "embedding"]
    assert out.features["stage4"].shape == (2, 512, 1, 1)
    assert out.embedding.shape == (2, 512) and out.features["embedding"].dim() == 2
    assert model.classifier is model.fc and model.fc.out_features == 5
    assert model.conv1.in_channels == 1
    reference = torchvision.models.resnet18()
    assert model.state_dict().keys() == reference.state_dict().keys()  # torchvision checkpoints load


def test_from_torchvision_grey_conv_keeps_the_response_to_grey_images():
    torch.manual_seed(0)
    rgb = torchvision.models.get_model("mobilenet_v3_small").features[0][0]
    torch.manual_seed(0)
    model = models.from_torchvision("mobilenet_v3_small", num_classes=1000, in_channels=2)
    grey = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(model.features[0][0](grey.expand(1, 2, 16, 16)), rgb(grey.expand(1, 3, 16, 16)))
    assert model.taps["embedding"] == "classifier.2" and model.classifier_path == "classifier.3"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: a download attempt fails like it would offline."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_from_torchvision_pretrained_offline_says_what_is_missing(offline_hub):
    with pytest.raises(RuntimeError) as err:
        models.from_torchvision("resnet18", num_classes=10, pretrained=True)
    message = str(err.value)
    assert str(offline_hub / "resnet18-f37072fd.pth") in message
    assert "pretrained=False" in message and "resnet32x4" in message


def test_from_torchvision_pretrained_loads_cached_weights(offline_hub):
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    state = torchvision.models.mobilenet_v3_small().state_dict()
    offline_hub.mkdir(parents=True)
    torch.save(state, offline_hub / os.path.basename(weights.url))
    model = models.from_torchvision("mobilenet_v3_small", num_classes=10, pretrained=True)
    torch.testing.assert_close(model.features[1].block[0][0].weight, state["features.1.block.0.0.weight"])
    assert model.classifier_path == "classifier.3" and model.get_submodule("classifier.3").out_features == 10


@pytest.mark.parametrize("call, words", [
    (lambda: models.build("resnet2O"), ["resnet20"]),
    (lambda: models.from_torchvision("resnet19", num_classes=10), ["resnet18"]),
])
def test_unknown_names_suggest_close_ones(call, words):
    with pytest.raises(UnknownNameError) as err:
        call()
    assert all(word in str(err.value) for word in words)


@pytest.mark.parametrize("call, words", [
    (lambda: models.build("resnet8", in_channels=0), ["in_channels", "0"]),
    (lambda: models.build("cnn", num_classes=2.5), ["num_classes", "2.5"]),
    (lambda: models.build("cnn", num_classes=True), ["num_classes", "True"]),
    (lambda: models.from_torchvision("resnet18", num_classes=-3), ["num_classes", "-3"]),
    (lambda: models.build("vit_tiny", image_size=8, patch_size=16), ["16", "8"]),
    (lambda: models.build("vit_tiny", image_size=12, patch_size=8), ["8", "12"]),
    (lambda: models.build("vit_tiny")(torch.randn(1, 3, 16, 16)), ["32x32", "16x16"]),
    (lambda: models.build("mlp", image_size=8)(torch.randn(1, 3, 32, 32)), ["192", "(3, 32, 32)"]),
    (lambda: models.build("shufflenetv2", net_size=3), ["net_size", "3"]),
])
def test_bad_inputs_raise_value_errors_naming_them(call, words):
    with pytest.raises(ValueError) as err:
        call()
    assert all(word in str(err.value) for word in words)
