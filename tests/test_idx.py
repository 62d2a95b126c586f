"""Fashion-MNIST and MNIST from IDX files, and their cluttered variant.

The tiny IDX files are written byte by byte in the official format (a big-endian magic number
``0x0000 08 <ndim>``, the dimensions as big-endian int32, then the uint8 data), raw and gzipped,
and read through the same path as a user's run (``DataConfig`` → loaders). One test reads the real
Fashion-MNIST that Debian's ``dataset-fashion-mnist`` installs (``make data`` installs it).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rfsearch import data as rfdata
from rfsearch.cli import main
from rfsearch.data import cluttered
from rfsearch.data.idx import FILES, SOURCES, IdxSplits, load_idx
from rfsearch.errors import RfsearchError
from rfsearch.space.data_config import ClutteredConfig, DataConfig

from tests import tiny

DEBIAN_DIR = SOURCES["fashion_mnist"].debian_dir
TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 2


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """``array`` (uint8) as an IDX file: magic 0x00000800 | ndim, each dimension, the bytes."""
    raw = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def tiny_split(per_class: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixel (0, 0) is 10·label + 5 and whose others are distinct per image (``offset`` apart per split)."""
    labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    images[:, 1:, :] = (offset + np.arange(len(labels)))[:, None, None]
    images[:, 0, 0] = labels * 10 + 5
    return images, labels


def write_dataset(folder: Path, gz: bool) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    (train_x, train_y), (test_x, test_y) = tiny_split(TRAIN_PER_CLASS, 100), tiny_split(TEST_PER_CLASS, 200)
    for name, array in zip(FILES, (train_x, train_y, test_x, test_y), strict=True):
        write_idx(folder / name, array, gz)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzipped"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_idx_files_load_through_the_user_path(tmp_path: Path, gz: bool, layout: str) -> None:
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    arrays = write_dataset(folder, gz)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path), resolution=32, augment=False)
    assert rfdata.num_classes(cfg) == 10 and rfdata.native_resolution(cfg) == 28
    loaders = rfdata.build_train_loaders(cfg, batch_size=8, seed=0, eval_batch_size=20)
    assert len(loaders.train.dataset) == 40
    x, y = next(iter(loaders.val))
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == arrays["test_y"].tolist()
    mean, std = arrays["train_x"].mean() / 255, arrays["train_x"].std() / 255  # the training images' own statistics
    pixels = (x * std + mean) * 255
    assert torch.allclose(pixels[:, :, 2, 2], (y * 10 + 5).float()[:, None].expand(-1, 3), atol=0.01)  # (0, 0) padded by 2
    assert torch.allclose(pixels[:, :, 0, 0], torch.zeros(20, 3), atol=0.01)  # the padding is the black background
    assert torch.allclose(pixels[:, 0, 3, 2], torch.from_numpy(arrays["test_x"][:, 1, 0]).float(), atol=0.01)


def test_search_split_and_limits_on_idx(tmp_path: Path) -> None:
    write_dataset(tmp_path, gz=True)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), train_limit=20, val_limit=10)
    loaders = rfdata.build_search_loaders(cfg, batch_size=5, seed=3)
    weight_labels = [int(y) for _, y in loaders.weight.dataset]
    meta_labels = [int(y) for _, y in loaders.meta.dataset]
    assert np.bincount(weight_labels, minlength=10).tolist() == [1] * 10  # 20 of 40, stratified, halved
    assert np.bincount(meta_labels, minlength=10).tolist() == [1] * 10
    assert sorted(int(y) for _, y in loaders.val.dataset) == list(range(10))


def test_grey_images_follow_the_backbone_channels_and_resolution(tmp_path: Path) -> None:
    write_dataset(tmp_path, gz=False)
    one = rfdata.build_datasets(DataConfig(dataset="mnist", root=str(tmp_path), channels=1))
    assert one.val[0][0].shape == (1, 28, 28)
    resized = rfdata.build_datasets(DataConfig(dataset="mnist", root=str(tmp_path), resolution=64))
    assert resized.train[0][0].shape == (3, 64, 64) and resized.val[0][0].shape == (3, 64, 64)
    with pytest.raises(RfsearchError, match="must be 1 or 3, not 2"):
        rfdata.build_datasets(DataConfig(dataset="mnist", root=str(tmp_path), channels=2))


@pytest.mark.parametrize(("dataset", "flips"), [("fashion_mnist", True), ("mnist", False)])
def test_horizontal_flips_only_where_they_keep_the_label(tmp_path: Path, dataset: str, flips: bool) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    images = np.zeros((10, 28, 28), np.uint8)
    images[:, 14, 1] = 255  # one bright pixel near the left edge
    for name, array in zip(FILES, (images, np.arange(10), images, np.arange(10)), strict=True):
        write_idx(folder / name, array, gz=False)
    train = rfdata.build_datasets(DataConfig(dataset=dataset, root=str(folder), resolution=32)).train
    torch.manual_seed(0)
    columns = [int(train[0][0][0].amax(dim=0).argmax()) for _ in range(60)]
    assert max(columns) - min(columns) > 0  # the random crop moves the item
    assert (max(columns) > 16) == flips  # a flip puts the pixel in the right half; the crop alone cannot


def test_malformed_idx_files_are_one_line_errors(tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(RfsearchError, match="t10k-images-idx3-ubyte: not a readable IDX image file") as bad:
        load_idx("fashion_mnist", str(tmp_path))
    assert "\n" not in str(bad.value)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", arrays["test_x"], gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["test_y"][:-1], gz=False)
    with pytest.raises(RfsearchError, match="holds 20 images but .* 19 labels"):
        load_idx("fashion_mnist", str(tmp_path))


def test_missing_data_is_one_line_exit_2_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")  # a partial copy: the message names what lacks
    sets = [*tiny.TINY, "data.dataset=fashion_mnist", f"data.root={tmp_path}"]
    argv = ["rfsearch", "search", "spaces/custom_backbone.yaml", "--out", str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)]]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: Fashion-MNIST not found")
    assert f"{tmp_path} lacks train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in err
    assert "sudo apt-get install dataset-fashion-mnist" in err and "data.download: true" in err


def test_mnist_without_a_debian_package_points_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RFSEARCH_CACHE", str(tmp_path))
    with pytest.raises(RfsearchError) as missing:
        load_idx("mnist")
    message = str(missing.value)
    assert f"{tmp_path / 'mnist' / 'MNIST' / 'raw'} does not exist" in message
    assert "apt-get" not in message and "data.download: true" in message


@pytest.mark.skipif(DEBIAN_DIR is None or not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (make data installs it)")
def test_real_fashion_mnist_from_the_debian_package() -> None:
    splits = rfdata.build_datasets(DataConfig(dataset="fashion_mnist", resolution=32))  # root: the package's folder
    assert len(splits.train) == 60_000 and len(splits.val) == 10_000
    assert np.bincount(splits.train_labels).tolist() == [6000] * 10 and np.bincount(splits.val_labels).tolist() == [1000] * 10
    raw = load_idx("fashion_mnist")
    assert raw.train_x.shape == (60_000, 28, 28) and raw.test_x.dtype == torch.uint8
    assert raw.train_x.float().mean().item() / 255 == pytest.approx(0.2860, abs=1e-4)  # the published statistics
    assert (raw.train_x.float() / 255).std().item() == pytest.approx(0.3530, abs=1e-4)
    train = {hashlib.blake2b(img.numpy().tobytes(), digest_size=16).digest() for img in raw.train_x}
    assert not any(hashlib.blake2b(img.numpy().tobytes(), digest_size=16).digest() in train for img in raw.test_x)
    for i in (0, 1, 9_999):
        x, y = splits.val[i]
        assert x.shape == (3, 32, 32) and y == int(raw.test_y[i])
        assert torch.equal(x[0], x[2])  # grey repeated to the backbone's three channels
    assert [int(raw.test_y[i]) for i in range(3)] == [9, 2, 1]  # ankle boot, pullover, trouser: the file's first labels


# ----------------------------------------------------------------------------- cluttered


def _source(n_train: int = 30, n_test: int = 10) -> IdxSplits:
    """Full, flat items: 100 in every training pixel, 200 in every test pixel."""
    train = torch.full((n_train, 28, 28), 100, dtype=torch.uint8)
    test = torch.full((n_test, 28, 28), 200, dtype=torch.uint8)
    return IdxSplits(train, torch.arange(n_train) % 10, test, torch.arange(n_test) % 10)


def test_cluttered_is_a_function_of_its_seed() -> None:
    cfg = ClutteredConfig(canvas_size=40, fragments=3, fragment_size=6, seed=5)
    first, again = cluttered.generate(cfg, _source()), cluttered.generate(cfg, _source())
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = cluttered.generate(cfg.model_copy(update={"seed": 6}), _source())
    assert not torch.equal(first.train_x, other.train_x)
    assert first.train_x.shape == (30, 40, 40) and torch.equal(first.train_y, _source().train_y)


def test_cluttered_places_the_item_among_fragments_of_its_own_split() -> None:
    cfg = ClutteredConfig(canvas_size=48, fragments=4, fragment_size=5)
    splits = cluttered.generate(cfg, _source())
    assert set(splits.train_x.unique().tolist()) == {0, 100} and set(splits.test_x.unique().tolist()) == {0, 200}
    lit = (splits.train_x > 0).flatten(1).sum(1)
    assert bool((lit >= 28 * 28).all()) and bool((lit <= 28 * 28 + 4 * 25).all()) and bool((lit > 28 * 28).any())
    bare = cluttered.generate(cfg.model_copy(update={"fragments": 0}), _source())
    assert bool(((bare.train_x > 0).flatten(1).sum(1) == 28 * 28).all())  # the item alone, whole, somewhere


def test_cluttered_cache_is_written_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RFSEARCH_CACHE", str(tmp_path))
    cfg = ClutteredConfig(canvas_size=32, fragments=2)
    made = cluttered.make_cluttered("mnist", cfg, _source())
    path = cluttered.cache_path("mnist", cfg, _source())
    assert path.parent == tmp_path and path.is_file()
    stamp = path.stat().st_mtime_ns
    loaded = cluttered.make_cluttered("mnist", cfg, _source())
    assert path.stat().st_mtime_ns == stamp and all(torch.equal(a, b) for a, b in zip(made, loaded, strict=True))
    assert cluttered.cache_path("mnist", cfg.model_copy(update={"seed": 1}), _source()) != path


def test_cluttered_dataset_through_the_user_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RFSEARCH_CACHE", str(tmp_path / "cache"))
    write_dataset(tmp_path / "idx", gz=True)
    cfg = DataConfig(dataset="fashion_mnist_cluttered", root=str(tmp_path / "idx"), cluttered={"canvas_size": 40, "fragments": 2})
    assert rfdata.native_resolution(cfg) == 40 and rfdata.num_classes(cfg) == 10
    splits = rfdata.build_datasets(cfg)
    assert splits.train[0][0].shape == (3, 40, 40) and splits.val_labels.tolist() == list(range(10)) * TEST_PER_CLASS
    assert len(list((tmp_path / "cache").glob("fashion_mnist_cluttered-v1-*.npz"))) == 1


@pytest.mark.parametrize(("space_file", "dataset", "side"), [("spaces/mbv2_metapool_fashion.yaml", "fashion_mnist", 28), ("spaces/mbv2_metapool_fashion_cluttered.yaml", "fashion_mnist_cluttered", 48)])
def test_shipped_fashion_spaces_serve_what_their_backbone_expects(space_file: str, dataset: str, side: int) -> None:
    from rfsearch import load_space

    space = load_space(space_file)
    assert space.data.dataset == dataset and space.data.resolution == space.backbone.input_size == side
    assert space.data.channels == space.backbone.in_channels == 3 and rfdata.num_classes(space.data) == 10
    assert dataset == "fashion_mnist" or rfdata.native_resolution(space.data) == side  # the canvas is served as it is
