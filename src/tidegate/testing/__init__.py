"""Test helpers shipped with tidegate, for tidegate's own suite and for plugin authors."""
