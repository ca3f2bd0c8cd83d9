"""The Salesforce destination: OAuth, describe, sObject Collections and Bulk API 2.0.

Built in parts: ``api`` (tokens and REST calls read by Salesforce's own signals)
is here; the write paths follow.
"""
