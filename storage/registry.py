"""Build region drivers from the ``regions`` section of ``resguardo.yaml``.

``credentials_provider`` lets the Airflow layer supply credentials for regions
whose config sets ``credentials.connection_id``. It is called with that
connection id and returns ``(access_key_id, secret_access_key, session_token)``
for an S3 region or ``google.auth.credentials.Credentials`` for a GCS region.
Regions without a connection id, and every region when no provider is given
(the ``resguardo`` command outside Airflow), use their other credential
references.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

from resguardo.config import FilesystemRegion, GcsRegion, ResguardoConfig, S3Region
from resguardo.errors import ConfigError, ResguardoError
from resguardo.i18n import _
from storage.base import Region, RegionError

CredentialsProvider = Callable[[str], Any]

# Set once per process by the Airflow task wrapper (dags/_common.py), so every
# core function that opens regions gets Airflow Connections without each call
# site passing a provider through.
_default_provider: CredentialsProvider | None = None


def set_default_credentials_provider(provider: CredentialsProvider | None) -> None:
    """Use ``provider`` for every region opened without an explicit one."""
    global _default_provider
    _default_provider = provider


def open_region(
    name: str, config: ResguardoConfig, credentials_provider: CredentialsProvider | None = None
) -> Region:
    """Build the driver of region ``name``.

    Raises ConfigError for a name missing from the config and RegionError,
    naming the region, when the driver cannot be built.
    """
    try:
        region_config = config.regions[name]
    except KeyError:
        raise ConfigError(
            _("region {name!r} is not configured").format(name=name),
            _("configured regions: {names}. Check the name or add it under 'regions' in the config.").format(
                names=", ".join(sorted(config.regions)) or "-"
            ),
        ) from None

    credentials_provider = credentials_provider or _default_provider
    bound_provider = None
    connection_id = getattr(getattr(region_config, "credentials", None), "connection_id", None)
    if credentials_provider is not None and connection_id:
        bound_provider = functools.partial(credentials_provider, connection_id)

    try:
        if isinstance(region_config, FilesystemRegion):
            from storage.filesystem import FilesystemDriver

            root = config.resolve(region_config.path)
            assert root is not None
            return FilesystemDriver(name, root, location=region_config.location)
        if isinstance(region_config, S3Region):
            from storage.s3 import S3Driver

            return S3Driver(name, region_config, credentials_provider=bound_provider)
        if isinstance(region_config, GcsRegion):
            from storage.gcs import GcsDriver

            return GcsDriver(name, region_config, credentials_provider=bound_provider)
    except ResguardoError:
        raise
    except Exception as error:  # noqa: BLE001 - any construction failure is reported with the region name
        raise RegionError(
            _("region {name!r} ({kind}) could not be opened: {reason}").format(
                name=name, kind=region_config.kind, reason=f"{type(error).__name__}: {error}"
            ),
            _("check regions.{name} in the config and its credentials").format(name=name),
            region=name,
        ) from error
    raise ConfigError(
        _("region {name!r} has unsupported kind {kind!r}").format(name=name, kind=region_config.kind),
        _("use kind s3, gcs or filesystem"),
    )


def open_regions(
    names: Iterable[str], config: ResguardoConfig, credentials_provider: CredentialsProvider | None = None
) -> list[Region]:
    """Build the drivers of ``names``, in order; the first failure is raised."""
    return [open_region(name, config, credentials_provider) for name in names]
