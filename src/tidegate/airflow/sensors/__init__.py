"""Sensors of tidegate's Airflow provider."""
