"""Bad input: one clear line naming file, key path and line; exit code 2; no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rfsearch.cli import main
from tests import cli_run

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
    from rfsearch import load_space

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


# Every bad input below, through `inspect` and `search` alike: exit 2, one line naming the file (or
# the --set item), the key path and the line, no traceback, and no run directory left behind.
TINY_SPACE = """\
name: tiny
backbone:
  name: examples.custom_backbone:TinyNet
  kwargs: {width: 8}
  input_size: 16
insert:
  - modules: "blocks.*.depthwise"
candidates:
  - skip
  - avgpool: {k: [3, 5]}
  - maxpool: {k: 3}
data:
  embedded: {image_size: 16, train_size: 96, test_size: 32}
train:
  search: {epochs: 1, batch_size: 16}
"""
LOCAL_CANDIDATES = "candidates:\n  - skip\n  - avgpool: {k: [3, 5]}\n  - maxpool: {k: 3}\n"


def _alias_bomb(levels: int = 9) -> str:
    """Billion laughs: 9 aliases of 9 aliases …, 9**9 strings once expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _with_op(op: str) -> str:
    return TINY_SPACE.replace("  - maxpool: {k: 3}\n", f"  - maxpool: {{k: 3}}\n  - op: {op}\n")


BAD_INPUT = {
    # name: (file text, or bytes; --set items; fragments: key path, line, message)
    "empty space candidates": (TINY_SPACE.replace(LOCAL_CANDIDATES, "candidates: []\n"), [], [":8:", "candidates", "at least 1 item"]),
    "empty rule candidates": (TINY_SPACE.replace('"blocks.*.depthwise"\n', '"blocks.*.depthwise"\n    candidates: []\n'), [], [":8:", "insert[0].candidates", "at least 1 item"]),
    "kernel list empty": (TINY_SPACE.replace("k: [3, 5]", "k: []"), [], [":10:", "candidates[1]", "'k' of op 'avgpool' is an empty list"]),
    "duplicate key": (TINY_SPACE.replace("  input_size: 16\n", "  input_size: 16\n  input_size: 32\n"), [], [":6:", "backbone.input_size", "duplicate key 'input_size' (first on line 5)"]),
    "duplicate section": (TINY_SPACE + "train: {seed: 3}\n", [], [":16:", "train", "duplicate key 'train' (first on line 14)"]),
    "lr 1e999": (TINY_SPACE.replace("batch_size: 16}", "batch_size: 16, optimizer: {lr: 1e999}}"), [], [":15:", "train.search.optimizer.lr", "finite number"]),
    "strategy option nan": (TINY_SPACE + "strategy: {name: pmpl, rho: .nan}\n", [], [":16:", "strategy.rho", "finite number"]),
    "--set inf": (TINY_SPACE, ["train.search.optimizer.lr=.inf"], ["--set train.search.optimizer.lr=.inf", "train.search.optimizer.lr", "finite number"]),
    "not utf-8": (TINY_SPACE.replace("  kwargs", "  # caf\xe9\n  kwargs").encode("latin-1"), [], [":4:", "not UTF-8 text: byte 0xe9"]),
    "deep nesting": (TINY_SPACE + "description: " + "[" * 300 + "]" * 300 + "\n", [], [":16:", "nested more than 32 levels"]),
    "alias bomb": (_alias_bomb(), [], [":6:", "expands to more than 100,000"]),
    "backbone raises": (TINY_SPACE.replace("examples.custom_backbone:TinyNet", "tests.user_code:raising_backbone"), [], [":4:", "backbone.kwargs", "RuntimeError: this backbone cannot be built"]),
    "backbone returns no module": (TINY_SPACE.replace("examples.custom_backbone:TinyNet", "tests.user_code:not_a_module"), [], [":3:", "backbone.name", "returned dict, not a torch.nn.Module"]),
    "backbone rejects kwargs": (TINY_SPACE.replace("{width: 8}", "{width: 8, depth: 3}"), [], [":4:", "backbone.kwargs", "unexpected keyword argument 'depth'"]),
    "backbone refuses the size": (TINY_SPACE.replace("examples.custom_backbone:TinyNet", "tests.user_code:SizeBound"), [], [":5:", "backbone.input_size", "forward fails on a 1×3×16×16 input"]),
    "op raises": (TINY_SPACE.replace('"blocks.*.depthwise"\n', '"blocks.*.depthwise"\n    candidates: [skip, {op: "tests.user_code:raising_op"}]\n'), [], [":8:", "insert[0].candidates[1]", "op 'raising_op'", "point 'blocks.0.depthwise'", "ValueError"]),
    "op returns no module": (_with_op("tests.user_code:op_not_a_module"), [], [":12:", "candidates[3]", "op 'op_not_a_module'", "not a torch.nn.Module"]),
    "op changes the shape": (_with_op("tests.user_code:Halving"), [], [":12:", "candidates[3]", "op 'halving'", "point 'blocks.0.depthwise' (8×16×16)", "outputs shape (1, 8, 8, 8)"]),
    "op forward fails": (_with_op("tests.user_code:FailingForward"), [], [":12:", "candidates[3]", "op 'failingforward'", "RuntimeError"]),
    "--set malformed yaml": (TINY_SPACE, ["train.search.epochs=[1,"], ["--set train.search.epochs=[1,", "malformed YAML"]),
    "derived resolution": (TINY_SPACE.replace("input_size: 16", "input_size: 100000"), [], [":5:", "backbone.input_size", "data.resolution follows it"]),
    "python tag": (TINY_SPACE.replace("name: tiny", "name: !!python/object/apply:os.system [echo hi]"), [], [":1:", "malformed YAML", "python/object/apply"]),
    "tab indentation": (TINY_SPACE.replace("  input_size: 16", "\tinput_size: 16"), [], [":5:", "malformed YAML"]),
}


@pytest.mark.parametrize("command", ["inspect", "search"])
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_through_inspect_and_search(
    case: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text, sets, fragments = BAD_INPUT[case]
    path = tmp_path / "space.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    extra = ["--out", str(tmp_path / "run"), "--quiet"] if command == "search" else []
    outcome = cli_run.run_cli(monkeypatch, capsys, command, str(path), *extra, *[a for s in sets for a in ("--set", s)])
    line = cli_run.assert_one_line_error(outcome, 2, *fragments)
    assert (f"--set {sets[0]}" if sets else str(path)) in line
    assert not (tmp_path / "run").exists()  # refused before a run directory is made
