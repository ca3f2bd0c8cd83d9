"""The HubSpot destination: CRM v3 objects written through the batch endpoints.

``properties`` reads an object type's properties (what a sync may write, and
values in HubSpot's string forms) and ``destination`` sends the batches,
reading HubSpot's own signals: 207 multi-status, ``policyName`` on 429s.
"""
