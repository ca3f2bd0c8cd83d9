"""The Salesforce destination: OAuth, describe, sObject Collections and Bulk API 2.0.

``api`` (tokens and REST calls read by Salesforce's own signals), ``describe``
(what an object lets a sync write, and values as Salesforce takes them),
``collections`` (the synchronous write path, for small runs), ``bulk`` and
``csvdata`` (Bulk API 2.0 ingest jobs and their CSV, for large runs), and
``destination``, which chooses between the two per run.
"""
