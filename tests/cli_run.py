"""Run the ``rfsearch`` command line in this process, as a user would from a shell, and check the
promise every failure keeps: its exit code, exactly one line on stderr, no traceback."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from rfsearch.cli import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def exit_code(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """``rfsearch ARGS`` through the real entry point; its exit code."""
    monkeypatch.setattr(sys, "argv", ["rfsearch", *args])
    try:
        main()
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    code = exit_code(monkeypatch, *args)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_one_line_error(outcome: Outcome, code: int, *fragments: str) -> str:
    """The failure exits with ``code`` and says it in one line on stderr holding every fragment."""
    text = outcome.out + outcome.err
    assert "Traceback" not in text, text
    assert outcome.code == code, text
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1, outcome.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
