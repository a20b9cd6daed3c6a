"""Airflow UI login through OpenID Connect for the FAB auth manager (apache-airflow-providers-fab 3.10.2).

Airflow reads this file from ``[fab] config_file`` (default
``$AIRFLOW_HOME/webserver_config.py``) when ``[core] auth_manager`` is
``airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager``.

Terms:

- *provider*: the identity provider (IdP), Microsoft Entra ID (``azure``) or
  Auth0 (``auth0``), chosen by ``RESGUARDO_OIDC_PROVIDER``.
- *authorization code flow with PKCE*: the browser gets a one-time code from
  the IdP and the API server exchanges it for tokens, proving with a
  ``code_verifier`` that it started the login. Authlib does this when the
  provider's ``client_kwargs`` has ``code_challenge_method: S256``; Airflow
  has no setting of its own for it.
- *redirect URI*: ``https://<host>/auth/oauth-authorized/<provider>``, to be
  registered at the IdP.
- *group*: the value in the IdP token that selects Airflow roles: an Entra
  app role or group object id (claim ``RESGUARDO_OIDC_AZURE_ROLE_CLAIM``,
  default ``roles``), or an Auth0 ``groups`` claim added by an Action.

Environment variables (secrets come from the environment or a mounted file,
never from this file):

==================================  =====================================================
``RESGUARDO_OIDC_PROVIDER``          ``azure`` or ``auth0`` (required)
``RESGUARDO_OIDC_CLIENT_ID``         application (client) id (required)
``RESGUARDO_OIDC_CLIENT_SECRET``     client secret, or ``..._SECRET_FILE`` with its path
``RESGUARDO_OIDC_AZURE_TENANT_ID``   Entra tenant id (GUID), required for ``azure``
``RESGUARDO_OIDC_AZURE_ROLE_CLAIM``  ``roles`` (app roles, default) or ``groups``
``RESGUARDO_OIDC_AUTH0_DOMAIN``      tenant domain, e.g. ``banco.us.auth0.com``, for ``auth0``
``RESGUARDO_OIDC_GROUP_DBA``         IdP groups (comma-separated) mapped to ``resguardo_dba``
``RESGUARDO_OIDC_GROUP_COMPLIANCE``  ... to ``resguardo_compliance``
``RESGUARDO_OIDC_GROUP_DR``          ... to ``resguardo_dr_coordinator``
``RESGUARDO_OIDC_GROUP_AUTOMATION``  ... to ``resguardo_automation``
``RESGUARDO_OIDC_GROUP_ADMIN``       ... to Airflow's ``Admin`` (optional; the platform team)
``RESGUARDO_SESSION_MINUTES``        UI session lifetime in minutes (default 30)
==================================  =====================================================

A user whose groups map to no role still logs in, with the ``Public`` role,
which has no permission: the UI shows nothing until the IdP assigns a group.
Roles are recomputed from the token at every login, so removing a user from a
group at the IdP removes the role at the next login.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from flask_appbuilder.const import AUTH_OAUTH

from resguardo.errors import ConfigError
from resguardo.i18n import _

PROVIDER_ENV = "RESGUARDO_OIDC_PROVIDER"
SUPPORTED_PROVIDERS = ("azure", "auth0")

# Airflow role names; deploy/airflow/roles.py creates the four Resguardo roles.
GROUP_ENV_TO_ROLE = {
    "RESGUARDO_OIDC_GROUP_DBA": "resguardo_dba",
    "RESGUARDO_OIDC_GROUP_COMPLIANCE": "resguardo_compliance",
    "RESGUARDO_OIDC_GROUP_DR": "resguardo_dr_coordinator",
    "RESGUARDO_OIDC_GROUP_AUTOMATION": "resguardo_automation",
    "RESGUARDO_OIDC_GROUP_ADMIN": "Admin",
}


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(
            _("environment variable {name} is not set; the Airflow UI login needs it").format(name=name),
            _("set {name} in the API server's environment (see docs/deployment.md, OpenID Connect)").format(name=name),
        )
    return value


def _client_secret() -> str:
    """Return the client secret from ``RESGUARDO_OIDC_CLIENT_SECRET`` or the file named by ``..._FILE``."""
    path = os.environ.get("RESGUARDO_OIDC_CLIENT_SECRET_FILE", "").strip()
    if path:
        try:
            secret = Path(path).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(
                _("client secret file {path} could not be read: {error}").format(path=path, error=error.strerror),
                _("mount the secret at that path or fix RESGUARDO_OIDC_CLIENT_SECRET_FILE"),
            ) from None
        if not secret:
            raise ConfigError(
                _("client secret file {path} is empty").format(path=path),
                _("write the client secret issued by the identity provider into the file"),
            )
        return secret
    return _required("RESGUARDO_OIDC_CLIENT_SECRET")


def _groups(name: str) -> list[str]:
    return [group.strip() for group in os.environ.get(name, "").split(",") if group.strip()]


def roles_mapping() -> dict[str, list[str]]:
    """Return ``AUTH_ROLES_MAPPING``: each IdP group to the Airflow roles it grants."""
    mapping: dict[str, list[str]] = {}
    for env, role in GROUP_ENV_TO_ROLE.items():
        for group in _groups(env):
            mapping.setdefault(group, []).append(role)
    return mapping


def azure_provider(client_id: str, client_secret: str) -> dict:
    """Return the FAB OAuth provider entry for Microsoft Entra ID (v2.0 endpoints, PKCE)."""
    tenant = _required("RESGUARDO_OIDC_AZURE_TENANT_ID")
    authority = f"https://login.microsoftonline.com/{tenant}"
    return {
        "name": "azure",
        "icon": "fa-windows",
        "token_key": "access_token",
        "remote_app": {
            "client_id": client_id,
            "client_secret": client_secret,
            "api_base_url": f"{authority}/oauth2/v2.0/",
            "authorize_url": f"{authority}/oauth2/v2.0/authorize",
            "access_token_url": f"{authority}/oauth2/v2.0/token",
            "request_token_url": None,
            # Authlib checks the id_token's signature and issuer with these.
            "jwks_uri": f"{authority}/discovery/v2.0/keys",
            "issuer": f"{authority}/v2.0",
            "client_kwargs": {
                "scope": "openid email profile",
                "code_challenge_method": "S256",
                # FAB verifies the id_token signature, issuer and audience
                # against this tenant; without it any tenant's token would do.
                "verify_signature": True,
                "tenant_id": tenant,
            },
        },
    }


def auth0_provider(client_id: str, client_secret: str) -> dict:
    """Return the FAB OAuth provider entry for Auth0 (OpenID Connect discovery, PKCE)."""
    domain = _required("RESGUARDO_OIDC_AUTH0_DOMAIN").removeprefix("https://").rstrip("/")
    return {
        "name": "auth0",
        "icon": "fa-lock",
        "token_key": "access_token",
        "remote_app": {
            "client_id": client_id,
            "client_secret": client_secret,
            "api_base_url": f"https://{domain}/",
            # Authlib reads the endpoints and signing keys from discovery on first use.
            "server_metadata_url": f"https://{domain}/.well-known/openid-configuration",
            "client_kwargs": {
                "scope": "openid email profile",
                "code_challenge_method": "S256",
            },
        },
    }


def oauth_providers() -> list[dict]:
    """Return ``OAUTH_PROVIDERS`` for the provider chosen by ``RESGUARDO_OIDC_PROVIDER``."""
    provider = _required(PROVIDER_ENV).lower()
    if provider not in SUPPORTED_PROVIDERS:
        raise ConfigError(
            _("{name}={value!r} is not a supported identity provider").format(name=PROVIDER_ENV, value=provider),
            _("use one of: {choices}").format(choices=", ".join(SUPPORTED_PROVIDERS)),
        )
    client_id = _required("RESGUARDO_OIDC_CLIENT_ID")
    client_secret = _client_secret()
    if provider == "azure":
        return [azure_provider(client_id, client_secret)]
    return [auth0_provider(client_id, client_secret)]


def _session_minutes() -> int:
    raw = os.environ.get("RESGUARDO_SESSION_MINUTES", "30").strip()
    if not raw.isdigit() or not 5 <= int(raw) <= 720:
        raise ConfigError(
            _("RESGUARDO_SESSION_MINUTES={value!r} is invalid").format(value=raw),
            _("give the UI session lifetime in whole minutes, from 5 to 720"),
        )
    return int(raw)


# -- settings read by Flask-AppBuilder ------------------------------------------------------

AUTH_TYPE = AUTH_OAUTH
OAUTH_PROVIDERS = oauth_providers()

# Entra puts app roles in "roles" and security groups (as object ids) in "groups".
AUTH_OAUTH_ROLE_KEYS = {"azure": os.environ.get("RESGUARDO_OIDC_AZURE_ROLE_CLAIM", "roles").strip() or "roles"}
AUTH_ROLES_MAPPING = roles_mapping()
AUTH_ROLES_SYNC_AT_LOGIN = True

# First login creates the user with the role "Public", which has no
# permissions; roles come only from AUTH_ROLES_MAPPING. Nobody can register
# into Admin.
AUTH_USER_REGISTRATION = True
AUTH_USER_REGISTRATION_ROLE = "Public"

AUTH_RATE_LIMITED = True
WTF_CSRF_ENABLED = True
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
PERMANENT_SESSION_LIFETIME = dt.timedelta(minutes=_session_minutes())
