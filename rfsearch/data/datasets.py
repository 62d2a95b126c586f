"""The train and validation datasets of each ``data.dataset``, their labels, and user-facing errors for missing files.

Labels are read without decoding any image (CIFAR's and ImageFolder's ``targets``, the embedded
and IDX label tensors), so splitting and ``num_classes`` stay cheap on ImageNet-sized folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import find_classes

from rfsearch.data import transforms as T
from rfsearch.data.cache import cache_dir
from rfsearch.data.cluttered import make_cluttered
from rfsearch.data.embedded import NUM_CLASSES as EMBEDDED_CLASSES
from rfsearch.data.embedded import make_embedded
from rfsearch.data.idx import IMAGE_SIDE, SOURCES, load_idx
from rfsearch.errors import RfsearchError
from rfsearch.space.data_config import GRAYSCALE_DATASETS, DataConfig

NATIVE_RESOLUTION = {"cifar10": 32, "cifar100": 32, "imagefolder": 224}


@dataclass(frozen=True)
class _Cifar:
    cls: type[CIFAR10]
    title: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int


_CIFAR = {
    "cifar10": _Cifar(CIFAR10, "CIFAR-10", T.CIFAR10_MEAN, T.CIFAR10_STD, 10),
    "cifar100": _Cifar(CIFAR100, "CIFAR-100", T.CIFAR100_MEAN, T.CIFAR100_STD, 100),
}


@dataclass(frozen=True)
class Splits:
    """The training set (train transforms) and the validation/test set (eval transforms) with their labels."""

    train: Dataset[tuple[torch.Tensor, int]]
    val: Dataset[tuple[torch.Tensor, int]]
    train_labels: np.ndarray
    val_labels: np.ndarray


class TensorImages(Dataset[tuple[torch.Tensor, int]]):
    """In-memory uint8 images (N, C, H, W) and labels. ``transform`` takes a batch of images: a
    DataLoader's batch is transformed at once (``__getitems__``), with the same random draws, image
    by image, as one ``__getitem__`` after another, so the batches are the same either way."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: T.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index][None])[0], int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.transform(self.images[rows]).unbind(0), self.labels[rows].tolist(), strict=True))


def native_resolution(cfg: DataConfig) -> int:
    """The dataset's own image side: embedded ``image_size``, CIFAR 32, ImageFolder 224 (the ImageNet crop),
    (Fashion-)MNIST 28, their cluttered variants ``canvas_size``."""
    if cfg.dataset == "embedded":
        return cfg.embedded.image_size
    if cfg.dataset in GRAYSCALE_DATASETS:
        return cfg.cluttered.canvas_size if _cluttered(cfg) else IMAGE_SIDE
    return NATIVE_RESOLUTION[cfg.dataset]


def resolution(cfg: DataConfig) -> int:
    """The side of the tensors the loaders yield: ``cfg.resolution`` or the native one."""
    return cfg.resolution if cfg.resolution is not None else native_resolution(cfg)


def num_classes(cfg: DataConfig) -> int:
    """Classes of the dataset, without loading it (ImageFolder: the class folders under ``root/train``)."""
    if cfg.dataset == "embedded":
        return EMBEDDED_CLASSES
    if cfg.dataset in _CIFAR:
        return _CIFAR[cfg.dataset].num_classes
    if cfg.dataset in GRAYSCALE_DATASETS:
        return len(SOURCES[_idx_name(cfg)].classes)
    return len(_class_folders(_imagefolder_dir(cfg, "train")))


def build_datasets(cfg: DataConfig) -> Splits:
    """Both splits of ``cfg.dataset`` with the transforms of ``cfg`` (resolution, augment)."""
    if cfg.dataset == "embedded":
        return _embedded(cfg)
    if cfg.dataset in _CIFAR:
        return _cifar(cfg)
    if cfg.dataset in GRAYSCALE_DATASETS:
        return _grey(cfg)
    return _imagefolder(cfg)


def _embedded(cfg: DataConfig) -> Splits:
    train_x, train_y, test_x, test_y = make_embedded(cfg.embedded, cfg.root)
    mean, std = T.channel_stats(train_x)  # of this config's own training images
    train_tf, eval_tf = T.embedded_transforms(resolution(cfg), cfg.augment, mean, std)
    return Splits(
        TensorImages(train_x, train_y, train_tf),
        TensorImages(test_x, test_y, eval_tf),
        train_y.numpy(),
        test_y.numpy(),
    )


def _cluttered(cfg: DataConfig) -> bool:
    return cfg.dataset.endswith("_cluttered")


def _idx_name(cfg: DataConfig) -> str:
    """The IDX source of a grey dataset: ``fashion_mnist`` for ``fashion_mnist_cluttered`` too."""
    return cfg.dataset.removesuffix("_cluttered")


def _grey(cfg: DataConfig) -> Splits:
    """(Fashion-)MNIST or its cluttered variant: in-memory uint8 tensors, statistics of its own training images."""
    channels = cfg.channels if cfg.channels is not None else 3
    if channels not in (1, 3):
        raise RfsearchError(f"{cfg.dataset} images are grey: data.channels (default: backbone.in_channels) must be 1 or 3, not {channels}")
    name = _idx_name(cfg)
    splits = load_idx(name, cfg.root, cfg.download)
    if _cluttered(cfg):
        splits = make_cluttered(name, cfg.cluttered, splits)
    train_x, test_x = splits.train_x[:, None], splits.test_x[:, None]  # (N, 1, H, W)
    mean, std = T.channel_stats(train_x)
    train_tf, eval_tf = T.grey_transforms(native_resolution(cfg), resolution(cfg), cfg.augment, SOURCES[name].flips, mean, std, channels)
    return Splits(TensorImages(train_x, splits.train_y, train_tf), TensorImages(test_x, splits.test_y, eval_tf), splits.train_y.numpy(), splits.test_y.numpy())


def cifar_root(cfg: DataConfig) -> Path:
    """``data.root``, or ``<cache>/<dataset>`` (where ``download: true`` puts the archive) when unset."""
    return Path(cfg.root).expanduser() if cfg.root is not None else cache_dir() / cfg.dataset


def _cifar(cfg: DataConfig) -> Splits:
    spec = _CIFAR[cfg.dataset]
    root = cifar_root(cfg)
    folder = root / spec.cls.base_folder
    if cfg.download:
        try:
            spec.cls(root, train=True, download=True)
        except (OSError, RuntimeError) as err:
            raise RfsearchError(f"could not download {spec.title} into {root}: {err}") from err
    expected = [name for name, _ in spec.cls.train_list + spec.cls.test_list] + [spec.cls.meta["filename"]]
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise RfsearchError(
            f"{spec.title} not found: {folder} lacks {', '.join(missing)}. Put the python version of the dataset "
            f"there (extract {spec.cls.url} into {root}), or set data.download: true to fetch it"
        )
    train_tf, eval_tf = T.cifar_transforms(resolution(cfg), cfg.augment, spec.mean, spec.std)
    try:
        train = spec.cls(root, train=True, transform=train_tf)
        val = spec.cls(root, train=False, transform=eval_tf)
    except RuntimeError as err:  # torchvision's md5 check of every file
        raise RfsearchError(
            f"{spec.title} in {folder} failed torchvision's checksum check ({err}): replace it with the official files"
        ) from err
    return Splits(train, val, np.asarray(train.targets, dtype=np.int64), np.asarray(val.targets, dtype=np.int64))


def _imagefolder_dir(cfg: DataConfig, split: str) -> Path:
    if cfg.root is None:
        raise RfsearchError("data.root must name the folder that holds train/ and val/ (one subfolder per class)")
    path = Path(cfg.root).expanduser() / split
    if not path.is_dir():
        raise RfsearchError(f"{path} not found: imagefolder expects {path.parent}/train/<class>/<image> and {path.parent}/val/<class>/<image>")
    return path


def _class_folders(path: Path) -> list[str]:
    try:
        return find_classes(str(path))[0]
    except FileNotFoundError as err:
        raise RfsearchError(f"{path} holds no class folders: put each class's images in {path}/<class>/") from err


def _imagefolder(cfg: DataConfig) -> Splits:
    train_dir, val_dir = _imagefolder_dir(cfg, "train"), _imagefolder_dir(cfg, "val")
    train_classes, val_classes = _class_folders(train_dir), _class_folders(val_dir)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise RfsearchError(f"{train_dir} and {val_dir} must hold the same class folders; only in train: {only_train}, only in val: {only_val}")
    train_tf, eval_tf = T.imagefolder_transforms(resolution(cfg), cfg.augment)
    try:
        train = ImageFolder(str(train_dir), transform=train_tf)
        val = ImageFolder(str(val_dir), transform=eval_tf)
    except FileNotFoundError as err:  # a class folder without a single image file
        raise RfsearchError(str(err)) from err
    return Splits(train, val, np.asarray(train.targets, dtype=np.int64), np.asarray(val.targets, dtype=np.int64))
