"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, read from torchvision's on-disk layout.

The files live under ``root`` (default: ``$KDWB_DATA``, else ``~/.kdwb/data``):

- ``<root>/MNIST/raw/`` and ``<root>/FashionMNIST/raw/``: IDX files (``*-ubyte``, optionally ``.gz``);
- ``<root>/cifar-10-batches-py/``: ``data_batch_1..5``, ``test_batch``, ``batches.meta`` (pickles);
- ``<root>/cifar-100-python/``: ``train``, ``test``, ``meta`` (pickles).

We read them with our own small readers (torchvision's classes check md5 sums, which small test
files cannot match). ``download=True`` asks torchvision to fetch the files into ``root`` first.
Missing files raise :class:`DatasetUnavailableError` saying what is missing, where, and what to do.
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.data.bundle import DataBundle
from workbench.data.common import DatasetUnavailableError, image_bundle, train_index
from workbench.registry import DATASETS

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049      # IDX: uint8 with 3 dims, uint8 with 1 dim
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass(frozen=True)
class Source:
    """Where one dataset lives under ``root``, and what to suggest when it is not there."""

    name: str
    folder: str                 # relative to root
    files: tuple[str, ...]
    torchvision_class: str      # in torchvision.datasets, used only to download
    offline_alternative: str    # an embedded dataset


def default_root() -> Path:
    """``$KDWB_DATA`` if set, else ``~/.kdwb/data``."""
    return Path(os.environ.get("KDWB_DATA") or "~/.kdwb/data").expanduser()


# ---------------------------------------------------------------------------- readers

def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (plain or ``.gz``) into a numpy array of its own dtype and shape."""
    with _open(Path(path)) as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise ValueError(f"{path}: IDX magic number {magic}, expected {expect_magic}")
    dtype, ndim = IDX_DTYPES.get(data[2]), data[3]
    if data[:2] != b"\0\0" or dtype is None:
        raise ValueError(f"{path} is not an IDX file (magic number {magic})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype[1:])


def read_pickle(path: str | Path) -> dict:
    """Read a CIFAR pickle; keys and string values come back as ``str`` whether stored as bytes or not."""
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    text = lambda s: s.decode("latin1") if isinstance(s, bytes) else s  # noqa: E731
    return {text(k): [text(s) for s in v] if isinstance(v, list) else v for k, v in raw.items()}


def _existing(folder: Path, name: str) -> Path:
    """``folder/name``, or its ``.gz`` twin if only that one exists."""
    path = folder / name
    return path if path.exists() or not Path(f"{path}.gz").exists() else Path(f"{path}.gz")


def read_mnist_folder(folder: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, test) pairs of (N, 1, 28, 28) uint8 images and (N,) labels from an MNIST-style raw folder."""
    arrays = [read_idx(_existing(folder, name), IMAGES_MAGIC if "images" in name else LABELS_MAGIC)
              for name in MNIST_FILES]
    return (arrays[0][:, None], arrays[1]), (arrays[2][:, None], arrays[3])


def read_cifar_batches(paths: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) labels from CIFAR pickles (rows of 3,072 R, G, B bytes)."""
    batches = [read_pickle(p) for p in paths]
    x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    return x, y


# ---------------------------------------------------------------------------- locating files

def locate(source: Source, root: str | Path | None, download: bool) -> Path:
    """The folder holding ``source``'s files; download them first if asked, else raise if missing."""
    root = Path(os.path.abspath(Path(root).expanduser() if root is not None else default_root()))
    folder = root / source.folder
    if download:
        _download(source, root, folder)
    missing = [name for name in source.files if not _existing(folder, name).exists()]
    if missing:
        raise DatasetUnavailableError(_unavailable_message(source, folder, missing))
    return folder


def _download(source: Source, root: Path, folder: Path) -> None:
    import torchvision.datasets  # imported here: only downloads need it

    try:
        for train in (True, False):
            getattr(torchvision.datasets, source.torchvision_class)(str(root), train=train, download=True)
    except Exception as err:  # no network, server down, disk full: say what we were doing
        message = _unavailable_message(source, folder, list(source.files))
        raise DatasetUnavailableError(f"download failed ({err}). {message}") from err


def _unavailable_message(source: Source, folder: Path, missing: list[str]) -> str:
    alt = source.offline_alternative
    return (f"dataset {source.name!r} is not on this machine: missing {', '.join(missing)} "
            f"in {folder}. To get it, either pass download=True (wb.data.load({source.name!r}, "
            f"download=True), or `kdwb distill --dataset {source.name} --download`) on a machine with "
            f"internet, or copy the files into {folder}, or set KDWB_DATA to a folder that holds "
            f"{source.folder}/. Offline, use the embedded dataset {alt!r} instead: wb.data.load({alt!r}).")


# ---------------------------------------------------------------------------- loaders

MNIST = Source("mnist", "MNIST/raw", MNIST_FILES, "MNIST", "digits")
FASHION_MNIST = Source("fashion_mnist", "FashionMNIST/raw", MNIST_FILES, "FashionMNIST", "digits")
CIFAR10 = Source("cifar10", "cifar-10-batches-py",
                 tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
                 "CIFAR10", "shapes")
CIFAR100 = Source("cifar100", "cifar-100-python", ("train", "test", "meta"), "CIFAR100", "shapes")


def _load_mnist_family(source: Source, class_names: list[str], root, download, n_train, seed) -> DataBundle:
    folder = locate(source, root, download)
    train, test = read_mnist_folder(folder)
    keep = train_index(train[1], n_train, seed, source.name)
    return image_bundle(source.name, train, test, class_names, keep=keep,
                        meta={"folder": str(folder), "n_train": n_train, "seed": seed})


def _load_cifar(source: Source, train_files: list[str], test_files: list[str], meta_file: str,
                label_key: str, names_key: str, root, download, n_train, seed) -> DataBundle:
    folder = locate(source, root, download)
    train = read_cifar_batches([folder / f for f in train_files], label_key)
    test = read_cifar_batches([folder / f for f in test_files], label_key)
    keep = train_index(train[1], n_train, seed, source.name)
    return image_bundle(source.name, train, test, read_pickle(folder / meta_file)[names_key], keep=keep,
                        meta={"folder": str(folder), "n_train": n_train, "seed": seed})


@DATASETS.register("mnist", kind="download", modality="image",
                   description="MNIST handwritten digits: 70,000 grey 28x28 images, 10 classes")
def mnist(root: str | Path | None = None, download: bool = False,
          n_train: int | None = None, seed: int = 0) -> DataBundle:
    """MNIST as (N, 1, 28, 28) float32 images from ``<root>/MNIST/raw``; offline alternative: ``digits``."""
    return _load_mnist_family(MNIST, [str(d) for d in range(10)], root, download, n_train, seed)


@DATASETS.register("fashion_mnist", kind="download", modality="image",
                   description="Fashion-MNIST clothing: 70,000 grey 28x28 images, 10 classes")
def fashion_mnist(root: str | Path | None = None, download: bool = False,
                  n_train: int | None = None, seed: int = 0) -> DataBundle:
    """Fashion-MNIST as (N, 1, 28, 28) float32 images from ``<root>/FashionMNIST/raw``."""
    return _load_mnist_family(FASHION_MNIST, FASHION_CLASSES, root, download, n_train, seed)


@DATASETS.register("cifar10", kind="download", modality="image",
                   description="CIFAR-10: 60,000 RGB 32x32 images, 10 classes")
def cifar10(root: str | Path | None = None, download: bool = False,
            n_train: int | None = None, seed: int = 0) -> DataBundle:
    """CIFAR-10 as (N, 3, 32, 32) float32 images from ``<root>/cifar-10-batches-py``."""
    return _load_cifar(CIFAR10, list(CIFAR10.files[:5]), ["test_batch"], "batches.meta",
                       "labels", "label_names", root, download, n_train, seed)


@DATASETS.register("cifar100", kind="download", modality="image",
                   description="CIFAR-100: 60,000 RGB 32x32 images, 100 fine classes")
def cifar100(root: str | Path | None = None, download: bool = False,
             n_train: int | None = None, seed: int = 0) -> DataBundle:
    """CIFAR-100 (fine labels) as (N, 3, 32, 32) float32 images from ``<root>/cifar-100-python``."""
    return _load_cifar(CIFAR100, ["train"], ["test"], "meta",
                       "fine_labels", "fine_label_names", root, download, n_train, seed)
