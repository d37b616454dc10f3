"""Tests for workbench.data: the embedded sets, the torchvision-format readers, errors."""
from __future__ import annotations

import gzip
import pickle
import struct
import sys
import types

import numpy as np
import pytest
import torch

import workbench.data as data
from workbench.data import DatasetUnavailableError, load
from workbench.data.common import stratified_subset
from workbench.data.shapes import CLASS_NAMES
from workbench.data.torchvision_sets import read_cifar_batches, read_idx
from workbench.registry import DATASETS, UnknownNameError


def denormalise(x: torch.Tensor, meta: dict) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return x * torch.tensor(meta["std"]).view(shape) + torch.tensor(meta["mean"]).view(shape)


# ---------------------------------------------------------------------------- registry and load

def test_names_and_registry_metadata():
    assert set(data.names()) >= {"digits", "shapes", "mnist", "fashion_mnist", "cifar10", "cifar100"}
    assert DATASETS.get("digits").meta["kind"] == "embedded"
    assert DATASETS.get("cifar10").meta["kind"] == "download"
    assert all(DATASETS.get(n).meta["modality"] == "image" for n in ("digits", "shapes", "mnist"))


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(UnknownNameError, match="digits"):
        load("digit")


# ---------------------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_digits_shapes_dtypes_classes(digits):
    assert (len(digits.train), len(digits.test)) == (1347, 450)
    assert digits.train.x.shape == (1347, 1, 8, 8) and digits.test.x.shape == (450, 1, 8, 8)
    assert digits.train.x.dtype == torch.float32 and digits.train.y.dtype == torch.int64
    assert digits.num_classes == 10 and digits.class_names == [str(d) for d in range(10)]
    assert digits.input_shape == (1, 8, 8)
    assert set(digits.test.y.tolist()) == set(range(10))


def test_digits_normalised_with_training_statistics(digits):
    x = digits.train.x
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(correction=0).item() - 1) < 1e-4
    assert len(digits.meta["mean"]) == len(digits.meta["std"]) == 1
    raw = denormalise(torch.cat([x, digits.test.x]), digits.meta)
    assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5


def test_digits_subset_is_stratified_and_seeded(digits):
    small = load("digits", n_train=10, seed=0)
    assert sorted(small.train.y.tolist()) == list(range(10))
    a, b, a_again = (load("digits", n_train=100, seed=s) for s in (0, 1, 0))
    assert torch.equal(a.train.x, a_again.train.x)
    assert not torch.equal(a.train.x, b.train.x)
    assert np.bincount(a.train.y.numpy(), minlength=10).min() >= 9


def test_digits_split_does_not_depend_on_seed(digits):
    other = load("digits", n_train=200, seed=7)
    raw, raw_other = denormalise(digits.test.x, digits.meta), denormalise(other.test.x, other.meta)
    assert torch.equal(digits.test.y, other.test.y)
    assert torch.allclose(raw, raw_other, atol=1e-5)


def test_stratified_subset_follows_class_proportions():
    y = np.repeat(np.arange(3), [600, 300, 100])
    index = stratified_subset(y, 100, seed=0)
    assert len(np.unique(index)) == 100
    assert np.bincount(y[index]).tolist() == [60, 30, 10]
    assert len(set(y[stratified_subset(y, 3, seed=1)])) == 3       # every class once n >= classes


# ---------------------------------------------------------------------------- shapes

@pytest.fixture(scope="module")
def shapes():
    return load("shapes", n_train=200, n_test=50, seed=0)


def test_shapes_bundle_layout(shapes):
    assert shapes.train.x.shape == (200, 3, 32, 32) and shapes.test.x.shape == (50, 3, 32, 32)
    assert shapes.train.x.dtype == torch.float32 and shapes.train.y.dtype == torch.int64
    assert shapes.class_names == CLASS_NAMES and shapes.num_classes == 10
    extras = shapes.train.extras
    assert extras["mask"].shape == (200, 32, 32) and extras["mask"].dtype == torch.bool
    assert extras["box"].shape == (200, 4) and extras["box"].dtype == torch.float32
    assert extras["segmentation"].shape == (200, 32, 32) and extras["segmentation"].dtype == torch.int64
    assert len(shapes.meta["mean"]) == 3
    raw = denormalise(shapes.train.x, shapes.meta)
    assert raw.min() > -1e-4 and raw.max() < 1 + 1e-4


def test_shapes_deterministic_from_seed(shapes):
    again = load("shapes", n_train=200, n_test=50, seed=0)
    for split, split_again in ((shapes.train, again.train), (shapes.test, again.test)):
        assert torch.equal(split.x, split_again.x) and torch.equal(split.y, split_again.y)
        assert all(torch.equal(split.extras[k], split_again.extras[k]) for k in split.extras)
    other = load("shapes", n_train=200, n_test=50, seed=1)
    assert not torch.equal(shapes.train.x, other.train.x)
    assert not torch.equal(shapes.train.extras["mask"], other.train.extras["mask"])
    assert not torch.equal(shapes.train.x[:50], shapes.test.x)       # test split has its own seed


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_mask_box_segmentation_agree(size):
    split = load("shapes", size=size, n_train=100, n_test=10, seed=3).train
    mask, box, seg = split.extras["mask"], split.extras["box"], split.extras["segmentation"]
    assert mask.flatten(1).any(1).all()                              # every object is visible
    rows, cols = torch.arange(size).view(1, -1, 1), torch.arange(size).view(1, 1, -1)
    x0, y0, x1, y1 = (box[:, i].view(-1, 1, 1) for i in range(4))
    inside_box = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
    assert not (mask & ~inside_box).any()                            # box encloses the mask ...
    assert (mask & (cols == x0)).flatten(1).any(1).all()             # ... and is tight
    assert (mask & (cols == x1 - 1)).flatten(1).any(1).all()
    assert (mask & (rows == y0)).flatten(1).any(1).all()
    assert (mask & (rows == y1 - 1)).flatten(1).any(1).all()
    assert torch.equal(seg, torch.where(mask, split.y.view(-1, 1, 1) + 1, 0))


def test_shapes_classes_balanced(shapes):
    counts = torch.bincount(shapes.train.y, minlength=10)
    assert counts.min() >= 19 and counts.max() <= 21
    assert torch.bincount(shapes.test.y, minlength=10).min() >= 4


def test_shapes_colour_is_not_a_shortcut(shapes):
    raw = denormalise(shapes.train.x, shapes.meta)
    mask = shapes.train.extras["mask"].unsqueeze(1)
    object_colour = (raw * mask).sum((2, 3)) / mask.sum((2, 3))     # (N, 3) mean colour on the object
    per_class = torch.stack([object_colour[shapes.train.y == c].mean(0) for c in range(10)])
    assert (per_class.max(0).values - per_class.min(0).values).max() < 0.25


# ---------------------------------------------------------------------------- torchvision formats

def write_idx(path, array: np.ndarray, magic: int) -> None:
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload += array.astype(np.uint8).tobytes()
    with (gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb")) as f:
        f.write(payload)


def write_mnist(raw_dir, rng, n_train=30, n_test=12):
    """Train files gzipped, test files plain; returns what was written."""
    raw_dir.mkdir(parents=True)
    written = {}
    for prefix, n, ext in (("train", n_train, ".gz"), ("t10k", n_test, "")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(raw_dir / f"{prefix}-images-idx3-ubyte{ext}", images, 2051)
        write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte{ext}", labels, 2049)
        written[prefix] = images, labels
    return written


def write_cifar(folder, rng, files, label_key, n=6, num_classes=10, bytes_keys=False):
    """CIFAR pickles: uint8 ``data`` (n, 3072) rows of R, G, B planes; returns (N, 32, 32, 3) images."""
    folder.mkdir(parents=True)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    images, labels = [], []
    for name in files:
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, num_classes, n).tolist()
        batch = {key("data"): hwc.transpose(0, 3, 1, 2).reshape(n, 3072), key(label_key): y}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        images.append(hwc)
        labels += y
    return np.concatenate(images), np.array(labels)


def test_read_idx_plain_and_gzipped(tmp_path):
    written = write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(0))
    images, labels = written["train"]
    assert np.array_equal(read_idx(tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz", 2051), images)
    assert np.array_equal(read_idx(tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte", 2049), written["t10k"][1])
    with pytest.raises(ValueError, match="2049"):
        read_idx(tmp_path / "MNIST/raw/train-labels-idx1-ubyte.gz", expect_magic=2051)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_loads_exact_pixels(tmp_path, name, folder):
    written = write_mnist(tmp_path / folder / "raw", np.random.default_rng(1))
    bundle = load(name, root=tmp_path)
    for split, prefix in ((bundle.train, "train"), (bundle.test, "t10k")):
        images, labels = written[prefix]
        assert split.x.shape == (len(images), 1, 28, 28)
        assert torch.equal(split.y, torch.from_numpy(labels.astype(np.int64)))
        pixels = (denormalise(split.x, bundle.meta) * 255).round().to(torch.uint8)
        assert torch.equal(pixels[:, 0], torch.from_numpy(images))
    assert bundle.num_classes == len(bundle.class_names) == 10


def test_cifar10_reads_row_major_rgb(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)]
    train_hwc, train_y = write_cifar(folder, rng, files, "labels")
    test_hwc, test_y = write_cifar(tmp_path / "test_only", rng, ["test_batch"], "labels")
    (tmp_path / "test_only" / "test_batch").rename(folder / "test_batch")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f, protocol=2)

    x, y = read_cifar_batches([folder / "data_batch_1"], "labels")
    first = train_hwc[:6]
    assert x.shape == (6, 3, 32, 32) and x[2, 1, 5, 7] == first[2, 5, 7, 1]   # green plane, row 5, col 7
    assert np.array_equal(x, first.transpose(0, 3, 1, 2))

    bundle = load("cifar10", root=tmp_path)
    assert bundle.class_names == names and bundle.input_shape == (3, 32, 32)
    for split, hwc, labels in ((bundle.train, train_hwc, train_y), (bundle.test, test_hwc, test_y)):
        pixels = (denormalise(split.x, bundle.meta) * 255).round().to(torch.uint8)
        assert torch.equal(pixels, torch.from_numpy(hwc.transpose(0, 3, 1, 2).copy()))
        assert torch.equal(split.y, torch.from_numpy(labels))
    assert load("cifar10", root=tmp_path, n_train=10, seed=0).train.x.shape == (10, 3, 32, 32)


def test_cifar100_fine_labels_with_bytes_keys(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-100-python"
    train_hwc, train_y = write_cifar(folder, rng, ["train"], "fine_labels", n=20, num_classes=100,
                                     bytes_keys=True)
    test_hwc, test_y = write_cifar(tmp_path / "t", rng, ["test"], "fine_labels", n=8, num_classes=100,
                                   bytes_keys=True)
    (tmp_path / "t" / "test").rename(folder / "test")
    names = [f"class_{i}".encode() for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": names[:20]}, f, protocol=2)

    bundle = load("cifar100", root=tmp_path)
    assert bundle.num_classes == 100 and bundle.class_names[7] == "class_7"
    assert torch.equal(bundle.train.y, torch.from_numpy(train_y)) and len(bundle.test) == 8
    pixels = (denormalise(bundle.test.x, bundle.meta) * 255).round().to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(test_hwc.transpose(0, 3, 1, 2).copy()))


def fake_torchvision(monkeypatch, **classes) -> None:
    """Stand-ins for torchvision.datasets classes (no network, and no slow torchvision import)."""
    datasets = types.ModuleType("torchvision.datasets")
    package = types.ModuleType("torchvision")
    package.datasets = datasets
    for name, cls in classes.items():
        setattr(datasets, name, cls)
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_download_true_fetches_through_torchvision_then_reads(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:  # like torchvision.datasets.MNIST(download=True): writes the raw files
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (tmp_path / "MNIST" / "raw").exists():
                write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(4))

    fake_torchvision(monkeypatch, MNIST=FakeMNIST)
    bundle = load("mnist", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert len(bundle.train) == 30 and len(bundle.test) == 12


# ---------------------------------------------------------------------------- errors

def test_missing_mnist_error_says_what_where_and_what_instead(tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        load("mnist", root=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "download=True" in message
    assert "--download" in message and "KDWB_DATA" in message and "'digits'" in message


def test_missing_cifar_error_names_only_missing_files_and_uses_kdwb_data(tmp_path, monkeypatch):
    monkeypatch.setenv("KDWB_DATA", str(tmp_path))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"")
    with pytest.raises(DatasetUnavailableError) as info:
        load("cifar10")
    message = str(info.value)
    assert str(folder) in message and "data_batch_2" in message and "batches.meta" in message
    assert "data_batch_1," not in message and "'shapes'" in message
    with pytest.raises(DatasetUnavailableError, match="cifar-100-python"):
        load("cifar100")


def test_failed_download_is_reported(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("network is unreachable")

    fake_torchvision(monkeypatch, FashionMNIST=offline)
    with pytest.raises(DatasetUnavailableError, match="network is unreachable.*'digits'"):
        load("fashion_mnist", root=tmp_path, download=True)


@pytest.mark.parametrize("name, kwargs, error, text", [
    ("digits", {"n_train": 0}, ValueError, "n_train.*0"),
    ("digits", {"n_train": 5000}, ValueError, "1347.*5000"),
    ("digits", {"n_train": 2.5}, TypeError, "2.5"),
    ("digits", {"seed": -1}, ValueError, "seed.*-1"),
    ("digits", {"colour": True}, TypeError, "'colour'.*n_train, seed"),
    ("shapes", {"size": 8}, ValueError, "size.*8"),
    ("shapes", {"size": 200}, ValueError, "size.*200"),
    ("shapes", {"n_train": -3}, ValueError, "n_train.*-3"),
    ("shapes", {"noise": -0.5}, ValueError, "noise.*-0.5"),
    ("shapes", {"distractors": "two"}, TypeError, "distractors.*'two'"),
    ("cifar10", {"train_size": 10}, TypeError, "'train_size'"),
])
def test_bad_arguments_name_the_value(name, kwargs, error, text):
    with pytest.raises(error, match=text):
        load(name, **kwargs)


def test_a_subset_sees_exactly_the_inputs_of_the_whole_split():
    """A teacher trained on all digits and a student on a subset must see the same test images."""
    full, few = data.load("digits"), data.load("digits", n_train=50, seed=3)
    assert torch.equal(full.test.x, few.test.x)
    assert few.meta["mean"] == full.meta["mean"] and few.meta["std"] == full.meta["std"]
    rows = (full.train.x.flatten(1)[:, None, :] == few.train.x.flatten(1)[None]).all(-1)  # (N, 50)
    assert rows.any(0).all()  # every subset image is one of the whole split's, unchanged
