"""The public names are few, stable and all exported."""

from __future__ import annotations

import tidegate
import tidegate.destinations


def test_top_level_exports_are_complete_and_importable() -> None:
    assert sorted(tidegate.__all__) == [
        "ConfigError", "DestinationError", "FatalError", "Problem", "Project",
        "RetryableError", "SourceError", "TidegateError", "__version__",
    ]
    for name in tidegate.__all__:
        assert getattr(tidegate, name) is not None


def test_every_error_is_a_tidegate_error_with_an_exit_code() -> None:
    for name in ("ConfigError", "DestinationError", "FatalError", "SourceError",
                 "RetryableError"):
        error = getattr(tidegate, name)
        assert issubclass(error, tidegate.TidegateError)
    assert tidegate.ConfigError.exit_code == 2
    assert tidegate.FatalError.exit_code == 1


def test_builtin_destinations_are_found_through_entry_points() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="tidegate.destinations")}
    assert {"webhook", "postgres", "file"} <= names
    for kind in ("webhook", "postgres", "file"):
        cls = tidegate.destinations.load(kind)
        assert cls.kind == kind
        assert cls.capabilities.modes
    assert set(tidegate.destinations.__all__) >= {"Destination", "Batch", "BatchResult",
                                                   "Capabilities", "load", "kinds"}
