"""Nothing is lost: a write the disk refuses and a loss that turns NaN both stop a run with one line
and exit code 1, keeping the last good checkpoint (and no NaN in arch.json or metrics.json); a run
killed before its first checkpoint resumes with every step in its history once; temporary files
of killed writes are removed on the next start."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from rfsearch import Arch, load_space, run_retrain, run_search
from rfsearch.errors import NonFiniteError
from rfsearch.io import load_checkpoint, read_jsonl
from tests import cli_run, tiny

SPACE = "spaces/custom_backbone.yaml"
SETS = [*tiny.TINY, "train.search.batch_size=16", "train.retrain.batch_size=16", "train.retrain.epochs=1"]
# TinyNet whose logits turn NaN after 9 training forwards: within the second epoch of a search (3 steps
# an epoch, at most 3 forwards a step) and of a retrain (6 steps an epoch, one forward a step)
DIVERGING = ["backbone.name=tests.user_code:Diverging", "backbone.kwargs.nan_after=9"]


def sets(*extra: str) -> list[str]:
    return [a for s in [*SETS, *extra] for a in ("--set", s)]


def no_nan(text: str) -> object:
    """The JSON of ``text``; NaN or Infinity tokens fail the test."""

    def refuse(token: str) -> None:
        raise AssertionError(f"non-finite number {token} written")

    return json.loads(text, parse_constant=refuse)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, as writes on a full disk fail with ENOSPC: a
    real refusal by the kernel (RLIMIT_FSIZE), for this process only and only for this block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 2-epoch search, and a diverging search stopped by its NaN after its first epoch."""
    root = tmp_path_factory.mktemp("runs")
    run_search(load_space(SPACE, [*SETS, "train.search.epochs=2"]), root / "search", show_progress=False)
    with pytest.raises(NonFiniteError):
        run_search(load_space(SPACE, [*SETS, *DIVERGING, "train.search.epochs=4"]), root / "diverged", show_progress=False)
    assert load_checkpoint(root / "diverged" / "checkpoint.pt")["epoch"] == 1
    # the diverging backbone's arch, chosen by the random strategy without a training step
    assert run_search(load_space(SPACE, [*SETS, *DIVERGING, "strategy.name=random"]), root / "diverging-arch", show_progress=False).steps == 0
    return {"search": root / "search", "diverged": root / "diverged", "diverging-arch": root / "diverging-arch"}


# name: (command line given the run directories, the fragments of its one line, the checkpoint it keeps: epoch, or None for none)
NAN = {
    "search diverges in its second epoch": ("search", lambda t, r: ["search", SPACE, "--out", str(t / "run"), "--quiet", *sets(*DIVERGING, "train.search.epochs=4")], ["search step", "loss is nan", "the last checkpoint", "is kept"], 1),
    "search diverges at once (lr 1e30)": ("search", lambda t, r: ["search", SPACE, "--out", str(t / "run"), "--quiet", *sets("train.search.optimizer.lr=1e30", "train.search.epochs=2")], ["search step", "is nan", "no checkpoint had been written yet"], None),
    "retrain diverges in its second epoch": ("retrain", lambda t, r: ["retrain", str(r["diverging-arch"]), "--out", str(t / "run"), "--quiet", *sets(*DIVERGING, "train.retrain.epochs=3")], ["retrain step 10 (epoch 2)", "loss is nan", "the last checkpoint", "is kept"], 1),
    "retrain diverges at once (lr 1e30)": ("retrain", lambda t, r: ["retrain", str(r["search"]), "--out", str(t / "run"), "--quiet", *sets("train.retrain.optimizer.lr=1e30", "train.retrain.epochs=2")], ["retrain step", "is nan", "no checkpoint had been written yet"], None),
}


@pytest.mark.parametrize("case", list(NAN))
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    case: str, runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kind, command, fragments, kept_epoch = NAN[case]
    outcome = cli_run.run_cli(monkeypatch, capsys, *command(tmp_path, runs))
    cli_run.assert_one_line_error(outcome, 1, *fragments)
    run = tmp_path / "run"
    assert "done" not in outcome.out
    if kept_epoch is None:
        assert not (run / "checkpoint.pt").exists()
        assert kind == "retrain" or not (run / "arch.json").exists()  # a retrain writes its (finite) arch first
    else:
        state = load_checkpoint(run / "checkpoint.pt")
        assert state["epoch"] == kept_epoch and not state.get("finished", False)
        no_nan((run / "arch.json").read_text())
        assert Arch.load(run, complete=kind == "retrain")  # a NaN π would be refused here
        if kind == "retrain":
            metrics = no_nan((run / "metrics.json").read_text())
            assert metrics["epochs"] == 1 and not metrics["finished"]
    if (run / "history.jsonl").exists():
        for line in (run / "history.jsonl").read_text().splitlines():
            no_nan(line)


# name: (command line given the test's directory and the diverged run, the fragments of its one line, the file-size limit)
FAULTS = {
    "resumed search, checkpoint past the limit": (lambda t, run: ["search", "--resume", str(run), "--quiet"], ["cannot write {run}/checkpoint.pt: File too large", "the last checkpoint {run}/checkpoint.pt is kept"], "half the checkpoint"),
    "fresh retrain, first checkpoint past the limit": (lambda t, run: ["retrain", str(t / "search"), "--out", str(t / "r"), "--quiet", *sets()], ["cannot write {t}/r/", "File too large", "no checkpoint had been written yet"], 4096),
    "search output inside a file": (lambda t, run: ["search", SPACE, "--out", str(t / "a-file" / "run"), "--quiet", *sets("train.search.epochs=1")], ["cannot write {t}/a-file/run: a part of its path is a file"], None),
    "export inside a file": (lambda t, run: ["export", str(t / "search"), "--format", "torchscript", "--out", str(t / "a-file" / "child.pt")], ["cannot write {t}/a-file/child.pt: a part of its path is a file"], None),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_a_refused_write_stops_the_run_and_keeps_the_last_checkpoint(
    case: str, runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What could not be written, that the last checkpoint is kept, exit 1; the checkpoint intact."""
    command, fragments, limit = FAULTS[case]
    for name, source in runs.items():
        shutil.copytree(source, tmp_path / name)
    run = tmp_path / "diverged"  # resumable: the checkpoint of epoch 1 of 4
    (tmp_path / "a-file").write_text("in the way\n")
    before = (run / "checkpoint.pt").read_bytes()
    if limit == "half the checkpoint":
        limit = len(before) // 2
        assert limit > max((run / name).stat().st_size for name in ("config.yaml", "arch.json", "history.jsonl"))
    with file_size_limit(limit) if limit else contextlib.nullcontext():
        outcome = cli_run.run_cli(monkeypatch, capsys, *command(tmp_path, run))
    cli_run.assert_one_line_error(outcome, 1, *[f.format(run=run, t=tmp_path) for f in fragments])
    assert (run / "checkpoint.pt").read_bytes() == before  # the previous checkpoint intact
    for directory in (run, tmp_path / "r"):
        assert not list(directory.glob(".*.tmp"))  # a refused write leaves no temporary file


def test_a_kill_before_the_first_checkpoint_resumes_with_each_step_once(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The directory a kill during the first checkpoint's write leaves: the config, two whole history
    lines and a torn third, the checkpoint's temporary file. --resume starts over, with history
    steps 1, 2, 3 … once each, equal to the uninterrupted run's, and the orphan gone."""
    whole = runs["search"]
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(whole / "config.yaml", killed / "config.yaml")
    lines = (whole / "history.jsonl").read_text().splitlines(keepends=True)
    (killed / "history.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    (killed / ".checkpoint.pt.x7q2k9m1.tmp").write_bytes((whole / "checkpoint.pt").read_bytes()[:1000])

    outcome = cli_run.run_cli(monkeypatch, capsys, "search", "--resume", str(killed), "--quiet")
    assert outcome.code == 0, outcome.err
    assert f"Resuming {killed} from the start: it holds no checkpoint yet" in outcome.out.splitlines()
    history = read_jsonl(killed / "history.jsonl")
    steps = [r["step"] for r in history if "final" not in r]
    assert steps == list(range(1, len(steps) + 1)) and steps
    assert history == read_jsonl(whole / "history.jsonl")
    assert not list(killed.glob(".*.tmp"))


@pytest.mark.parametrize("command", ["search", "retrain"])
def test_orphaned_temporary_files_are_removed_on_the_next_start(
    command: str, runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    orphans = [out / ".checkpoint.pt.a1b2c3d4.tmp", out / ".arch.json.c3d4e5f6.tmp", out / ".history.jsonl.e5f6_7h8.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a write")
    mine, also_mine = out / "notes.tmp", out / ".notes.tmp"  # not the names of a write's temporary file: the user's, kept
    mine.write_text("keep me\n")
    also_mine.write_text("keep me\n")
    args = [SPACE, "--out", str(out), *sets("train.search.epochs=1")] if command == "search" else [str(runs["search"]), "--out", str(out), *sets()]
    outcome = cli_run.run_cli(monkeypatch, capsys, command, *args, "--quiet")
    assert outcome.code == 0, outcome.err
    assert not any(o.exists() for o in orphans) and mine.read_text() == also_mine.read_text() == "keep me\n"
    assert (out / "checkpoint.pt").exists()


def test_retrain_refuses_an_arch_whose_pi_are_not_finite(runs: dict[str, Path], tmp_path: Path) -> None:
    arch = json.loads((runs["search"] / "arch.json").read_text())
    arch["points"][2]["probs"] = {name: float("inf") for name in arch["points"][2]["probs"]}
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(Exception, match=r"points\[2\]\.probs\..*finite number"):
        run_retrain(load_space(SPACE, SETS), Arch.load(tmp_path / "arch.json"), tmp_path / "run", show_progress=False)


def test_a_kill_after_the_last_checkpoint_resumes_to_the_same_run(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed after its final checkpoint (before its summary): --resume loads the finished state,
    whose optimizers hold only what is left after the last fixings, and changes nothing."""
    run = tmp_path / "run"
    shutil.copytree(runs["search"], run)
    (run / "summary.json").unlink()
    before = (run / "history.jsonl").read_text(), (run / "arch.json").read_text()
    outcome = cli_run.run_cli(monkeypatch, capsys, "search", "--resume", str(run), "--quiet")
    assert outcome.code == 0, outcome.err
    assert ((run / "history.jsonl").read_text(), (run / "arch.json").read_text()) == before
    assert (run / "summary.json").exists()
