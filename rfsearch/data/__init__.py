"""Datasets and loaders: the embedded "dotted lines in clutter" task, CIFAR-10/100, ImageFolder, and
(Fashion-)MNIST from IDX files with their cluttered variants.

``build_search_loaders`` splits the training set into a weight part and a meta part (the search
never reads the validation split); ``build_train_loaders`` serves retraining. Call
``set_epoch(loader, seed, epoch)`` before each epoch. docs/data.md describes the datasets.
"""

from rfsearch.data.cache import cache_dir
from rfsearch.data.cluttered import make_cluttered
from rfsearch.data.datasets import Splits, build_datasets, native_resolution, num_classes, resolution
from rfsearch.data.embedded import CLASS_NAMES, EmbeddedSplits, generate, make_embedded
from rfsearch.data.idx import IdxSplits, load_idx
from rfsearch.data.loaders import SearchLoaders, TrainLoaders, build_search_loaders, build_train_loaders, set_epoch
from rfsearch.data.split import stratified_split, stratified_take

__all__ = [
    "CLASS_NAMES",
    "EmbeddedSplits",
    "IdxSplits",
    "SearchLoaders",
    "Splits",
    "TrainLoaders",
    "build_datasets",
    "build_search_loaders",
    "build_train_loaders",
    "cache_dir",
    "generate",
    "load_idx",
    "make_cluttered",
    "make_embedded",
    "native_resolution",
    "num_classes",
    "resolution",
    "set_epoch",
    "stratified_split",
    "stratified_take",
]
