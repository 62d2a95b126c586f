"""Files that survive interruption: every write goes to a temporary file and is renamed into place.

Failures are mapped here, once: a write the file system refuses (full disk, read-only) is a
``WriteFailed`` naming the file (exit code 1); a file that cannot be read or is not what it should
be (missing, a directory, not UTF-8, not JSON, a truncated or unsafe checkpoint) is one
``RfsearchError`` line naming it (exit code 2).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rfsearch.errors import RfsearchError, WriteFailed

TMP_SUFFIX = ".tmp"
ORPHAN = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # the name mkstemp gives a write's temporary file: .NAME.XXXXXXXX.tmp


def one_line(err: BaseException) -> str:
    """An exception's message on one line (torch and pydantic write several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err``: torch.save reports a full disk as a RuntimeError raised while
    handling the OSError of the write."""
    while err is not None:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """A write the file system refuses becomes one WriteFailed line naming ``path``."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        cause = _os_error(err)
        torch_says = re.search(r"failed with strerror: (.+)", str(err))  # torch's C++ writers, given a path
        if cause is None and torch_says is None:
            raise
        if cause is None:
            why = torch_says.group(1).strip()
        elif cause.errno in (errno.ENOTDIR, errno.EEXIST):
            why = "a part of its path is a file, not a directory"
        else:
            why = cause.strerror or one_line(cause)
        raise WriteFailed(f"cannot write {path}: {why}") from None


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """A file that cannot be read, or is not the text or JSON it should be, becomes one line naming it."""
    try:
        yield
    except FileNotFoundError:
        raise RfsearchError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RfsearchError(f"{path}: is a directory, not a file") from None
    except OSError as err:
        raise RfsearchError(f"{path}: cannot read it: {err.strerror or one_line(err)}") from None
    except UnicodeDecodeError as err:
        raise RfsearchError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise RfsearchError(f"{path}: not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None


def atomic_write(path: str | Path, write: Any, mode: str = "wb") -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, then rename it in:
    readers (another process, a resumed run) see either no file or a complete one. A temporary
    file a killed write leaves behind is removed by :func:`remove_orphans` on the next start."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        try:
            with os.fdopen(fd, mode) as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes files private; runs and caches are for every user
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def remove_orphans(directory: str | Path) -> list[Path]:
    """Delete the temporary files of writes that were killed before their rename (``.NAME.XXXXXXXX.tmp``)."""
    orphans = sorted(p for p in Path(directory).glob(f".*{TMP_SUFFIX}") if ORPHAN.fullmatch(p.name) and p.is_file())
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda h: h.write(text), "w")


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with reading(path):
        return json.loads(Path(path).read_text(encoding="utf-8"))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """History lines: appended and flushed one by one (a torn last line is skipped on read)."""
    with writing(path), open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The whole records of a JSON-lines file, up to the first torn or broken line."""
    records = []
    with reading(path):
        text = Path(path).read_text(encoding="utf-8")
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda h: torch.save(state, h))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Checkpoints hold tensors and plain Python containers only, so they load with weights_only;
    one that holds anything else is refused (its pickle never runs)."""
    with reading(path):
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            unsafe = re.search(r"GLOBAL ([\w.]+)", str(err))  # the pickle would import and call this
            if unsafe:
                raise RfsearchError(f"{path}: refused: its pickle would run {unsafe.group(1)}, and rfsearch never runs a checkpoint's pickle (it loads tensors only)") from None
            raise RfsearchError(f"{path}: not a complete torch checkpoint (empty, truncated or not written by torch.save)") from None
        except (EOFError, KeyError, RuntimeError, ValueError, OSError) as err:
            # torch reports a cut zip as RuntimeError or EINVAL (a seek past its end), an empty file as EOFError, text as KeyError
            if isinstance(err, OSError) and err.errno != errno.EINVAL:
                raise
            raise RfsearchError(f"{path}: not a complete torch checkpoint (empty, truncated or not written by torch.save)") from None
    if not isinstance(state, dict):
        raise RfsearchError(f"{path}: not an rfsearch checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


@contextlib.contextmanager
def restoring(path: str | Path) -> Iterator[None]:
    """Restoring a run from a checkpoint that loads but does not fit it (a missing entry, a
    state dict of another model) is one line naming the file, not a traceback."""
    try:
        yield
    except KeyError as err:
        raise RfsearchError(f"{path}: it lacks the entry {err}: not a checkpoint of this kind of run") from None
    except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise RfsearchError(f"{path}: its contents do not fit: {_state_dict_mismatch(str(err)) or one_line(err)}") from None


def _state_dict_mismatch(message: str) -> str | None:
    """torch's list of every missing and unexpected key, counted, with the first of each."""
    if not message.startswith("Error(s) in loading state_dict"):
        return None
    parts = []
    for label, header in (("missing", "Missing key(s)"), ("unexpected", "Unexpected key(s)"), ("of another shape", "size mismatch")):
        if header == "size mismatch":
            keys = re.findall(r"size mismatch for ([\w.]+)", message)
        else:
            section = re.search(re.escape(header) + r' in state_dict: (.*?)(?:\. \w|\.\s*$)', message, re.S)
            keys = re.findall(r'"([^"]+)"', section.group(1)) if section else []
        if keys:
            parts.append(f"{len(keys)} weight(s) {label} ({keys[0]}, …)" if len(keys) > 1 else f"1 weight {label} ({keys[0]})")
    return "the weights are not this model's: " + ", ".join(parts) if parts else None
