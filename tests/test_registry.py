"""One registry for ops and strategies, and ``rfsearch list``: names, options and defaults."""

from __future__ import annotations

import pytest

from rfsearch.ops import register_op
from rfsearch.ops.registry import OPS
from rfsearch.registry import Registry
from rfsearch.strategies import get_strategy, register_strategy
from rfsearch.strategies.pmpl import PMPL
from rfsearch.strategies.registry import STRATEGIES
from tests import cli_run


def _sized(name: str, value: object) -> int:
    if not isinstance(value, int):
        raise ValueError(f"'{name}' is not an int")
    return value


def test_a_registry_registers_gets_lists_and_refuses_duplicates() -> None:
    numbers: Registry[int] = Registry("number", _sized)
    numbers.register("two", 2)
    numbers.register("twelve", 12)
    numbers.register("three", 3)
    assert numbers.get("two") == 2
    assert list(numbers.entries("tw*")) == ["twelve", "two"] and list(numbers.entries()) == ["three", "twelve", "two"]
    with pytest.raises(ValueError, match="number 'two' is already registered"):
        numbers.register("two", 22)
    assert numbers.get("two") == 2
    with pytest.raises(ValueError, match=r"unknown number 'four'; known: three, twelve, two"):
        numbers.get("four")
    with pytest.raises(ValueError, match="'math:pi' is not an int"):
        numbers.get("math:pi")
    assert numbers.get("errno:ENOENT") == 2  # by import path, converted by the registry's check


def test_ops_and_strategies_share_it() -> None:
    assert isinstance(OPS, Registry) and isinstance(STRATEGIES, Registry)
    with pytest.raises(ValueError, match="op 'avgpool' is already registered"):
        register_op("avgpool")(lambda channels: None)
    with pytest.raises(ValueError, match="strategy 'pmpl' is already registered"):
        register_strategy("pmpl")(PMPL)
    assert get_strategy("pmpl") is PMPL and get_strategy("tests.test_strategy_layout:InterruptedPMPL").__mro__[1] is PMPL
    with pytest.raises(ValueError, match="'math:pi' is not a subclass of rfsearch.Strategy"):
        get_strategy("math:pi")


def test_list_prints_names_with_their_options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ops = cli_run.run_cli(monkeypatch, capsys, "list", "ops", "*pool")
    assert ops.code == 0, ops.err
    rows = {line.split()[1]: line for line in ops.out.splitlines() if line.startswith("│")}
    assert sorted(rows) == ["avgpool", "maxpool"] and "k (required)" in rows["avgpool"]

    strategies = cli_run.run_cli(monkeypatch, capsys, "list", "strategies")
    rows = {line.split()[1]: line for line in strategies.out.splitlines() if line.startswith("│")}
    assert sorted(rows) == ["pmpl", "random", "uniform"]
    assert '"lr": 0.0003' in rows["pmpl"] and "arch_warmup_epochs=0" in rows["pmpl"] and "rho=0.2" in rows["pmpl"]
    assert "eval_batches=4" in rows["uniform"]

    backbones = cli_run.run_cli(monkeypatch, capsys, "list", "backbones", "mobilenet_v*")
    rows = {line.split()[1]: line for line in backbones.out.splitlines() if line.startswith("│")}
    assert sorted(rows) == ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"] and "IMAGENET1K_V1" in rows["mobilenet_v2"]


def test_list_refuses_an_unknown_kind_and_an_empty_match(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cli_run.assert_one_line_error(cli_run.run_cli(monkeypatch, capsys, "list", "models"), 2, "'models' is not one of ops, strategies, backbones")
    cli_run.assert_one_line_error(cli_run.run_cli(monkeypatch, capsys, "list", "ops", "zz*"), 2, "no name matches 'zz*'")
