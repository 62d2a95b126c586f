"""The graph builder: insertion points, shapes, reference sizes, and exactness of the wrapping."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
import torchvision

from rfsearch import build_supernet, describe_space, load_space
from rfsearch.graph.backbone import build_backbone
from rfsearch.graph.points import match_path
from rfsearch.space.schema import SpaceConfig


def space_of(**overrides: object) -> SpaceConfig:
    data = {"backbone": {"name": "mobilenet_v2", "input_size": 224}, "insert": [{"modules": "features.*.conv.1", "types": "Conv2dNormActivation"}]}
    data.update(overrides)
    return SpaceConfig.model_validate(data)


def test_path_globs() -> None:
    assert match_path("features.2.conv.1", "features.*.conv.1")
    assert not match_path("features.2.conv.1.0", "features.*.conv.1")
    assert match_path("features.2.conv.1.0", "features.**.0")
    assert match_path("stage2.0.branch2.4", "stage*.*.branch2.4")
    assert not match_path("stage2.0.branch1.4", "stage*.*.branch2.4")


def test_mbv2_space_matches_the_authors_insertion_points() -> None:
    facts = describe_space(load_space("spaces/mbv2_metapool_imagenet.yaml", ["post=[]"]))
    assert len(facts["points"]) == 16
    assert [p["path"] for p in facts["points"]] == [f"features.{i}.conv.1" for i in range(2, 18)]
    assert facts["points"][0]["channels"] == 96 and (facts["points"][0]["height"], facts["points"][0]["width"]) == (56, 56)
    assert facts["points"][-1]["channels"] == 960 and facts["points"][-1]["height"] == 7
    assert facts["points"][0]["candidates"] == ["skip", "avgpool3", "avgpool5", "avgpool7", "maxpool3", "maxpool5", "maxpool7", "global"]
    # DESIGN.md §3 at 224×224: MACs = flop_counter FLOPs / 2
    assert facts["backbone"]["params"] == 3_504_872
    assert facts["smallest_child"]["params"] == 3_504_872
    assert facts["largest_child"]["params"] == 3_950_648
    assert abs(facts["backbone"]["macs"] / 1e6 - 300.8) < 0.1
    assert abs(facts["largest_child"]["macs"] / 1e6 - 306.7) < 0.1
    assert set(facts["largest_child"]["choices"].values()) == {"global"}


def test_shufflenet_space() -> None:
    space = load_space("spaces/shufflenetv2_metapool.yaml")
    net = build_backbone(space.backbone)
    assert sum(p.numel() for p in net.parameters()) == 2_278_604
    supernet = build_supernet(space)
    assert len(supernet.points) == 16
    assert all(p.path.endswith("branch2.4") for p in supernet.points)


def test_custom_backbone_by_import_path_and_rule_override() -> None:
    supernet = build_supernet(load_space("spaces/custom_backbone.yaml"), num_classes=7)
    assert [p.path for p in supernet.points] == [f"blocks.{i}.depthwise" for i in range(4)]
    assert supernet.points[0].candidate_names[-1] == "global"
    assert supernet.points[-1].candidate_names == ["skip", "avgpool3", "avgpool5", "maxpool3"]
    assert supernet(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_point_graph_is_the_execution_chain() -> None:
    supernet = build_supernet(space_of(backbone={"name": "mobilenet_v2", "input_size": 32, "kwargs": {"width_mult": 0.25}}))
    graph = supernet.graph()
    order = list(nx.topological_sort(graph))
    assert order == [p.path for p in supernet.points]
    assert graph.nodes[order[3]]["index"] == 3


def test_all_skip_supernet_equals_backbone_exactly() -> None:
    space = space_of(backbone={"name": "mobilenet_v2", "input_size": 64, "kwargs": {"width_mult": 0.5}})
    torch.manual_seed(0)
    backbone = build_backbone(space.backbone)
    torch.manual_seed(0)  # the supernet builds its backbone first: same weights
    supernet = build_supernet(space)
    backbone_bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    supernet_bns = [m for n, m in supernet.net.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and ".enhancer." not in n]
    assert len(backbone_bns) == len(supernet_bns)
    for a, b in zip(backbone_bns, supernet_bns):  # non-trivial statistics, so a wrong wiring shows
        stats = torch.rand(2, a.num_features) + 0.5
        for bn in (a, b):
            bn.running_mean.copy_(stats[0] - 1)
            bn.running_var.copy_(stats[1])
    for path in supernet.mixed_ops:
        supernet.fix(path, "skip")
    supernet.eval(), backbone.eval()
    x = torch.randn(3, 3, 64, 64)
    assert torch.equal(supernet(x), backbone(x))


def test_non_feature_map_module_is_refused() -> None:
    from rfsearch.errors import ConfigError

    space = space_of(insert=[{"modules": "classifier.1"}])
    with pytest.raises(ConfigError, match=r"module 'classifier.1' \(Linear\) outputs shape \(1, 1000\), not a 4-D feature map"):
        build_supernet(space)


def test_max_downsample_keeps_a_usable_final_map() -> None:
    space = space_of(backbone={"name": "mobilenet_v2", "input_size": 32, "max_downsample": 8, "kwargs": {"width_mult": 0.25}})
    supernet = build_supernet(space)
    assert supernet.points[-1].height == 4  # 32 / 8
    space = space_of(backbone={"name": "shufflenet_v2_x0_5", "input_size": 32, "max_downsample": 4}, insert=[{"modules": "stage*.*.branch2.4"}])
    supernet = build_supernet(space)
    assert supernet.points[-1].height == 8
    assert supernet(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


ZOO = torchvision.models.list_models(module=torchvision.models)


@pytest.mark.parametrize("name", ZOO)
def test_every_torchvision_classifier_builds_a_supernet(name: str) -> None:
    """A generic rule (the first Conv2d, and every Conv2d of the last third) on every
    classification model of torchvision. Built on the meta device: shapes and wiring, not numbers
    (those are tested on real tensors above), so that vit_h_14 costs no more than resnet18.
    RegNet computes its widths with tensor data in __init__, so it is built on the CPU."""
    size = 224 if name.startswith(("vit_", "swin", "maxvit")) or name == "inception_v3" else 64
    rules = [{"types": "Conv2d", "index": 0}, {"types": "Conv2d", "index": "-3:"}]
    space = space_of(backbone={"name": name, "input_size": size, "kwargs": {"num_classes": 10}}, insert=rules)
    device = "cpu" if name.startswith("regnet") else "meta"
    with torch.device(device):
        supernet = build_supernet(space).eval()
    assert 1 <= len(supernet.points) <= 4
    with torch.no_grad():
        out = supernet(torch.zeros(1, 3, size, size, device=device))
    assert out.shape == (1, 10)


def test_inspect_default_space_json(capsys) -> None:
    """`rfsearch inspect spaces/mbv2_metapool.yaml --json`: the paper's 16 points on MobileNetV2 0.5
    at 64 px, with the last map at 4×4 (max_downsample 16); sizes as torchvision counts them, with
    the 3-way classifier of the embedded task."""
    import json
    import sys

    from rfsearch.cli import main

    argv = sys.argv
    sys.argv = ["rfsearch", "inspect", "spaces/mbv2_metapool.yaml", "--json"]
    try:
        main()
    except SystemExit as done:
        assert done.code in (0, None)
    finally:
        sys.argv = argv
    facts = json.loads(capsys.readouterr().out)
    assert [p["path"] for p in facts["points"]] == [f"features.{i}.conv.1" for i in range(2, 18)]
    assert sorted({p["height"] for p in facts["points"]}) == [4, 8, 16, 32]
    plain = sum(p.numel() for p in torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=3).parameters())
    assert facts["num_classes"] == 3  # the classifier the search builds: the embedded task's 3 classes
    assert facts["backbone"]["params"] == facts["smallest_child"]["params"] == plain == 691_523
    assert facts["largest_child"]["params"] > plain and set(facts["largest_child"]["choices"].values()) == {"global"}
