"""tidegate: reverse ETL that sends only what changed, and never garbage.

    >>> import tidegate
    >>> project = tidegate.Project.load("path/to/project")
    >>> project.plan("aps_to_salesforce")["planned"]
    >>> project.run("aps_to_salesforce")            # the same summary as --json
"""

from tidegate.errors import (
    ConfigError,
    DestinationError,
    FatalError,
    Problem,
    RetryableError,
    SourceError,
    TidegateError,
)
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
