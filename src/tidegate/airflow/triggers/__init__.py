"""Triggers of tidegate's Airflow provider."""
