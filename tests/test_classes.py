"""The classifier fits the data: an import-path backbone gets ``num_classes`` from the dataset when
its callable takes it (by name, or through ``**kwargs`` as timm's ``create_model`` does), and
top-5 accuracy is reported only where it says something (more than 5 classes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from examples.custom_backbone import TinyNet
from rfsearch import build_supernet, describe_space, load_space
from rfsearch.train.engine import evaluate
from tests import tiny


@pytest.mark.parametrize(
    ("backbone", "head"),
    [
        (["backbone.name=examples.custom_backbone:TinyNet"], 3),  # num_classes by name
        (["backbone.name=tests.user_code:create_model", "backbone.kwargs.model_name=tinynet"], 3),  # through **kwargs
        (["backbone.name=tests.user_code:fixed_head"], 7),  # not taken: the head stays as built
    ],
)
def test_import_path_backbones_get_the_data_classes_when_they_take_them(backbone: list[str], head: int) -> None:
    space = load_space("spaces/custom_backbone.yaml", [*tiny.TINY, *backbone])  # the embedded task: 3 classes
    assert build_supernet(space, 3).net.head[-1].out_features == head
    facts = describe_space(space)  # what `rfsearch inspect` shows is what the search builds
    assert facts["backbone"]["params"] == sum(p.numel() for p in TinyNet(num_classes=head, width=8).parameters())


@pytest.mark.parametrize(("classes", "reported"), [(3, False), (5, False), (6, True), (10, True)])
def test_top5_is_reported_only_with_more_than_5_classes(classes: int, reported: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, classes))
    batches = [(torch.randn(8, 3, 2, 2), torch.randint(0, classes, (8,))) for _ in range(2)]
    scores = evaluate(model, batches, torch.device("cpu"))
    assert (scores["top5"] is not None) == reported
    if reported:
        assert scores["top1"] <= scores["top5"] <= 100
