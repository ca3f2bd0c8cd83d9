"""tidegate's Apache Airflow provider: run syncs as tasks (``pip install 'tidegate[airflow]'``).

    from tidegate.airflow import ReverseETLOperator, TidegateHook, TidegateSyncOperator
    from tidegate.airflow import TidegateSyncSensor, TidegateTriggerSyncOperator  # server

The provider is registered with Airflow through the ``apache_airflow_provider``
entry point (``get_provider_info``), with its ``tidegate`` connection type (a
state store) and ``tidegate_server`` (a ``tidegate serve``) declared in the way
Airflow 3.2 reads without importing the hooks. Its layout is Airflow's own:
``hooks/``, ``operators/``, ``sensors/``, ``triggers/``; ``connections`` turns
Airflow connections into tidegate settings, ``lineage`` names OpenLineage
datasets. It is a thin face over ``tidegate.Project``; nothing outside this
package imports Airflow, and importing this module does not either.
"""

from __future__ import annotations

from typing import Any

from tidegate import __version__

__all__ = ["ReverseETLOperator", "TidegateHook", "TidegateServerHook", "TidegateSyncOperator",
           "TidegateSyncSensor", "TidegateTriggerSyncOperator", "get_provider_info"]

_LAZY = {
    "TidegateHook": "tidegate.airflow.hooks.tidegate",
    "TidegateSyncOperator": "tidegate.airflow.operators.sync",
    "ReverseETLOperator": "tidegate.airflow.operators.reverse_etl",
    "TidegateServerHook": "tidegate.airflow.hooks.server",
    "TidegateTriggerSyncOperator": "tidegate.airflow.operators.server",
    "TidegateSyncSensor": "tidegate.airflow.sensors.server",
}
_NAME = "tidegate"


def get_provider_info() -> dict[str, Any]:
    """The provider's metadata, in the shape of Airflow's ``provider_info.schema.json``."""
    return {
        "package-name": "tidegate",
        "name": "tidegate",
        "description": "Reverse ETL syncs as Airflow tasks: only what changed, at the rate "
                       "each API allows, held by guardrails before anything is sent.",
        "versions": [__version__],
        "integrations": [{"integration-name": _NAME, "tags": ["service"],
                          "external-doc-url": "https://pypi.org/project/tidegate/"}],
        "hooks": [{"integration-name": _NAME,
                   "python-modules": ["tidegate.airflow.hooks.tidegate",
                                      "tidegate.airflow.hooks.server"]}],
        "operators": [{"integration-name": _NAME,
                       "python-modules": ["tidegate.airflow.operators.sync",
                                          "tidegate.airflow.operators.reverse_etl",
                                          "tidegate.airflow.operators.server"]}],
        "sensors": [{"integration-name": _NAME,
                     "python-modules": ["tidegate.airflow.sensors.server"]}],
        "triggers": [{"integration-name": _NAME,
                      "python-modules": ["tidegate.airflow.triggers.server"]}],
        "connection-types": [{
            "connection-type": "tidegate",
            "hook-class-name": "tidegate.airflow.hooks.tidegate.TidegateHook",
            "hook-name": "tidegate state store",
            "conn-fields": {
                "url": {
                    "label": "State store URL",
                    "description": "A whole state store URL instead of the fields above, "
                                   "e.g. sqlite:////var/lib/tidegate/state.db",
                    "schema": {"type": ["string", "null"]},
                },
                "sslmode": {
                    "label": "SSL mode",
                    "schema": {"type": ["string", "null"],
                               "enum": [None, "disable", "allow", "prefer", "require",
                                        "verify-ca", "verify-full"]},
                },
            },
            "ui-field-behaviour": {
                "hidden-fields": ["extra"],
                "relabeling": {"host": "PostgreSQL host", "schema": "Database"},
                "placeholders": {"host": "postgres.internal", "port": "5432",
                                 "schema": "tidegate", "login": "tidegate"},
            },
        }, {
            "connection-type": "tidegate_server",
            "hook-class-name": "tidegate.airflow.hooks.server.TidegateServerHook",
            "hook-name": "tidegate server",
            "ui-field-behaviour": {
                "hidden-fields": ["login", "extra"],
                "relabeling": {"host": "Server URL", "password": "API token"},
                "placeholders": {"host": "http://tidegate.internal:8787",
                                 "password": "the server's TIDEGATE_API_TOKEN"},
            },
        }],
    }


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tidegate.airflow' has no attribute {name!r}")
