"""Deployment files of Resguardo: Airflow settings, Helm values and monitoring rules."""
