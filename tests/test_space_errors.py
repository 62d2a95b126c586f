"""Bad input: one clear line naming file, key path and line; exit code 2; no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rfsearch.cli import main

GOOD = """\
name: tiny
backbone:
  name: mobilenet_v2
  kwargs: {width_mult: 0.25}
  input_size: 32
insert:
  - modules: "features.*.conv.1"
    types: Conv2dNormActivation
    candidates:
      - skip
      - avgpool: {k: [3, 5]}
      - global
"""


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["rfsearch", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


CASES = {
    # name: (edit of GOOD, expected fragments: key path, line, message)
    "misspelt key": (GOOD.replace("  input_size: 32", "  input_sise: 32"), ["backbone.input_sise", ":5:", "did you mean 'input_size'"]),
    "unknown op": (GOOD.replace("      - global", "      - globl"), ["insert[0].candidates[2]", ":12:", "unknown op 'globl'"]),
    "kernel size 4": (GOOD.replace("k: [3, 5]", "k: [3, 4]"), ["insert[0].candidates[1]", ":11:", "odd"]),
    "unknown backbone": (GOOD.replace("name: mobilenet_v2", "name: mobilenet_v9"), ["backbone.name", ":3:", "unknown backbone 'mobilenet_v9'"]),
    "import path": (GOOD.replace("name: mobilenet_v2", "name: nowhere.models:Net"), ["backbone.name", ":3:", "cannot import module 'nowhere.models'"]),
    "glob matches nothing": (GOOD.replace('"features.*.conv.1"', '"features.*.conv.9"'), ["insert[0].modules", ":7:", "matches no module"]),
    "malformed yaml": (GOOD.replace("  kwargs: {width_mult: 0.25}", "  kwargs: {width_mult: 0.25"), [":5:", "malformed YAML"]),
    "unknown strategy option": (GOOD + "strategy: {name: pmpl, rhoo: 0.3}\n", ["strategy.rhoo", ":13:", "unknown option 'rhoo'"]),
    "bad value type": (GOOD + "train: {search: {epochs: many}}\n", ["train.search.epochs", ":13:", "valid integer"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_space_is_one_clear_error(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    text, fragments = CASES[case]
    path = write(tmp_path, text)
    code, output = run_cli(["inspect", str(path)], monkeypatch, capsys)
    assert code == 2
    assert "Traceback" not in output
    assert output.strip().count("\n") == 0, output  # one line
    assert str(path) in output
    for fragment in fragments:
        assert fragment in output, (fragment, output)


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("train.search.epochs=abc", ["--set train.search.epochs=abc", "train.search.epochs", "valid integer"]),
        ("train.serch.epochs=3", ["--set train.serch.epochs=3", "unknown key 'serch'", "did you mean 'search'"]),
        ("no_equals_sign", ["--set expects key.path=value"]),
    ],
)
def test_bad_override(override: str, fragments: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    code, output = run_cli(["inspect", str(path), "--set", override], monkeypatch, capsys)
    assert code == 2
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, (fragment, output)


def test_override_applies(tmp_path: Path) -> None:
    from rfsearch.space import load_space

    space = load_space(write(tmp_path, GOOD), ["train.search.epochs=3", "backbone.kwargs.width_mult=0.5", "insert.0.index='1:'"])
    assert space.train.search.epochs == 3
    assert space.backbone.kwargs["width_mult"] == 0.5
    assert space.insert[0].index == "1:"


def test_missing_file_and_non_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(["inspect", str(tmp_path / "absent.yaml")], monkeypatch, capsys)
    assert code == 2 and "absent.yaml" in output and "cannot read" in output
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    code, output = run_cli(["inspect", str(path)], monkeypatch, capsys)
    assert code == 2 and "must be a mapping" in output


def test_real_entry_point_prints_no_traceback(tmp_path: Path) -> None:
    """The installed console script path: a subprocess, as a user runs it."""
    path = write(tmp_path, GOOD.replace("  input_size: 32", "  input_sise: 32"))
    proc = subprocess.run([sys.executable, "-m", "rfsearch", "inspect", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{path}:5: backbone.input_sise: unknown key 'input_sise'" in proc.stderr
