"""Fashion-MNIST and MNIST from their IDX files: where they are looked for, how they are read, and
what the user is told when they are missing.

Both data sets ship as four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), raw or gzipped. torchvision's own
readers parse them; a gzipped file is first decompressed into a private temporary folder (the
readers take a path and read it plainly), so both forms go through the same reader. Debian's
``dataset-fashion-mnist`` installs the gzipped files in /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torchvision.datasets import MNIST, FashionMNIST
from torchvision.datasets.mnist import read_image_file, read_label_file

from rfsearch.data.cache import cache_dir
from rfsearch.errors import RfsearchError

IMAGE_SIDE = 28
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IdxSource:
    """One IDX data set: its torchvision class (downloader and folder layout) and its Debian package, if any."""

    name: str
    title: str
    torchvision_class: type[MNIST]
    flips: bool  # a horizontal flip keeps the label (a shoe stays a shoe; a flipped 2 is no digit)
    debian_package: str | None = None
    debian_dir: Path | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.torchvision_class.classes)

    def download_root(self, root: str | None) -> Path:
        """Where ``download: true`` puts the files (torchvision adds ``<Class>/raw/``): ``root``, else ``<cache>/<name>``."""
        return Path(root).expanduser() if root is not None else cache_dir() / self.name

    def folders(self, root: str | None) -> list[Path]:
        """The folders searched, in order: ``root`` (else the Debian folder), then torchvision's layout."""
        first = [Path(root).expanduser()] if root is not None else [self.debian_dir] if self.debian_dir is not None else []
        return [*first, self.download_root(root) / self.torchvision_class.__name__ / "raw"]

    def how_to_get(self) -> str:
        apt = f"install Debian's package (sudo apt-get install {self.debian_package}, or make data), " if self.debian_package else ""
        return f"{apt}put the four files (raw or .gz) in one of those folders, or set data.download: true to fetch them"


SOURCES = {
    "fashion_mnist": IdxSource("fashion_mnist", "Fashion-MNIST", FashionMNIST, True, "dataset-fashion-mnist", Path("/usr/share/datasets/fashion-mnist")),
    "mnist": IdxSource("mnist", "MNIST", MNIST, False),  # Debian packages no MNIST (apt-cache search mnist)
}


class IdxSplits(NamedTuple):
    """uint8 images (N, 28, 28) and int64 labels (N,) of the training and test files."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def read_idx(path: Path, reader: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """``reader`` (torchvision's ``read_image_file`` or ``read_label_file``) on ``path``, gunzipped first if it ends in .gz."""
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.TemporaryDirectory(prefix="rfsearch-idx-") as tmp:
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return reader(str(plain))
    except (AssertionError, TypeError, ValueError, RuntimeError, OSError, EOFError) as err:
        kind = "image" if reader is read_image_file else "label"
        raise RfsearchError(f"{path}: not a readable IDX {kind} file ({type(err).__name__}: {err or 'bad header'})") from None


def _find(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def locate(source: IdxSource, root: str | None) -> list[Path] | None:
    """The four files (in ``FILES`` order) from the first searched folder that holds all of them."""
    for folder in source.folders(root):
        found = [_find(folder, name) for name in FILES]
        if all(found):
            return found  # type: ignore[return-value]
    return None


def _not_found(source: IdxSource, root: str | None) -> RfsearchError:
    missing = []
    for folder in source.folders(root):
        lacking = [name for name in FILES if _find(folder, name) is None]
        missing.append(f"{folder} lacks {', '.join(lacking)}" if folder.is_dir() else f"{folder} does not exist")
    return RfsearchError(f"{source.title} not found: {'; '.join(missing)}. To get it, {source.how_to_get()}")


def load_idx(name: str, root: str | None = None, download: bool = False) -> IdxSplits:
    """Both splits of ``name`` (``fashion_mnist`` or ``mnist``), downloading with torchvision first if asked and missing."""
    source = SOURCES[name]
    paths = locate(source, root)
    if paths is None and download:
        target = source.download_root(root)
        try:
            source.torchvision_class(str(target), train=True, download=True)
        except (OSError, RuntimeError) as err:
            raise RfsearchError(f"could not download {source.title} into {target}: {' '.join(str(err).split())}") from err
        paths = locate(source, root)
    if paths is None:
        raise _not_found(source, root)
    train_x, train_y, test_x, test_y = (read_idx(p, read_image_file if "images" in p.name else read_label_file) for p in paths)
    for images, labels, (image_file, label_file) in ((train_x, train_y, paths[:2]), (test_x, test_y, paths[2:])):
        if len(images) != len(labels):
            raise RfsearchError(f"{image_file} holds {len(images)} images but {label_file} {len(labels)} labels")
        if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise RfsearchError(f"{image_file}: images of {tuple(images.shape[1:])} pixels, expected {IMAGE_SIDE}×{IMAGE_SIDE}")
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(source.classes):
            raise RfsearchError(f"{label_file}: labels must lie in 0..{len(source.classes) - 1}, found {int(labels.min())}..{int(labels.max())}")
    return IdxSplits(train_x, train_y, test_x, test_y)
