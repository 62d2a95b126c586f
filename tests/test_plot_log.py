"""``rfsearch plot`` on a tiny search and retrain run, and ``--log csv`` (and tensorboard) mirroring
history.jsonl row for row."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rfsearch.cli import main
from rfsearch.io import read_jsonl
from rfsearch.train.loggers import HistoryWriter, flatten

from tests import tiny

SPACE = "spaces/custom_backbone.yaml"
SEARCH = [*tiny.TINY, "train.search.batch_size=16", "train.search.epochs=3", "strategy.arch_warmup_epochs=1", "strategy.arch_optimizer.lr=0.05"]
RETRAIN = ["train.retrain.epochs=2", "train.retrain.batch_size=32"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str) -> int:
    argv = sys.argv
    sys.argv = ["rfsearch", *args]
    try:
        main()
    except SystemExit as exit:
        return int(exit.code or 0)
    finally:
        sys.argv = argv
    return 0


def sets(items: list[str]) -> list[str]:
    return [arg for s in items for arg in ("--set", s)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A tiny search and the retrain of its child, both with ``--log csv``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    search, retrain = root / "search", root / "retrain"
    assert run_cli("search", SPACE, "--out", str(search), "--quiet", "--log", "csv", *sets(SEARCH)) == 0
    assert run_cli("retrain", str(search), "--out", str(retrain), "--quiet", "--log", "csv", *sets(RETRAIN)) == 0
    yield search, retrain
    torch.set_num_threads(threads)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def same(cell: str, value: object) -> bool:
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == str(value)
    if isinstance(value, (int, float)):
        return float(cell) == float(value)
    return cell == str(value)


def test_log_csv_of_a_search_holds_every_history_record(runs: tuple[Path, Path]) -> None:
    search, _ = runs
    history = read_jsonl(search / "history.jsonl")
    rows = csv_rows(search / "history.csv")
    assert len(rows) == len(history) > 0
    names = {p["path"]: p["candidates"] for p in json.loads((search / "arch.json").read_text())["points"]}
    for record, row in zip(history, rows):
        for key in ("step", "epoch", "lr", "loss", "acc", "meta_loss", "meta_acc", "fixed", "final"):
            assert same(row.get(key, ""), record.get(key)), (key, record.get("step"))
        for path, probs in record["probs"].items():
            assert [float(row[f"pi/{path}/{name}"]) for name in names[path]] == probs
        assert row["fixings"] == " ".join(f"{f['path']}={'+'.join(f['choice'])}" for f in record["fixings"])
    # the meta loss starts after the α warm-up: its column came later, the early rows leave it empty
    assert rows[0]["meta_loss"] == "" and any(r["meta_loss"] for r in rows)


def test_log_csv_of_a_retrain_holds_every_epoch(runs: tuple[Path, Path]) -> None:
    _, retrain = runs
    history = read_jsonl(retrain / "history.jsonl")
    rows = csv_rows(retrain / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [r["epoch"] for r in history] == [1, 2]
    for record, row in zip(history, rows):
        assert set(row) == set(record)
        assert all(same(row[k], v) for k, v in record.items())


def test_a_resumed_history_writer_starts_its_csv_from_the_kept_records(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    kept = [{"epoch": 1, "step": 4, "top1": 30.0}, {"epoch": 2, "step": 8, "top1": 40.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    writer = HistoryWriter(path, ["csv"], x_key="epoch")
    writer.write({"epoch": 3, "step": 12, "top1": 50.0, "top5": 90.0})
    writer.close()
    history = read_jsonl(path)
    rows = csv_rows(tmp_path / "history.csv")
    assert [r["top1"] for r in rows] == ["30.0", "40.0", "50.0"] and len(history) == 3
    assert [r["top5"] for r in rows] == ["", "", "90.0"]
    assert flatten({"probs": {"a": [0.25, 0.75]}}, {"a": ["skip", "global"]}) == {"pi/a/skip": 0.25, "pi/a/global": 0.75}


def test_plot_writes_the_pngs_of_a_search_and_of_a_retrain(runs: tuple[Path, Path], tmp_path: Path) -> None:
    search, retrain = runs
    assert run_cli("plot", str(search), "--out", str(tmp_path / "s")) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["curves.png", "pi.png"]
    assert run_cli("plot", str(retrain)) == 0  # default: into the run
    for png in (tmp_path / "s" / "pi.png", tmp_path / "s" / "curves.png", retrain / "curves.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_plot_and_log_refuse_bad_input_in_one_line(runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run_cli("plot", str(tmp_path)) == 2
    assert "holds no history.jsonl" in capsys.readouterr().err
    assert run_cli("search", SPACE, "--out", str(tmp_path / "x"), "--log", "wandb") == 2
    assert "--log wandb: unknown logger" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before the run starts
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    assert run_cli("plot", str(runs[0])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'rfsearch[plot]'" in err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_log_tensorboard_without_its_package_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("retrain", str(tmp_path), "--log", "tensorboard") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the tensorboard package" in err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_log_tensorboard_writes_every_number_as_a_scalar(runs: tuple[Path, Path], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    search, _ = runs
    out = tmp_path / "retrain"
    assert run_cli("retrain", str(search), "--out", str(out), "--quiet", "--log", "tensorboard", *sets(RETRAIN)) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    history = read_jsonl(out / "history.jsonl")
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("top1")] == [(r["epoch"], round(r["top1"], 3)) for r in history]
