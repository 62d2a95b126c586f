"""The run's history writer: every record goes to history.jsonl and fans out to the ``--log`` sinks
(a CSV file, TensorBoard event files), for users who watch runs in their usual tools.

A sink mirrors history.jsonl: opened on a resumed run, it starts from the records kept there, so
the CSV always holds the same rows as the history, whichever run first asked for it.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rfsearch.errors import RfsearchError
from rfsearch.io import append_jsonl, read_jsonl, write_text, writing

SINKS = ("csv", "tensorboard")
CSV_FILE = "history.csv"
TENSORBOARD_DIR = "tensorboard"


def check_sinks(names: Sequence[str]) -> tuple[str, ...]:
    """The sink names, checked (known, and their package installed), without repeats."""
    names = tuple(dict.fromkeys(n.strip() for item in names for n in item.split(",") if n.strip()))
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise RfsearchError(f"--log {unknown[0]}: unknown logger; use {' or '.join(SINKS)}")
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise RfsearchError("--log tensorboard needs the tensorboard package: pip install 'rfsearch[tensorboard]'")
    return names


def flatten(record: Mapping[str, Any], labels: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """One history record as flat columns: numbers as they are, ``probs`` as ``pi/<point>/<candidate>``
    (candidate names from ``labels``, else their index), ``fixings`` as ``point=choice`` items."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key == "probs":
            for path, probs in value.items():
                names = (labels or {}).get(path) or [str(i) for i in range(len(probs))]
                flat.update({f"pi/{path}/{name}": p for name, p in zip(names, probs)})
        elif key == "fixings":
            flat[key] = " ".join(f"{f['path']}={'+'.join(f['choice'])}" for f in value)
        else:
            flat[key] = value
    return flat


class Sink(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class CsvSink:
    """``history.csv``: one row per record; a column that appears later (the meta loss once α
    starts) rewrites the file with the wider header, earlier rows left empty there."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]) -> None:
        self.path = path
        self.rows = list(rows)
        self.columns: list[str] = list(dict.fromkeys(k for row in self.rows for k in row))
        write_text(path, self._text(self.rows, header=True))

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            write_text(self.path, self._text(self.rows, header=True))
            return
        with writing(self.path), open(self.path, "a", newline="") as handle:
            handle.write(self._text([row], header=False))
            handle.flush()

    def _text(self, rows: list[dict[str, Any]], header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Event files under ``tensorboard/``: every number of a record as a scalar at its step (or
    epoch). A resumed run purges the events past its checkpoint and writes the kept history again."""

    def __init__(self, log_dir: Path, rows: list[dict[str, Any]], x_key: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.x_key = x_key
        self.writer = SummaryWriter(str(log_dir), purge_step=0 if rows else None)
        for row in rows:
            self.write(row)

    def write(self, row: dict[str, Any]) -> None:
        step = int(row[self.x_key])
        for key, value in row.items():
            if key != self.x_key and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class HistoryWriter:
    """Appends a run's records to history.jsonl and hands each, flattened, to the ``--log`` sinks.
    ``x_key`` is the record's position (``step`` for a search, ``epoch`` for a retrain); ``labels``
    names the entries of each point's π list."""

    def __init__(self, path: str | Path, sinks: Sequence[str] = (), *, x_key: str = "step", labels: Mapping[str, Sequence[str]] | None = None) -> None:
        self.path = Path(path)
        self.names = check_sinks(sinks)
        self.x_key = x_key
        self.labels = dict(labels or {})
        self.sinks: list[Sink] | None = None  # opened at the first record: a resumed run has truncated its history by then

    def write(self, record: dict[str, Any]) -> None:
        sinks = self._open()
        append_jsonl(self.path, record)
        if sinks:
            row = flatten(record, self.labels)
            for sink in sinks:
                sink.write(row)

    def _open(self) -> list[Sink]:
        if self.sinks is None:
            kept = [flatten(r, self.labels) for r in read_jsonl(self.path)] if self.names and self.path.exists() else []
            self.sinks = []
            if "csv" in self.names:
                self.sinks.append(CsvSink(self.path.parent / CSV_FILE, kept))
            if "tensorboard" in self.names:
                self.sinks.append(TensorBoardSink(self.path.parent / TENSORBOARD_DIR, kept, self.x_key))
        return self.sinks

    def close(self) -> None:
        for sink in self.sinks or []:
            sink.close()
