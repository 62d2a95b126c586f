"""``rfsearch ablate`` end to end on a tiny budget: the table, the Markdown and CSV files, the
plots, and a resume that reads finished rows back instead of training them again."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rfsearch import load_space
from rfsearch.ablate import ROWS, fixed_row_arch, parse_rows, search_space
from rfsearch.cli import app
from rfsearch.errors import RfsearchError
from rfsearch.io import read_json
from rfsearch.report import child_report

from tests import tiny

SPACE = "spaces/custom_backbone.yaml"
TINY = [
    *tiny.TINY,
    "train.search.epochs=1",
    "train.retrain.epochs=1",
    "train.search.batch_size=16",
    "train.retrain.batch_size=16",
]
PNG = b"\x89PNG\r\n\x1a\n"


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.parent.name in ("search", "retrain")}


def test_ablate_rows_seeds_table_files_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "abl"
    result = _invoke("ablate", SPACE, "--rows", "no,random,pmpl", "--seeds", "2", "--out", str(out), "--quiet", *_sets(TINY))
    text = " ".join(result.output.split())
    for row in ("no", "random", "pmpl"):
        assert f"{row} seed 0" in text and f"{row} seed 1" in text
    assert "ablation: 3 rows × seeds 0, 1" in text and "Δ vs no" in text

    # the cells: a search for random and pmpl only, a finished retrain everywhere
    for row in ("no", "random", "pmpl"):
        for seed in (0, 1):
            cell = out / row / f"seed{seed}"
            assert (cell / "search").exists() == (row != "no")
            metrics = read_json(cell / "retrain" / "metrics.json")
            assert metrics["finished"] is True and metrics["epochs"] == 1
    retrain_cfg = (out / "pmpl" / "seed1" / "retrain" / "config.yaml").read_text()
    assert "seed: 1" in retrain_cfg
    assert read_json(out / "random" / "seed0" / "search" / "arch.json")["strategy"] == "random"
    assert read_json(out / "pmpl" / "seed0" / "search" / "arch.json")["strategy"] == "pmpl"
    # the plain backbone has no enhancer at all
    no_arch = read_json(out / "no" / "seed0" / "retrain" / "arch.json")
    assert all(p["choice"][0]["op"] == "skip" and not p["post"] for p in no_arch["points"])
    no_metrics = read_json(out / "no" / "seed0" / "retrain" / "metrics.json")
    assert no_metrics["params"] == no_metrics["backbone_params"]

    # Markdown, CSV, plots
    md = (out / "ablation.md").read_text()
    assert md.startswith("| row |") and all(f"| {row} |" in md for row in ("no", "random", "pmpl"))
    with open(out / "ablation.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [line["row"] for line in lines] == ["no", "random", "pmpl"]
    for line in lines:
        per_seed = [float(x) for x in line["top1_per_seed"].split()]
        assert len(per_seed) == 2 and line["seeds"] == "0 1"
        mean, std = float(line["top1_mean"]), float(line["top1_std"])
        assert mean == pytest.approx(sum(per_seed) / 2, abs=1e-3)
        assert std == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5, abs=1e-3)
        assert 0 <= mean <= 100 and int(line["params"]) > 0 and int(line["macs"]) > 0
    assert lines[0]["delta_vs_no"] == "0.000"
    for line in lines[1:]:
        assert float(line["delta_vs_no"]) == pytest.approx(float(line["top1_mean"]) - float(lines[0]["top1_mean"]), abs=2e-3)
    pngs = ["accuracy.png", "pi-pmpl-seed0.png", "pi-pmpl-seed1.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG, name
    manifest = read_json(out / "ablation.json")
    assert manifest["rows"] == ["no", "random", "pmpl"] and manifest["seeds"] == [0, 1]
    assert [r["row"] for r in manifest["results"]["rows"]] == ["no", "random", "pmpl"]

    # a second invocation into the same directory needs --resume
    again = CliRunner().invoke(app, ["ablate", SPACE, "--out", str(out), *_sets(TINY)])
    assert again.exit_code != 0 and "--resume" in str(again.exception)

    # interrupt: drop one finished cell's retrain back to "no metrics", then resume
    before = _mtimes(out)
    redo = out / "pmpl" / "seed1" / "retrain"
    for name in ("metrics.json", "checkpoint.pt", "best.pt", "history.jsonl"):
        (redo / name).unlink()
    resumed = _invoke("ablate", "--resume", str(out), "--quiet")
    text = " ".join(resumed.output.split())
    assert text.count("finished earlier") == 5
    assert "pmpl seed 1: retrain" in text and "search →" not in text
    after = _mtimes(out)
    untouched = [k for k in before if not k.startswith("pmpl/seed1/retrain")]
    assert all(after[k] == before[k] for k in untouched), "a finished row was trained again"
    assert read_json(redo / "metrics.json")["finished"] is True
    assert (out / "accuracy.png").read_bytes()[:8] == PNG


def test_parallel_cells_measure_what_serial_cells_measure(tmp_path: Path) -> None:
    """--jobs 2 runs cells in two one-thread processes: every cell ends where the serial run's does."""
    args = ["--rows", "no,random", "--seeds", "2", "--quiet", *_sets(TINY)]
    _invoke("ablate", SPACE, "--out", str(tmp_path / "serial"), *args)
    parallel = _invoke("ablate", SPACE, "--out", str(tmp_path / "parallel"), "--jobs", "2", *args)
    assert "4 cells, 2 at a time" in " ".join(parallel.output.split())
    serial_rows, parallel_rows = (read_json(tmp_path / d / "ablation.json")["results"]["rows"] for d in ("serial", "parallel"))
    assert [r["row"] for r in parallel_rows] == ["no", "random"]
    assert [[c["top1"] for c in r["cells"]] for r in parallel_rows] == [[c["top1"] for c in r["cells"]] for r in serial_rows]
    for row in ("no", "random"):
        for seed in (0, 1):
            assert read_json(tmp_path / "parallel" / row / f"seed{seed}" / "retrain" / "metrics.json")["finished"] is True


def test_rows_mean_what_table_3_means_on_the_default_space() -> None:
    """No = skip, Local = avgpool3 everywhere (no search), Global = global everywhere, Random = one of
    the three enhancers per point, PMPL = the space's list; pmpl3 searches Random's three."""
    space = load_space("spaces/mbv2_metapool.yaml")
    assert parse_rows("no, pmpl,no") == ["no", "pmpl"]
    with pytest.raises(RfsearchError, match="unknown ablation row"):
        parse_rows("no,darts")

    def names(row: str) -> list[str]:
        return [c.name for group in search_space(space, ROWS[row]).candidates for c in group]

    three = ["skip", "avgpool3", "global"]
    assert names("random") == names("pmpl3") == three
    assert names("pmpl") == names("random8") == ["skip", "avgpool3", "avgpool5", "avgpool7", "maxpool3", "maxpool5", "maxpool7", "global"]
    assert names("pmpl-local") == ["skip", "avgpool3", "avgpool5", "avgpool7", "maxpool3", "maxpool5", "maxpool7"]
    assert search_space(space, ROWS["pmpl3"]).strategy.model_extra["rho"] == 0.2  # the space's PMPL options kept
    assert search_space(space, ROWS["random"]).strategy.model_extra == {}  # and not passed to a strategy without them
    # fixed rows: one op at every point, no search
    sizes, ops = {}, {"no": "skip", "local": "avgpool", "global": "global", "se": "se", "se-mnv3": "se_mnv3", "cbam": "cbam", "coordatt": "coordatt"}
    for row, op in ops.items():
        assert not ROWS[row].searched
        arch = fixed_row_arch(space, ROWS[row], 1000)
        assert len(arch.points) == 16 and {p.choice[0].op for p in arch.points} == {op}
        sizes[row] = child_report(arch)["child"]["params"]
    local = fixed_row_arch(space, ROWS["local"], 1000)
    assert {p.choice_names[0] for p in local.points} == {"avgpool3"} and all(p.choice[0].params["k"] == 3 for p in local.points)
    assert sizes["no"] == sizes["local"] == 1_968_680  # torchvision's MobileNetV2 0.5 at 1000 classes: the backbone itself
    assert sizes["global"] == sizes["coordatt"] > sizes["no"]
    assert sizes["no"] < sizes["se"] < sizes["se-mnv3"] and sizes["cbam"] > sizes["se"]


def test_ablate_subprocess_entry_point_rejects_bad_rows(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "rfsearch", "ablate", SPACE, "--rows", "no,nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert run.returncode == 2 and "unknown ablation row" in run.stderr and "nope" in run.stderr
    assert not (tmp_path / "x" / "ablation.json").exists()
