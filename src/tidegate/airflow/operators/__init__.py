"""Operators of tidegate's Airflow provider."""
