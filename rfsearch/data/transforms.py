"""Per-dataset train and eval transforms; all end in a normalised float32 CHW tensor.

CIFAR and ImageFolder go through torchvision's v2 transforms on PIL images (the usual recipes).
The embedded dataset and (Fashion-)MNIST with their cluttered variants are uint8 tensors in
memory. Their transforms take a *batch* (N, C, H, W) and draw each image's random numbers in the
order that image alone would draw them (torchvision's order for the crop and the flip), so a batch
gives the same tensors as its images one by one, at a fraction of the per-image cost: on 28 px
images the per-image ops cost as much as a tenth of a search step (``TensorImages.__getitems__``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

Transform = Callable[..., torch.Tensor]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_CROP_RATIO = 0.875  # ImageNet eval: resize the short side to res / 0.875, then centre-crop res


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def cifar_transforms(resolution: int, augment: bool, mean: Sequence[float], std: Sequence[float]) -> tuple[Transform, Transform]:
    """(train, eval): random crop with padding res/8 (4 px at 32) and horizontal flip; eval only resizes."""
    resize = [] if resolution == 32 else [v2.Resize(resolution, antialias=True)]
    tail = _to_normalised_tensor(mean, std)
    evaluate = v2.Compose([*resize, *tail])
    if not augment:
        return evaluate, evaluate
    train = v2.Compose([*resize, v2.RandomCrop(resolution, padding=resolution // 8), v2.RandomHorizontalFlip(), *tail])
    return train, evaluate


def imagefolder_transforms(resolution: int, augment: bool) -> tuple[Transform, Transform]:
    """(train, eval) of the MobileNetV2 recipe: RandomResizedCrop + flip; Resize(res/0.875) + CenterCrop."""
    tail = _to_normalised_tensor(IMAGENET_MEAN, IMAGENET_STD)
    evaluate = v2.Compose([v2.Resize(round(resolution / EVAL_CROP_RATIO), antialias=True), v2.CenterCrop(resolution), *tail])
    if not augment:
        return evaluate, evaluate
    train = v2.Compose([v2.RandomResizedCrop(resolution, antialias=True), v2.RandomHorizontalFlip(), *tail])
    return train, evaluate


def channel_stats(images: torch.Tensor, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) on the 0..1 scale, in chunks to bound memory."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


class NormaliseUint8:
    """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std``, resized to ``resolution`` when that differs (bilinear, antialiased)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], resolution: int | None = None) -> None:
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t
        self.resolution = resolution

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = images.to(torch.float32) * self.scale + self.shift
        if self.resolution is not None and out.shape[-1] != self.resolution:
            size = (self.resolution, self.resolution)
            out = F.interpolate(out, size=size, mode="bilinear", antialias=True, align_corners=False)
        return out


class RandomFlips:
    """Independent horizontal and vertical flips of each image, each with probability 1/2.

    For the embedded task both keep the label (a row of dots stays a row); crops are left out
    because they would cut line dots away, and transposes because they swap rows and columns.
    """

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        flips = torch.stack([torch.rand(2) < 0.5 for _ in range(len(images))])  # per image: (horizontal, vertical)
        out = images.clone()
        for dim, mask in ((-1, flips[:, 0]), (-2, flips[:, 1])):
            out[mask] = out[mask].flip(dim)
        return out


class RandomCropFlip:
    """torchvision's ``RandomCrop(size, padding)`` (zero fill) then, with ``flip``,
    ``RandomHorizontalFlip()``, on every image of a batch: the same draws in the same order as those
    transforms on one image after another (per image: top, left, then the flip), so the tensors are
    the same, and all crops are one gather from the padded batch (a flip reverses its columns)."""

    def __init__(self, size: int, padding: int, flip: bool) -> None:
        self.size, self.padding, self.flip = size, padding, flip

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        span_h, span_w = h + 2 * self.padding - self.size + 1, w + 2 * self.padding - self.size + 1
        tops, lefts, flips = [], [], []
        for _ in range(n):
            tops.append(int(torch.randint(0, span_h, size=())) if span_h > 1 else 0)
            lefts.append(int(torch.randint(0, span_w, size=())) if span_w > 1 else 0)
            flips.append(self.flip and bool(torch.rand(1) < 0.5))
        padded = F.pad(images, [self.padding] * 4)
        offsets = torch.arange(self.size)
        rows = torch.tensor(tops)[:, None] + offsets
        cols = torch.tensor(lefts)[:, None] + offsets
        cols[flips] = cols[flips].flip(-1)
        crops = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, size, size, C)
        return crops.permute(0, 3, 1, 2).contiguous()


class RepeatChannels:
    """Grey (N, 1, H, W) to ``channels`` identical channels, for a backbone whose first conv takes RGB."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.repeat(1, self.channels, 1, 1)


def embedded_transforms(resolution: int, augment: bool, mean: Sequence[float], std: Sequence[float]) -> tuple[Transform, Transform]:
    """(train, eval) for uint8 batches: optional flips, then normalise (and resize if ``resolution`` differs)."""
    evaluate = NormaliseUint8(mean, std, resolution)
    if not augment:
        return evaluate, evaluate
    return v2.Compose([RandomFlips(), evaluate]), evaluate


def fit_resolution(native: int, resolution: int) -> list[v2.Transform]:
    """Grey items on a black background to ``resolution``: zero padding when that is at most a quarter
    larger (28 → 32 keeps every pixel 1:1, as LeNet did), a bilinear resize otherwise."""
    extra = resolution - native
    if extra == 0:
        return []
    if 0 < extra <= native // 4:
        before = extra // 2
        return [v2.Pad([before, before, extra - before, extra - before])]  # left, top, right, bottom
    return [v2.Resize(resolution, antialias=True)]


def grey_transforms(
    native: int, resolution: int, augment: bool, flips: bool, mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[Transform, Transform]:
    """(train, eval) for uint8 grey batches (N, 1, H, W): fit to ``resolution``; in training a random
    crop with padding res/8 and, where ``flips`` keeps the label, a horizontal flip; normalise;
    repeat to ``channels`` (1 or 3) for the backbone's first conv."""
    fit = fit_resolution(native, resolution)
    tail: list[Transform] = [NormaliseUint8(mean, std)] + ([RepeatChannels(3)] if channels == 3 else [])
    evaluate = v2.Compose([*fit, *tail])
    if not augment:
        return evaluate, evaluate
    return v2.Compose([*fit, RandomCropFlip(resolution, resolution // 8, flips), *tail]), evaluate
