"""The one error tree of tidegate, grouped by what to do about each error.

    TidegateError
     ├── ConfigError        bad configuration or usage: exit 2, each Problem names
     │                      file, line, key and the fix; nothing was sent
     ├── FatalError         the run cannot go on: exit 1; what was acknowledged
     │    │                 before it stays acknowledged, the rest is sent next run
     │    ├── SourceError        the model could not be read (SQL error, unreachable)
     │    └── DestinationError   the destination refused for good (auth, down after retries)
     └── RetryableError     transient (timeouts, 408, 429, 5xx): the batch is retried
                            with backoff; carries the wait the server asked for

A record the destination rejects is not an exception: a destination returns it in
its batch result, with the destination's message, and the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "DestinationError",
    "FatalError",
    "Problem",
    "RetryableError",
    "SourceError",
    "TidegateError",
]


class TidegateError(Exception):
    """Base of every error tidegate raises on purpose."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, and how to fix it."""

    message: str
    file: str | None = None
    line: int | None = None
    key: str | None = None
    fix: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        key = f"{self.key}: " if self.key else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{where}{key}{self.message}.{fix}".replace("..", ".")


class ConfigError(TidegateError):
    """The configuration or the command line is wrong; every problem is listed."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class FatalError(TidegateError):
    """The run cannot go on; the message says why and what to do."""


class SourceError(FatalError):
    """The model could not be read from its source."""


class DestinationError(FatalError):
    """The destination refused the run (credentials, unreachable after retries)."""


class RetryableError(TidegateError):
    """A transient failure: retry the same batch later.

    ``retry_after`` is the wait in seconds the server asked for, if it did.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
