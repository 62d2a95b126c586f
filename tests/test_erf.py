"""Effective receptive fields: exact supports on known networks, a child against its backbone on
the same weights, and ``rfsearch erf`` on a space file and on a retrain run (erf.json, erf.png,
``rfsearch report``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from rfsearch import Arch, build_child, effective_receptive_field, load_space, run_retrain
from rfsearch.erf import sample_images, stage_points, study_erf, uniform_arch
from rfsearch.graph.backbone import build_backbone
from rfsearch.graph.wrap import Enhanced, without_enhancers
from rfsearch.io import read_json

from tests import tiny
from tests.cli_run import exit_code

SPACE = "spaces/custom_backbone.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sets(*items: str) -> list[str]:
    return [arg for s in items for arg in ("--set", s)]


def test_one_layer_3x3_conv_has_exactly_its_3x3_support() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    erf = effective_receptive_field(net, torch.rand(6, 3, 15, 15), ["0"])["0"]
    assert erf.unit == (7, 7) and erf.centre == (7, 7)
    support = erf.mass > 0
    window = torch.zeros(15, 15, dtype=torch.bool)
    window[6:9, 6:9] = True
    assert torch.equal(support, window)  # all nine taps and nothing else
    assert abs(float(erf.mass.sum()) - 1) < 1e-9
    assert erf.radius(1.0) == 1 and erf.radii()["r90"] <= 1


def test_a_strided_layer_maps_its_centre_unit_back_to_input_pixels() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Conv2d(2, 2, 3, stride=2, padding=1))
    erf = effective_receptive_field(net, torch.rand(2, 1, 16, 16), ["1"])["1"]
    assert erf.unit == (2, 2) and erf.centre == (8, 8)
    nonzero = (erf.mass > 0).nonzero()
    # the second conv's unit 2 reads the first conv's units 3..5, which read input pixels 5..11
    assert nonzero.min(0).values.tolist() == [5, 5] and nonzero.max(0).values.tolist() == [11, 11]
    assert erf.radius(1.0) == 3


def test_without_enhancers_is_the_backbone_on_the_childs_weights() -> None:
    space = load_space(SPACE, tiny.TINY)
    arch = uniform_arch(space, "avgpool5")
    child = build_child(arch)
    plain = without_enhancers(child)
    assert any(isinstance(m, Enhanced) for m in child.modules())
    assert not any(isinstance(m, Enhanced) for m in plain.modules())
    backbone = build_backbone(arch.backbone, arch.num_classes)
    assert plain.state_dict().keys() == backbone.state_dict().keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in child.state_dict().items() if ".inner." not in k and k in plain.state_dict())


def test_pooling_widens_the_erf_of_the_child_over_its_backbone_on_the_same_weights() -> None:
    """TinyNet (3×3 stem, depthwise 3×3 blocks) with avgpool5 after every depthwise conv, at
    initialisation, on real images: the exact support of the first point grows by the pool's 2 px
    (5×5 → 9×9), and at every stage the child's 90 % radius is larger than the backbone's."""
    space = load_space(SPACE, tiny.TINY)
    arch = uniform_arch(space, "avgpool5")
    torch.manual_seed(0)
    study = study_erf(arch, {"init": build_child(arch)}, sample_images(space, 16), ["blocks.0.depthwise", *(p.path for p in stage_points(arch))])
    child, backbone = study.maps["init"]["child"], study.maps["init"]["backbone"]
    assert backbone["blocks.0.depthwise"].radius(1.0) == 2  # stem 3×3 + depthwise 3×3
    assert child["blocks.0.depthwise"].radius(1.0) == 4  # + avgpool5
    assert [p.height for p in stage_points(arch)] == [16, 8, 4]
    for point in stage_points(arch):
        assert child[point.path].radii()["r90"] > backbone[point.path].radii()["r90"], point.path
        assert child[point.path].radii()["r50"] >= backbone[point.path].radii()["r50"], point.path


def test_erf_of_a_space_file_writes_json_and_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "erf"
    assert exit_code(monkeypatch, "erf", SPACE, "--op", "maxpool3", "--images", "8", "--out", str(out), *sets(*tiny.TINY)) == 0
    facts = read_json(out / "erf.json")
    assert facts["images"] == 8 and list(facts["weights"]) == ["init"]
    assert [p["path"] for p in facts["points"]] == ["blocks.0.depthwise", "blocks.2.depthwise", "blocks.3.depthwise"]
    assert all(p["choice"] == ["maxpool3"] and set(p["init"]) == {"child", "backbone"} for p in facts["points"])
    assert (out / "erf.png").read_bytes().startswith(PNG_SIGNATURE)

    capsys.readouterr()
    # global is not a candidate of the space's last point: one line, exit 2
    assert exit_code(monkeypatch, "erf", SPACE, "--op", "global", "--out", str(out), *sets(*tiny.TINY)) == 2
    err = capsys.readouterr().err
    assert "op 'global' is not a candidate at blocks.3.depthwise" in err and "Traceback" not in err
    assert exit_code(monkeypatch, "erf", SPACE, "--point", "blocks.9", "--out", str(out), *sets(*tiny.TINY)) == 2
    assert "no insertion point 'blocks.9'" in capsys.readouterr().err


def test_erf_of_a_retrain_run_uses_its_trained_weights_and_report_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    space = load_space(SPACE, [*tiny.TINY, "train.retrain.epochs=1", "train.retrain.batch_size=32"])
    arch = uniform_arch(space, "avgpool3")
    run = run_retrain(space, arch, tmp_path / "retrain", show_progress=False).run_dir
    assert exit_code(monkeypatch, "erf", str(run), "--images", "8") == 0
    facts = read_json(run / "erf.json")
    assert facts["weights"]["trained"] == str(run / "best.pt")
    for p in facts["points"]:
        assert set(p) >= {"init", "trained"} and set(p["trained"]["child"]) == {"r50", "r90"}
    assert (run / "erf.png").read_bytes().startswith(PNG_SIGNATURE)

    capsys.readouterr()
    assert exit_code(monkeypatch, "report", str(run), "--json") == 0
    assert json.loads(capsys.readouterr().out)["erf"] == facts
    assert exit_code(monkeypatch, "report", str(run)) == 0
    assert "effective receptive field" in capsys.readouterr().out

    # an erf.json of another arch is not shown as that arch's
    other = tmp_path / "other"
    uniform_arch(space, "maxpool3").save(other / "arch.json")
    (other / "erf.json").write_text((run / "erf.json").read_text())
    assert exit_code(monkeypatch, "report", str(other), "--json") == 0
    assert "erf" not in json.loads(capsys.readouterr().out)
