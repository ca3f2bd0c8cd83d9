"""The Salesforce destination: OAuth, describe, sObject Collections and Bulk API 2.0.

Built in parts: ``api`` (tokens and REST calls read by Salesforce's own signals),
``describe`` (what an object lets a sync write, and values as Salesforce takes
them) and ``collections`` (the synchronous write path) are here; the Bulk API
path and the destination that chooses between them follow.
"""
