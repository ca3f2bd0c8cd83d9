"""The Salesforce destination: OAuth, describe, sObject Collections and Bulk API 2.0.

Built in parts: ``api`` (tokens and REST calls read by Salesforce's own signals)
and ``describe`` (what an object lets a sync write, and values as Salesforce
takes them) are here; the write paths follow.
"""
