"""Output that survives a log file: with stdout a file, `search` and `retrain` name the run directory
first and print plain progress lines as they go; no path, no table cell and no error is wrapped or
cut, whatever the width."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from rfsearch import console as rfconsole
from rfsearch import load_space, run_search
from rfsearch.cli import main
from rfsearch.console import TrainingProgress, print_table
from tests import tiny

SPACE = "spaces/custom_backbone.yaml"
SETS = [*tiny.TINY, "train.search.batch_size=16", "train.search.epochs=2", "train.retrain.batch_size=16", "train.retrain.epochs=2"]


@pytest.fixture()
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console at 50 columns, as COLUMNS=50 sets it: nothing below may depend on the width."""
    monkeypatch.setattr(rfconsole.console, "width", 50)


def long_dir(tmp_path: Path) -> Path:
    """A run directory whose path is longer than any terminal is wide."""
    return tmp_path / ("a-run-directory-with-a-name-longer-than-a-terminal-is-wide-" * 2) / "run"


@pytest.mark.parametrize("command", ["search", "retrain"])
def test_a_run_piped_to_a_file_names_its_directory_first_and_prints_progress_lines(
    command: str, narrow: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = long_dir(tmp_path)
    if command == "search":
        args = ["search", SPACE, "--out", str(out)]
    else:
        run_search(load_space(SPACE, SETS), tmp_path / "search", show_progress=False)
        args = ["retrain", str(tmp_path / "search"), "--out", str(out)]
    log = tmp_path / "log.txt"
    with open(log, "w") as stdout:  # a file, not a terminal: `rfsearch … > log`
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "argv", ["rfsearch", *args, *[a for s in SETS for a in ("--set", s)]])
        with pytest.raises(SystemExit) as done:
            main()
        monkeypatch.undo()
    assert done.value.code == 0
    lines = log.read_text().splitlines()
    assert lines[0] == f"{command} → {out}"  # the whole path, on the first line
    progress = [i for i, line in enumerate(lines) if re.fullmatch(rf"{command} step \d+/\d+ · epoch \d/2 · loss [\d.]+ · acc [\d.]+% · .+ · elapsed \S+ · ETA \S+", line)]
    assert len(progress) >= 2, lines  # one per epoch at least
    finished = next(i for i, line in enumerate(lines) if line.startswith("done"))
    assert progress[-1] < finished  # written as the run went, before its end
    assert lines[finished].endswith(str(out / "arch.json") if command == "search" else str(out))
    table = "\n".join(lines)
    assert "…" not in table  # no cell cut short
    assert all(f"blocks.{i}.depthwise" in table for i in range(4))  # module paths whole


def test_tables_fold_on_a_narrow_terminal_and_grow_in_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell's text survives: folded into the cell on a 50-column terminal, on one line in a file."""
    cells = ["features.16.conv.1.some.deeply.nested.module", "maxpool7 + avgpool5", "0.125"]
    for terminal in (True, False):
        buffer = io.StringIO()
        monkeypatch.setattr(rfconsole, "console", Console(file=buffer, width=50, force_terminal=terminal, soft_wrap=True, color_system=None))
        table = Table(title="architecture")
        for name in ("module", "choice", "π"):
            table.add_column(name)  # the default overflow would cut the module to "features.16.c…"
        table.add_row(*cells)
        print_table(table)
        text = buffer.getvalue()
        assert "…" not in text
        rows = [line for line in text.splitlines() if line.startswith("│")]
        columns = [["".join(row.split("│")[i + 1].split()) for row in rows] for i in range(len(cells))]
        assert ["".join(column) for column in columns] == ["".join(cell.split()) for cell in cells]  # every character, in order
        assert (max(len(line) for line in text.splitlines()) <= 50) == terminal


def test_plain_progress_prints_a_line_per_epoch_and_at_its_rhythm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(rfconsole, "console", Console(file=buffer, width=50, soft_wrap=True))
    with TrainingProgress("search", 10, tmp_path, interval=float("inf")) as progress:  # never due: lines at epochs only
        for step in range(10):
            progress.update(1, f"epoch {step // 5 + 1}/2 · loss 0.5")
            if step % 5 == 4:
                progress.epoch_done()
    lines = buffer.getvalue().splitlines()
    assert lines[0] == f"search → {tmp_path}"
    assert [line.split(" · ")[0] for line in lines[1:]] == ["search step 5/10", "search step 10/10"]
    buffer.truncate(0)
    buffer.seek(0)
    with TrainingProgress("retrain", 4, tmp_path, interval=0.0) as progress:  # always due: a line per update
        for _ in range(4):
            progress.update(1, "loss 0.5")
    assert len(buffer.getvalue().splitlines()) == 1 + 4
