"""tidegate: reverse ETL that sends only what changed, and never garbage.

    >>> import tidegate
    >>> project = tidegate.Project.load("path/to/project")
    >>> project.plan("aps_to_salesforce")["planned"]
    >>> project.run("aps_to_salesforce")            # the same summary as --json
"""

import os

# Arrow's bundled allocator keeps freed memory for reuse, which a first sync's
# stream of short-lived batches turns into a hundred megabytes of peak RSS at a
# million rows; the system allocator hands it back. Arrow reads this variable
# when it first allocates, so it is set before anything here imports pyarrow;
# a process that chose a pool itself keeps its choice.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from typing import TYPE_CHECKING, Any

from tidegate.errors import (
    ConfigError,
    DestinationError,
    FatalError,
    Problem,
    RetryableError,
    SourceError,
    TidegateError,
)

if TYPE_CHECKING:
    from tidegate.project import Project

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DestinationError",
    "FatalError",
    "Problem",
    "Project",
    "RetryableError",
    "SourceError",
    "TidegateError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # ``Project`` brings DuckDB, Arrow and pydantic: it is imported when first
    # asked for, so a command line that only needs the errors starts fast, and
    # the command line imports it itself with the collector paused.
    if name == "Project":
        from tidegate.imports import quietly

        with quietly():
            from tidegate.project import Project

        return Project
    raise AttributeError(f"module 'tidegate' has no attribute {name!r}")
