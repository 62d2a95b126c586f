"""The README's Python example runs as written (only its output folder is moved to a temp dir)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_python_api_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "run_search" in code and "build_child" in code
    monkeypatch.chdir(ROOT)
    exec(compile(code.replace('"runs/api-demo"', repr(str(tmp_path / "api-demo"))), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "blocks.0.depthwise" in out
    assert "torch.Size([1, 3])" in out
    assert (tmp_path / "api-demo" / "arch.json").exists()
