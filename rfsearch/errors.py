"""User-facing errors: the CLI prints them as one line and exits with code 2, no traceback."""

from __future__ import annotations


class RfsearchError(Exception):
    """Bad input from the user (a config, a path, a flag). Never raised for internal bugs."""

    exit_code = 2


class ConfigError(RfsearchError):
    """A problem at a known place of a config file: file, dotted key path and YAML line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message, self.file, self.path, self.line = message, file, path, line
        where = ":".join(str(p) for p in (file, line) if p is not None)
        parts = [p for p in (where, path) if p]
        super().__init__(": ".join([*parts, message]))


class RunStopped(RfsearchError):
    """A run that cannot go on (a file it cannot write, a loss that is not finite): exit code 1,
    and what it saved before (the last checkpoint) stays as it was."""

    exit_code = 1


class WriteFailed(RunStopped):
    """The file system refused a write (full disk, read-only, no permission)."""


class NonFiniteError(RunStopped):
    """A loss or a weight became NaN or infinite: the run stops before it saves anything of it."""


class RfsearchWarning(UserWarning):
    """Something the user should know that changes nothing they asked for (the CLI prints one line)."""
