"""Broken run directories, as disks, kills and hand edits leave them, for `retrain`, `export`,
`report` and `--resume`: exit 2, one line naming the file and what is wrong, no traceback, and a
checkpoint's pickle never runs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rfsearch import load_space, run_retrain, run_search
from tests import cli_run, tiny

SETS = [*tiny.TINY, "train.search.batch_size=16", "train.search.epochs=1", "train.retrain.epochs=1", "train.retrain.batch_size=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished search run and the retrain of its child: the intact directories every case breaks."""
    root = tmp_path_factory.mktemp("runs")
    space = load_space("spaces/custom_backbone.yaml", SETS)
    found = run_search(space, root / "search", show_progress=False)
    run_retrain(space, found.arch, root / "retrain", show_progress=False)
    return {"search": root / "search", "retrain": root / "retrain"}


class RunsItsPickle:
    """Unpickling this touches a marker file: proof that a checkpoint's pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def pickled(path: Path) -> None:
    torch.save({"model": RunsItsPickle(path.parent / "PICKLE-RAN")}, path)


def edit_arch(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        replaced = change(data)
        path.write_text(json.dumps(data if replaced is None else replaced))

    return apply


def unknown_op(arch: dict) -> None:
    arch["points"][0]["choice"] = [{"name": "avgpool3", "op": "avgpol", "params": {"k": 3}}]


def even_kernel(arch: dict) -> None:
    arch["points"][0]["choice"] = [{"name": "avgpool3", "op": "avgpool", "params": {"k": 4}}]


def undecided(arch: dict) -> None:
    arch["points"][1]["choice"] = None


def unknown_module(arch: dict) -> None:
    arch["points"][0]["path"] = "blocks.9.depthwise"


def wrong_channels(arch: dict) -> None:
    arch["points"][2]["channels"] = 9


def no_classes(arch: dict) -> None:
    arch["num_classes"] = 0


def nan_pi(arch: dict) -> None:
    arch["points"][0]["probs"] = {name: float("nan") for name in arch["points"][0]["probs"]}


def not_a_candidate(arch: dict) -> None:
    arch["points"][0]["choice"][0]["name"] = "maxpool9"


def replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def killed_during_the_first_config_write(run: Path) -> None:
    for item in run.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    (run / ".config.yaml.k1ll3d00.tmp").write_text("name: custom_backbone\nbackbone:\n  na")


# name: (run directory it starts from, file broken in it, how, command line, what the line names)
CASES: dict[str, tuple[str, str, Callable[[Path], None], Callable[[Path], list[str]], list[str]]] = {
    "search --resume: truncated checkpoint": ("search", "checkpoint.pt", truncate, lambda d: ["search", "--resume", str(d)], ["checkpoint.pt", "not a complete torch checkpoint"]),
    "search --resume: empty checkpoint": ("search", "checkpoint.pt", lambda p: p.write_bytes(b""), lambda d: ["search", "--resume", str(d)], ["checkpoint.pt", "not a complete torch checkpoint"]),
    "search --resume: text as checkpoint": ("search", "checkpoint.pt", lambda p: p.write_text("not a checkpoint\n"), lambda d: ["search", "--resume", str(d)], ["checkpoint.pt", "not a complete torch checkpoint"]),
    "search --resume: pickle in checkpoint": ("search", "checkpoint.pt", pickled, lambda d: ["search", "--resume", str(d)], ["checkpoint.pt", "refused: its pickle would run", "never runs a checkpoint's pickle"]),
    "search --resume: a child checkpoint": ("search", "checkpoint.pt", lambda p: shutil.copy(p.parents[1] / "retrain" / "checkpoint.pt", p), lambda d: ["search", "--resume", str(d)], ["checkpoint.pt", "not a search checkpoint: it was written by a retrain run"]),
    "search --resume: checkpoint of another model": ("search", "checkpoint.pt", lambda p: torch.save({**torch.load(p, weights_only=True), "model": {}}, p), lambda d: ["search", "--resume", str(d)], ["checkpoint.pt", "the weights are not this model's", "missing"]),
    "search --resume: malformed config": ("search", "config.yaml", lambda p: p.write_text("backbone: [\n"), lambda d: ["search", "--resume", str(d)], ["config.yaml:2", "malformed YAML"]),
    "search --resume: a retrain directory": ("retrain", "config.yaml", lambda p: None, lambda d: ["search", "--resume", str(d)], ["is a retrain run directory", "rfsearch retrain --resume"]),
    "search --resume: no such directory": ("search", "config.yaml", lambda p: shutil.rmtree(p.parent), lambda d: ["search", "--resume", str(d)], ["no such run directory"]),
    "search --resume: killed in its first config write": ("search", "config.yaml", lambda p: killed_during_the_first_config_write(p.parent), lambda d: ["search", "--resume", str(d)], ["holds no config.yaml", "start it again with --out"]),
    "retrain --resume: truncated checkpoint": ("retrain", "checkpoint.pt", truncate, lambda d: ["retrain", "--resume", str(d)], ["checkpoint.pt", "not a complete torch checkpoint"]),
    "retrain --resume: a search checkpoint": ("retrain", "checkpoint.pt", lambda p: shutil.copy(p.parents[1] / "search" / "checkpoint.pt", p), lambda d: ["retrain", "--resume", str(d)], ["checkpoint.pt", "not a retrain checkpoint: it was written by a search run"]),
    "retrain --resume: a search directory": ("search", "config.yaml", lambda p: None, lambda d: ["retrain", "--resume", str(d)], ["is a search run directory", "rfsearch search --resume"]),
    "retrain: a retrain directory as source": ("retrain", "config.yaml", lambda p: None, lambda d: ["retrain", str(d), "--out", str(d.parent / "again")], ["is a retrain run directory", "--resume"]),
    "retrain: undecided point": ("search", "arch.json", edit_arch(undecided), lambda d: ["retrain", str(d), "--out", str(d.parent / "r")], ["arch.json", "points[1].choice", "undecided"]),
    "retrain: non-finite π": ("search", "arch.json", edit_arch(nan_pi), lambda d: ["retrain", str(d), "--out", str(d.parent / "r")], ["arch.json", "points[0].probs", "finite number"]),
    "export: truncated best.pt": ("retrain", "best.pt", truncate, lambda d: ["export", str(d), "--format", "torchscript"], ["best.pt", "not a complete torch checkpoint"]),
    "export: pickle in best.pt": ("retrain", "best.pt", pickled, lambda d: ["export", str(d), "--format", "torchscript"], ["best.pt", "refused"]),
    "export: --weights of a search": ("retrain", "best.pt", lambda p: None, lambda d: ["export", str(d), "--weights", str(d.parent / "search" / "checkpoint.pt")], ["checkpoint.pt", "not a child checkpoint"]),
}
ARCH_DAMAGE: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "unknown op": (edit_arch(unknown_op), ["arch.json", "points[0].choice[0]", "unknown op 'avgpol'"]),
    "even kernel": (edit_arch(even_kernel), ["arch.json", "points[0].choice[0]", "odd integer"]),
    "undecided point": (edit_arch(undecided), ["arch.json", "points[1].choice", "undecided"]),
    "unknown module path": (edit_arch(unknown_module), ["arch.json", "points[0].path", "has no module 'blocks.9.depthwise'"]),
    "choice not a candidate": (edit_arch(not_a_candidate), ["arch.json", "points[0]", "'maxpool9'", "not among the point's candidates"]),
    "wrong channel count": (edit_arch(wrong_channels), ["arch.json", "points[2].channels", "'blocks.2.depthwise' outputs 16 channels at 16 px, not 9"]),
    "no classes": (edit_arch(no_classes), ["arch.json", "num_classes", "greater than or equal to 1"]),
    "a JSON list": (edit_arch(lambda arch: [arch]), ["arch.json", "JSON list, not an object"]),
    "truncated JSON": (truncate, ["arch.json", "not valid JSON"]),
    "not UTF-8": (lambda p: p.write_bytes(b"\xff\xfe{}"), ["arch.json", "not UTF-8"]),
    "a directory": (replace_with_directory, ["arch.json", "is a directory"]),
}
EXPORT_SAYS = dict.fromkeys(["unknown module path", "wrong channel count"], ["best.pt", "another architecture than", "arch.json"])  # it checks best.pt against the arch first
for damage, (breaker, fragments) in ARCH_DAMAGE.items():  # export refuses what report refuses
    CASES[f"report: arch.json {damage}"] = ("retrain", "arch.json", breaker, lambda d: ["report", str(d)], fragments)
    CASES[f"export: arch.json {damage}"] = ("retrain", "arch.json", breaker, lambda d: ["export", str(d), "--format", "torchscript"], EXPORT_SAYS.get(damage, fragments))


@pytest.mark.parametrize("case", list(CASES))
def test_broken_run_directory_is_one_line(
    case: str, runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kind, file, breaker, command, fragments = CASES[case]
    for name, source in runs.items():  # both runs side by side: cases borrow a file of the other
        shutil.copytree(source, tmp_path / name)
    run = tmp_path / kind
    breaker(run / file)
    outcome = cli_run.run_cli(monkeypatch, capsys, *command(run))
    line = cli_run.assert_one_line_error(outcome, 2, *fragments)
    assert "weights_only" not in line  # never the advice to run the pickle
    assert not (run / "PICKLE-RAN").exists()
    assert not list(run.glob(".*.tmp")) if run.exists() else True  # orphans of killed writes are gone
