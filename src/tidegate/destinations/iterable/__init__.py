"""The Iterable destination: users, list membership and events.

``fields`` turns typed rows into the JSON Iterable takes and reads the
failures it reports inside a 200; ``destination`` picks the endpoint per
object and mode.
"""
