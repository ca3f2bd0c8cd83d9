"""Hooks of tidegate's Airflow provider."""
