"""Progress reporting: a rich bar on a terminal, silence everywhere else."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def phase(self, text: str) -> None: ...
    def start(self, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    """Reports nothing: for pipes, logs, Airflow and the Python API."""

    def phase(self, text: str) -> None:
        pass

    def start(self, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


class RichReporter:
    """A progress bar on stderr, for people watching a terminal."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True, emoji=False),
            transient=True,
        )
        self._label = label
        self._task = self._progress.add_task(label, total=None)
        self._progress.start()

    def phase(self, text: str) -> None:
        self._progress.update(self._task, description=f"{self._label}: {text}")

    def start(self, total: int) -> None:
        self._progress.update(self._task, total=total, completed=0)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def finish(self) -> None:
        self._progress.stop()
