"""The YAML ``data:`` section: which dataset, where it lives, how the search splits it.

Kept apart from ``schema.py`` so that ``rfsearch.data`` can import it without importing the
rest of the DSL (ops, graph), and so that its validation errors keep their YAML key paths.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rfsearch.space.base import StrictModel


class EmbeddedConfig(StrictModel):
    """The procedural "dotted lines in clutter" task (docs/data.md): no download, seconds to make.

    Every image holds the same number of identical dots. In class 0 ``line_dots`` of them sit
    evenly spaced on one row across the whole image, in class 1 on one column, in class 2
    nowhere in particular. Neighbouring line dots are ``image_size // line_dots`` pixels apart,
    so a unit that sees less than about two spacings cannot tell a line dot from clutter.
    """

    seed: int = Field(0, description="the whole dataset is a function of this seed and the fields below")
    train_size: int = Field(4000, ge=6, description="training images (classes balanced)")
    test_size: int = Field(1000, ge=3, description="held-out test images, never used by the search")
    image_size: int = Field(64, ge=8, le=512, description="square images, pixels per side")
    line_dots: int = Field(6, ge=3, description="dots on the line; their spacing is image_size // line_dots")
    clutter_density: float = Field(0.005, ge=0.0, le=0.1, description="clutter dots per pixel of the image (20 at 64 px)")
    dot_size: int = Field(2, ge=1, le=8, description="side of a square dot, pixels")
    noise: int = Field(8, ge=0, le=64, description="amplitude of the uniform pixel noise, 0..255 scale")

    @model_validator(mode="after")
    def _line_fits(self) -> EmbeddedConfig:
        spacing = self.image_size // self.line_dots
        if spacing < self.dot_size:
            raise ValueError(
                f"{self.line_dots} line dots of {self.dot_size} px do not fit in {self.image_size} px "
                f"(spacing {spacing} < dot_size): lower line_dots or dot_size, or raise image_size"
            )
        return self

    @property
    def spacing(self) -> int:
        """Pixels between the starts of neighbouring line dots."""
        return self.image_size // self.line_dots

    @property
    def clutter(self) -> int:
        """Clutter dots per image (the line adds ``line_dots`` more; class 2 gets them as clutter)."""
        return round(self.clutter_density * self.image_size**2)


class ClutteredConfig(StrictModel):
    """Cluttered Fashion-MNIST / MNIST (docs/data.md): each item at a random place on a larger
    canvas, among fragments cut from other items of its split, so the label needs the whole canvas."""

    seed: int = Field(0, description="the canvases are a function of this seed, the fields below and the source images")
    canvas_size: int = Field(48, ge=28, le=256, description="square canvas, pixels per side (the 28 px item fits anywhere in it)")
    fragments: int = Field(4, ge=0, le=64, description="clutter fragments per canvas, each cut from another item of the split")
    fragment_size: int = Field(8, ge=1, le=28, description="side of a square fragment, pixels")


GRAYSCALE_DATASETS = ("fashion_mnist", "mnist", "fashion_mnist_cluttered", "mnist_cluttered")
DOWNLOADABLE = ("cifar10", "cifar100", *GRAYSCALE_DATASETS)


class DataConfig(StrictModel):
    """Dataset selection, split and loader settings shared by ``search`` and ``retrain``."""

    dataset: Literal["embedded", "cifar10", "cifar100", "imagefolder", "fashion_mnist", "mnist", "fashion_mnist_cluttered", "mnist_cluttered"] = "embedded"
    root: str | None = Field(
        None,
        description="cifar: folder holding cifar-10-batches-py/ or cifar-100-python/; "
        "imagefolder: folder holding train/ and val/; (fashion_)mnist: folder holding the four IDX files, "
        "flat or in torchvision's layout (None: Debian's package folder, then the cache); embedded: cache folder",
    )
    download: bool = Field(False, description="cifar and (fashion_)mnist: fetch the files into root when missing")
    resolution: int | None = Field(None, ge=8, le=1024, description="input side; None: the dataset's native size")
    channels: int | None = Field(
        None,
        ge=1,
        description="(fashion_)mnist: channels of the loaded tensors, 1 or 3 (grey repeated); None: the backbone's in_channels",
    )
    meta_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="part of the training set held out for the alpha (meta) steps")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    augment: bool = Field(True, description="training augmentation (flips; crops for cifar/imagefolder/(fashion_)mnist)")
    train_limit: int | None = Field(None, ge=2, description="use a seeded, class-stratified subset of this many training images")
    val_limit: int | None = Field(None, ge=1, description="use a seeded, class-stratified subset of this many validation images")
    embedded: EmbeddedConfig = EmbeddedConfig()
    cluttered: ClutteredConfig = ClutteredConfig()

    @model_validator(mode="after")
    def _download_is_for_known_archives(self) -> DataConfig:
        if self.download and self.dataset not in DOWNLOADABLE:
            raise ValueError(f"download is only available for {', '.join(DOWNLOADABLE)}, not {self.dataset!r}")
        return self
