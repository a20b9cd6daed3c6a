"""Airflow settings for production: OpenID Connect login (``webserver_config.py``) and roles (``roles.py``)."""
