"""The data layer: the embedded task, CIFAR and ImageFolder on disk in their real formats, splits and loaders.

CIFAR files are written in the official pickled layout and read by torchvision's own classes.
torchvision verifies every file against the md5 of the official release; the fixture gives that
check the md5 of the files it wrote (they are a different, tiny release), so the real integrity
check still runs: ``test_cifar_checksum_mismatch_is_a_user_error`` shows it rejecting a changed file.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from pydantic import ValidationError
from torch.utils.data import Subset
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.transforms import v2

from rfsearch import data as rfdata
from rfsearch.data import transforms as T
from rfsearch.data.datasets import TensorImages
from rfsearch.data.embedded import cache_path, generate, make_embedded
from rfsearch.data.transforms import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, RandomFlips
from rfsearch.errors import RfsearchError
from rfsearch.space.data_config import DataConfig, EmbeddedConfig

SMALL = {"image_size": 32, "train_size": 90, "test_size": 30, "line_dots": 4}


def small(**overrides: object) -> EmbeddedConfig:
    return EmbeddedConfig(**{**SMALL, **overrides})


def denormalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Back to 0..255 from a normalised (N, 3, H, W) batch."""
    return (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255


def class_counts(labels: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels[idx], minlength=k)


# ----------------------------------------------------------------------------- CIFAR on disk


def _cifar_pixels(labels: list[int]) -> np.ndarray:
    """Rows of 3072 bytes (R plane, G plane, B plane) whose colour encodes the label."""
    y = np.asarray(labels, dtype=np.uint8)
    planes = [np.repeat(v[:, None], 1024, 1) for v in (y * 2, 255 - y * 2, np.full_like(y, 7))]
    return np.concatenate(planes, 1).astype(np.uint8)


def _dump(path: Path, obj: object) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def data_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 10-class CIFAR-10 with 4 training images per class (5 batches) and 2 test images per class."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_labels = [i % 10 for i in range(40)]
    train_list = []
    for b in range(5):
        part = train_labels[b * 8 : (b + 1) * 8]
        md5 = _dump(folder / f"data_batch_{b + 1}", {"batch_label": f"batch {b + 1}", "labels": part, "data": _cifar_pixels(part)})
        train_list.append([f"data_batch_{b + 1}", md5])
    test_labels = [i % 10 for i in range(20)]
    test_md5 = _dump(folder / "test_batch", {"batch_label": "test", "labels": test_labels, "data": _cifar_pixels(test_labels)})
    meta_md5 = _dump(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", test_md5]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": meta_md5})
    return tmp_path


@pytest.fixture
def data_cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CIFAR-100 with 2 training images and 1 test image per fine class."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    def split(n_per_class: int) -> dict[str, object]:
        fine = [i % 100 for i in range(100 * n_per_class)]
        return {"filenames": [f"{i}.png" for i in range(len(fine))], "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": _cifar_pixels(fine)}

    train_md5 = _dump(folder / "train", split(2))
    test_md5 = _dump(folder / "test", split(1))
    meta_md5 = _dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    monkeypatch.setattr(CIFAR100, "train_list", [["train", train_md5]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", test_md5]])
    monkeypatch.setattr(CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": meta_md5})
    return tmp_path


def test_cifar10_loads_through_the_user_path(data_cifar10: Path) -> None:
    cfg = DataConfig(dataset="cifar10", root=str(data_cifar10), augment=False)
    assert rfdata.num_classes(cfg) == 10 and rfdata.native_resolution(cfg) == 32
    loaders = rfdata.build_train_loaders(cfg, batch_size=8, seed=0, eval_batch_size=20)
    assert len(loaders.train) == 5 and len(loaders.train.dataset) == 40
    x, y = next(iter(loaders.val))
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    pixels = denormalise(x, CIFAR10_MEAN, CIFAR10_STD)[:, :, 0, 0]
    expected = torch.stack([y * 2, 255 - y * 2, torch.full_like(y, 7)], 1).float()
    assert torch.allclose(pixels, expected, atol=0.5)  # planes decoded in the right order, labels aligned


def test_cifar100_search_split_is_stratified_and_leaves_the_test_set_alone(data_cifar100: Path) -> None:
    cfg = DataConfig(dataset="cifar100", root=str(data_cifar100), resolution=40)
    assert rfdata.num_classes(cfg) == 100
    loaders = rfdata.build_search_loaders(cfg, batch_size=10, seed=3)
    weight, meta = loaders.weight.dataset, loaders.meta.dataset
    assert isinstance(weight, Subset) and isinstance(meta, Subset) and weight.dataset is meta.dataset
    assert weight.dataset.train and not loaders.val.dataset.train  # search parts come from the training split
    w, m = np.asarray(weight.indices), np.asarray(meta.indices)
    assert not set(w) & set(m) and len(w) + len(m) == 200
    labels = np.asarray(weight.dataset.targets)
    assert (class_counts(labels, m, 100) == 1).all() and (class_counts(labels, w, 100) == 1).all()
    x, y = next(iter(loaders.weight))
    assert x.shape == (10, 3, 40, 40) and y.dtype == torch.int64


@pytest.mark.parametrize("dataset, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_cifar_names_the_folder(tmp_path: Path, dataset: str, folder: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(RfsearchError) as err:
        rfdata.build_train_loaders(DataConfig(dataset=dataset, root=str(root)), batch_size=4, seed=0)
    assert str(root / folder) in str(err.value) and "download" in str(err.value)


def test_cifar_checksum_mismatch_is_a_user_error(data_cifar10: Path) -> None:
    batch = data_cifar10 / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RfsearchError, match="checksum"):
        rfdata.build_train_loaders(DataConfig(dataset="cifar10", root=str(data_cifar10)), batch_size=4, seed=0)


# ----------------------------------------------------------------------------- ImageFolder

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "fox": (30, 30, 200)}


@pytest.fixture
def data_imagefolder(tmp_path: Path) -> Path:
    """train/ and val/ with a folder per class; PNG and JPEG files of one colour each, one of them greyscale."""
    for split, n in (("train", 4), ("val", 2)):
        for name, colour in COLOURS.items():
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (48 + 8 * i, 40), colour)
                img.save(folder / f"{i}.png") if i % 2 else img.save(folder / f"{i}.jpg", quality=95)
    Image.new("L", (40, 40), 128).save(tmp_path / "train" / "dog" / "grey.jpeg")
    return tmp_path


def test_imagefolder_loads_png_and_jpeg(data_imagefolder: Path) -> None:
    cfg = DataConfig(dataset="imagefolder", root=str(data_imagefolder), resolution=32)
    assert rfdata.num_classes(cfg) == 3 and rfdata.native_resolution(cfg) == 224
    loaders = rfdata.build_train_loaders(cfg, batch_size=4, seed=0, eval_batch_size=6)
    assert len(loaders.train.dataset) == 13 and len(loaders.train) == 3  # drop_last
    x, y = next(iter(loaders.val))
    assert x.shape == (6, 3, 32, 32)
    mean_rgb = denormalise(x, IMAGENET_MEAN, IMAGENET_STD).mean(dim=(2, 3))
    expected = torch.tensor([COLOURS[name] for name in ("cat", "dog", "fox")], dtype=torch.float32)[y]
    assert torch.allclose(mean_rgb, expected, atol=4)  # class folders map to labels in sorted order
    x, _ = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 32)  # RandomResizedCrop to the configured resolution, greyscale made RGB


def test_imagefolder_num_classes_reads_no_image(data_imagefolder: Path) -> None:
    (data_imagefolder / "train" / "eel").mkdir()
    (data_imagefolder / "train" / "eel" / "broken.jpg").write_bytes(b"not an image")
    assert rfdata.num_classes(DataConfig(dataset="imagefolder", root=str(data_imagefolder))) == 4


def test_imagefolder_errors_name_the_problem(data_imagefolder: Path, tmp_path: Path) -> None:
    with pytest.raises(RfsearchError, match="data.root"):
        rfdata.num_classes(DataConfig(dataset="imagefolder"))
    with pytest.raises(RfsearchError, match=str(tmp_path / "missing" / "train")):
        rfdata.num_classes(DataConfig(dataset="imagefolder", root=str(tmp_path / "missing")))
    (data_imagefolder / "val" / "fox").rename(data_imagefolder / "val" / "wolf")
    with pytest.raises(RfsearchError, match="only in train: \\['fox'\\], only in val: \\['wolf'\\]"):
        rfdata.build_train_loaders(DataConfig(dataset="imagefolder", root=str(data_imagefolder)), batch_size=2, seed=0)


# ----------------------------------------------------------------------------- the embedded dataset


def test_embedded_is_a_function_of_its_seed() -> None:
    a, b, c = generate(small()), generate(small()), generate(small(seed=1))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a.train_x, c.train_x) and not torch.equal(a.test_x, c.test_x)
    assert a.train_x.dtype == torch.uint8 and a.train_x.shape == (90, 3, 32, 32) and a.test_x.shape == (30, 3, 32, 32)
    assert a.train_y.dtype == torch.int64 and a.train_y.bincount().tolist() == [30, 30, 30]


def test_embedded_train_and_test_share_no_image() -> None:
    s = generate(small(train_size=600, test_size=300, noise=0, clutter_density=0.0))
    train = {img.numpy().tobytes() for img in s.train_x}
    assert len(train) > 1 and not any(img.numpy().tobytes() in train for img in s.test_x)


def test_embedded_labels_mean_what_the_docs_say() -> None:
    cfg = small(noise=0, train_size=300)
    s = generate(cfg)
    background = s.train_x.flatten(2).mode(dim=2).values  # (N, 3): the most common colour
    ink = (s.train_x != background[:, :, None, None]).any(dim=1)  # dot pixels
    # class 0: one pixel row holds all line dots; class 1: one column does
    line_pixels = cfg.line_dots * cfg.dot_size
    best_row = ink.sum(dim=2).amax(dim=1)
    best_col = ink.sum(dim=1).amax(dim=1)
    for label, best in ((0, best_row), (1, best_col)):
        assert (best[s.train_y == label] >= line_pixels).all()
    # the classes have the same amount of ink: counting dots cannot solve the task
    per_class = [ink[s.train_y == k].float().sum(dim=(1, 2)).mean().item() for k in range(3)]
    assert max(per_class) / min(per_class) < 1.1


def test_embedded_cache_is_written_once_and_reused(tmp_path: Path) -> None:
    cfg = small()
    first = make_embedded(cfg, tmp_path)
    path = cache_path(cfg, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    stamp = path.stat().st_mtime_ns
    again = make_embedded(cfg, tmp_path)
    assert path.stat().st_mtime_ns == stamp and all(torch.equal(u, v) for u, v in zip(first, again, strict=True))
    assert cache_path(small(seed=5), tmp_path) != path  # any field change is another file
    path.write_bytes(path.read_bytes()[:100])  # a damaged cache is regenerated, not trusted
    assert all(torch.equal(u, v) for u, v in zip(first, make_embedded(cfg, tmp_path), strict=True))


def test_embedded_cache_dir_comes_from_config_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RFSEARCH_CACHE", str(tmp_path / "env"))
    cfg = DataConfig(embedded=small())
    rfdata.build_train_loaders(cfg, batch_size=8, seed=0)
    assert len(list((tmp_path / "env").glob("embedded-*.npz"))) == 1
    rfdata.build_train_loaders(cfg.model_copy(update={"root": str(tmp_path / "cfg")}), batch_size=8, seed=0)
    assert len(list((tmp_path / "cfg").glob("embedded-*.npz"))) == 1


def test_flips_are_the_only_embedded_augmentation() -> None:
    img = torch.arange(2 * 3 * 4, dtype=torch.uint8).view(2, 3, 4)
    variants = {img, img.flip(-1), img.flip(-2), img.flip(-1, -2)}
    torch.manual_seed(0)
    seen = {RandomFlips()(img[None])[0].numpy().tobytes() for _ in range(64)}
    assert seen == {v.numpy().tobytes() for v in variants}


def _grey_batch(n: int = 12, side: int = 28) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("resolution", [28, 32, 40])  # as is; zero padding to fit; a bilinear resize
@pytest.mark.parametrize("flips", [True, False])
def test_grey_batches_are_torchvisions_per_image_crops_and_flips(resolution: int, flips: bool) -> None:
    """A batch draws each image's crop and flip as torchvision's RandomCrop and RandomHorizontalFlip
    draw them image after image: the same tensors, so runs before the batched loading repeat exactly."""
    images = _grey_batch()
    mean, std = [0.3], [0.2]
    train, evaluate = T.grey_transforms(28, resolution, True, flips, mean, std, channels=3)
    per_image = v2.Compose([*T.fit_resolution(28, resolution), v2.RandomCrop(resolution, padding=resolution // 8), *([v2.RandomHorizontalFlip()] if flips else [])])
    torch.manual_seed(11)
    expected = torch.stack([per_image(img) for img in images])
    next_expected = torch.rand(1)
    expected = ((expected.float() / 255 - 0.3) / 0.2).repeat(1, 3, 1, 1)
    torch.manual_seed(11)
    got = train(images)
    assert torch.equal(torch.rand(1), next_expected)  # as many draws as torchvision's, no more
    assert got.shape == (12, 3, resolution, resolution)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.manual_seed(11)
    assert torch.equal(torch.cat([train(img[None]) for img in images]), got)  # a batch = its images one by one
    assert torch.equal(evaluate(images), torch.cat([evaluate(img[None]) for img in images]))


def test_tensor_images_give_a_loader_the_batches_of_its_items() -> None:
    """``__getitems__`` (a DataLoader's batch at once) gives what ``__getitem__`` gives item by item."""
    images, labels = _grey_batch(20), torch.arange(20) % 4
    train, _ = T.grey_transforms(28, 28, True, True, [0.5], [0.25], channels=1)
    data = TensorImages(images, labels, train)
    order = [5, 0, 19, 7, 7, 12]
    torch.manual_seed(4)
    loader = torch.utils.data.DataLoader(Subset(data, order), batch_size=6, generator=torch.Generator())  # its own seed draws
    x, y = next(iter(loader))
    torch.manual_seed(4)
    items = [data[i] for i in order]
    assert torch.equal(x, torch.stack([img for img, _ in items])) and y.tolist() == [label for _, label in items]
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    torch.manual_seed(5)
    flips = RandomFlips()(images[:6])
    torch.manual_seed(5)
    assert torch.equal(flips, torch.cat([RandomFlips()(img[None]) for img in images[:6]]))


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.77])
def test_stratified_split_is_disjoint_complete_and_proportional(fraction: float) -> None:
    labels = np.repeat(np.arange(4), [7, 13, 29, 51])
    rest, held = rfdata.stratified_split(labels, fraction, seed=1)
    assert not set(rest) & set(held) and sorted([*rest, *held]) == list(range(len(labels)))
    assert len(held) == round(fraction * len(labels))
    exact = np.bincount(labels) * fraction
    assert (np.abs(class_counts(labels, held, 4) - exact) < 1).all()
    again, other = rfdata.stratified_split(labels, fraction, seed=1), rfdata.stratified_split(labels, fraction, seed=2)
    assert np.array_equal(again[1], held) and not np.array_equal(other[1], held)


def test_search_loaders_split_the_embedded_training_set(tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tmp_path), embedded=small(train_size=99), meta_fraction=0.4)
    loaders = rfdata.build_search_loaders(cfg, batch_size=8, seed=0)
    weight, meta = loaders.weight.dataset, loaders.meta.dataset
    train_x = make_embedded(cfg.embedded, tmp_path).train_x
    assert weight.dataset is meta.dataset and torch.equal(weight.dataset.images, train_x)
    assert len(loaders.val.dataset) == 30  # the test split, read only for reporting
    w, m = np.asarray(weight.indices), np.asarray(meta.indices)
    assert not set(w) & set(m) and len(w) + len(m) == 99 and len(m) == 40
    labels = weight.dataset.labels.numpy()
    assert (np.abs(class_counts(labels, m, 3) - 33 * 0.4) < 1).all()
    assert (np.abs(class_counts(labels, w, 3) - 33 * 0.6) < 1).all()
    x, y = next(iter(loaders.meta))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_limits_take_stratified_subsets(tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tmp_path), embedded=small(), train_limit=30, val_limit=12, resolution=16)
    loaders = rfdata.build_train_loaders(cfg, batch_size=5, seed=-1)  # any int seeds a run
    train, val = loaders.train.dataset, loaders.val.dataset
    assert len(train) == 30 and len(val) == 12
    assert np.bincount(train.dataset.labels.numpy()[train.indices]).tolist() == [10, 10, 10]
    assert np.bincount(val.dataset.labels.numpy()[val.indices]).tolist() == [4, 4, 4]
    assert next(iter(loaders.val))[0].shape == (5, 3, 16, 16)


def test_too_small_a_part_for_one_batch_is_a_user_error(tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tmp_path), embedded=small(), train_limit=20)
    with pytest.raises(RfsearchError, match="weight part holds 10 images"):
        rfdata.build_search_loaders(cfg, batch_size=16, seed=0)


# ----------------------------------------------------------------------------- loaders


def _order(loader: torch.utils.data.DataLoader, seed: int, epoch: int) -> list[int]:
    rfdata.set_epoch(loader, seed, epoch)
    return [int(v) for _, y in loader for v in y]


def test_training_loader_settings_and_epoch_seeding(tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tmp_path), embedded=small(), augment=False)
    loaders = rfdata.build_train_loaders(cfg, batch_size=8, seed=0)
    train, val = loaders.train, loaders.val
    assert train.drop_last and len(train) == 90 // 8 and not val.drop_last and len(val) == 4
    assert not train.pin_memory and train.num_workers == 0 and not train.persistent_workers
    assert _order(train, 0, 1) == _order(train, 0, 1)  # an epoch replays after a resume
    assert _order(train, 0, 1) != _order(train, 0, 2)
    assert _order(val, 0, 1) == _order(val, 0, 2) == loaders.val.dataset.labels.tolist()
    cuda = rfdata.build_train_loaders(cfg, batch_size=8, seed=0, device="cuda")  # the setting only; no GPU needed
    assert cuda.train.pin_memory


def test_workers_are_persistent_and_seeded(tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tmp_path), embedded=small(), workers=1)

    def first_batch(seed: int) -> torch.Tensor:
        loader = rfdata.build_train_loaders(cfg, batch_size=8, seed=seed).train
        assert loader.persistent_workers and loader.num_workers == 1
        rfdata.set_epoch(loader, seed, 0)
        return next(iter(loader))[0]

    same = first_batch(4)
    assert torch.equal(same, first_batch(4))  # flips drawn in the worker repeat with the seed
    assert not torch.equal(same, first_batch(5))


def test_distributed_loaders_use_a_distributed_sampler(tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tmp_path), embedded=small(), augment=False)
    with pytest.raises(RuntimeError, match="init_process_group"):
        rfdata.build_train_loaders(cfg, batch_size=8, seed=0, distributed=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        search = rfdata.build_search_loaders(cfg, batch_size=8, seed=0, distributed=True)
        for loader, shuffled in ((search.weight, True), (search.meta, True), (search.val, False)):
            assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.shuffle is shuffled
        assert _order(search.weight, 0, 3) == _order(search.weight, 0, 3) != _order(search.weight, 0, 4)
        assert search.weight.sampler.epoch == 4
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- the config


def test_data_config_rejects_bad_values() -> None:
    for bad in ({"meta_fraction": 0.0}, {"meta_fraction": 1.0}, {"workers": -1}, {"dataset": "svhn"}, {"shuffle": True}, {"download": True}):
        with pytest.raises(ValidationError):
            DataConfig(**bad)
    with pytest.raises(ValidationError, match="do not fit"):
        EmbeddedConfig(image_size=16, line_dots=6, dot_size=3)
    assert DataConfig(dataset="cifar10", download=True).download
    assert DataConfig(dataset="fashion_mnist_cluttered", download=True).download  # the source files are fetched
    with pytest.raises(ValidationError):
        DataConfig(dataset="mnist", cluttered={"fragment_size": 29})  # a fragment larger than an item
    assert rfdata.native_resolution(DataConfig(embedded=EmbeddedConfig(image_size=48))) == 48
