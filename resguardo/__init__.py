"""Resguardo: encrypted multi-region PostgreSQL backups, verified restores and DR drills.

This package holds what every other package shares: configuration, the
message catalogs (i18n), the error type shown to people, logging set-up and the
command-line interface. It never imports Airflow.
"""

__version__ = "0.1.0"
