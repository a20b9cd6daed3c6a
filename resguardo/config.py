"""The ``resguardo.yaml`` configuration, validated with pydantic v2.

Terms:

- *region*: a named storage location (``kind`` ``s3``, ``gcs`` or
  ``filesystem``). Credentials are given by reference only: an Airflow
  Connection id, an environment variable name, a profile or a file path.
  A literal secret in the file is rejected.
- *required regions*: the regions a database's backup must reach. ``quorum``
  (default: all of them) is how many must hold a verified copy for the backup
  to count.
- *recipient*: an X25519 public key that can decrypt backups. Backup hosts need
  only these; the matching private key (the *identity*) is needed to restore.
- *signing key*: the Ed25519 key that signs manifests and evidence records.

The path comes from ``--config``, else ``RESGUARDO_CONFIG``, else
``./resguardo.yaml``. Relative paths inside the file are relative to the file.
An invalid file raises :class:`ConfigError` listing every problem with its key
path, the rejected value and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from resguardo.errors import ConfigError
from resguardo.i18n import _, set_language

CONFIG_ENV = "RESGUARDO_CONFIG"
DEFAULT_CONFIG_NAME = "resguardo.yaml"

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
_SECRET_KEYS = {"password", "secret", "secret_access_key", "access_key_id", "token", "private_key_pem"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Credentials(_Model):
    """Credential references for a driver; never the secret itself."""

    connection_id: str | None = Field(None, description="Airflow Connection id, used inside Airflow")
    profile: str | None = Field(None, description="AWS shared-config profile")
    access_key_id_env: str | None = Field(None, description="env variable with the S3 access key id")
    secret_access_key_env: str | None = Field(None, description="env variable with the S3 secret key")
    service_account_file: Path | None = Field(None, description="GCS service-account JSON file")
    anonymous: bool = Field(False, description="no credentials; for local emulators only")


class FilesystemRegion(_Model):
    kind: Literal["filesystem"]
    path: Path
    location: str = Field("local", description="free-text site or zone, shown in evidence")


class S3Region(_Model):
    kind: Literal["s3"]
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = Field(description="AWS region of the bucket, e.g. sa-east-1")
    prefix: str = ""
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint; empty for AWS")
    storage_class: str | None = None
    credentials: Credentials = Credentials()
    part_size_mib: int = Field(16, ge=5, le=512)
    max_concurrency: int = Field(4, ge=1, le=32)

    @property
    def location(self) -> str:
        return self.region


class GcsRegion(_Model):
    kind: Literal["gcs"]
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
    location: str = Field("unknown", description="GCS bucket location, e.g. us-east1")
    project: str | None = None
    prefix: str = ""
    endpoint_url: str | None = Field(None, description="emulator endpoint; empty for Google")
    credentials: Credentials = Credentials()
    chunk_size_mib: int = Field(16, ge=1, le=512)


RegionConfig = Annotated[Union[FilesystemRegion, S3Region, GcsRegion], Field(discriminator="kind")]


class EncryptionConfig(_Model):
    recipients: list[Path] = Field(min_length=1, description="X25519 public key files (PEM)")
    identity: Path | None = Field(None, description="X25519 private key file; only restores need it")
    chunk_size_kib: int = Field(1024, ge=16, le=16384)


class SigningConfig(_Model):
    private_key: Path | None = Field(None, description="Ed25519 private key file (PEM)")
    public_key: Path = Field(description="Ed25519 public key file (PEM)")


class EvidenceConfig(_Model):
    region: str = Field(description="region that stores evidence records")
    prefix: str = "evidence"


class RestoreTestConfig(_Model):
    schedule: str | None = Field(
        "asset", description="cron expression, 'asset' (after each backup) or null (manual only)"
    )
    expectations_dir: Path | None = Field(None, description="hand-written GX suites for this database")
    row_count_tolerance: int = Field(0, ge=0)


class PitrConfig(_Model):
    """Physical base backups and continuous WAL archiving for point-in-time recovery."""

    enabled: bool = False
    base_backup_schedule: str | None = Field("0 1 * * *", description="cron for base backups (America/Guayaquil)")
    archive_check_schedule: str | None = Field("*/5 * * * *", description="cron for the archive health check")
    rpo_seconds: int = Field(300, ge=1, description="maximum accepted archive lag (current RPO exposure)")
    wal_regions: list[str] | None = Field(None, description="regions for WAL; default: the database's regions")
    spool_dir: Path | None = Field(
        None, description="markers and locks of asynchronous archiving (no WAL data); default state_dir/spool/<db>")
    async_push: bool = Field(
        False, description="wal-ship uploads WAL ahead of archive_command; wal-push acknowledges only files "
        "already in every region")
    push_parallel: int = Field(2, ge=1, le=16, description="parallel uploads of the asynchronous shipper")
    fetch_prefetch: int = Field(4, ge=0, le=64, description="WAL segments wal-fetch downloads ahead")
    pgdata: Path | None = Field(None, description="data directory of the server, for pg_wal growth checks")


class StandbyConfig(_Model):
    dsn: str = Field(description="libpq DSN of the streaming standby in the DR site, without a password")
    data_dir: Path | None = Field(None, description="standby data directory, when Resguardo runs on its host")
    site: str = "dr"


class RouterConfig(_Model):
    kind: Literal["pgbouncer"] = "pgbouncer"
    config_file: Path = Field(description="pgbouncer.ini whose [databases] entry is rewritten on switch-over")
    admin_dsn: str = Field(description="DSN of the PgBouncer admin console (dbname=pgbouncer)")
    database_alias: str = Field(description="name clients use in PgBouncer's [databases] section")


class DrConfig(_Model):
    """Topology and targets for DR rehearsals and failover."""

    primary_data_dir: Path | None = Field(None, description="primary data directory, when Resguardo runs on its host")
    standby: StandbyConfig | None = None
    router: RouterConfig | None = None
    rto_target_seconds: int = Field(3600, ge=1)
    rpo_target_seconds: int = Field(300, ge=0)
    rehearsal_schedule: str | None = Field("0 6 1 1,4,7,10 *", description="quarterly cron, America/Guayaquil")
    fence_command: list[str] | None = Field(None, description="extra command that isolates the old primary")


class DatabaseConfig(_Model):
    dsn: str = Field(description="libpq connection string or URI, without a password")
    password_env: str | None = Field(None, description="env variable holding the password")
    connection_id: str | None = Field(None, description="Airflow Connection id, used inside Airflow")
    regions: list[str] = Field(min_length=1)
    quorum: int | None = Field(None, ge=1, description="regions that must succeed; default all")
    schedule: str | None = Field("0 2 * * *", description="cron for logical backups (America/Guayaquil)")
    # Only pg_dump's custom format streams to a pipe. The directory format, and
    # with it pg_dump -j, writes files to local disk, so the whole dump would sit
    # there unencrypted. A database too large for one pg_dump process should
    # rely on physical base backups instead.
    dump_format: Literal["custom"] = "custom"
    compression_level: int = Field(3, ge=1, le=19)
    restore_test: RestoreTestConfig = RestoreTestConfig()
    pitr: PitrConfig = PitrConfig()
    dr: DrConfig = DrConfig()

    @field_validator("dsn")
    @classmethod
    def _no_password_in_dsn(cls, value: str) -> str:
        if re.search(r"(?i)\bpassword\s*=", value) or re.search(r"://[^/@:]+:[^/@]+@", value):
            raise ValueError(_("the DSN contains a password; put it in the variable named by password_env"))
        return value

    @property
    def required_quorum(self) -> int:
        return self.quorum or len(self.regions)


class ResguardoConfig(_Model):
    language: Literal["es", "en"] = "es"
    timezone: str = "America/Guayaquil"
    state_dir: Path = Path("/var/lib/resguardo")
    postgres_bindir: Path | None = Field(None, description="directory of pg_dump etc.; default: found on PATH")
    encryption: EncryptionConfig
    signing: SigningConfig
    evidence: EvidenceConfig
    regions: dict[str, RegionConfig] = Field(min_length=1)
    databases: dict[str, DatabaseConfig] = Field(default_factory=dict)

    # Kept outside the model fields: the directory relative paths resolve against,
    # and the file itself (restore_command must name it).
    base_dir: Path = Field(Path("."), exclude=True)
    config_file: Path | None = Field(None, exclude=True)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(_("unknown time zone; use an IANA name such as America/Guayaquil")) from None
        return value

    def resolve(self, path: Path | None) -> Path | None:
        """Return ``path`` made absolute against the config file's directory."""
        if path is None:
            return None
        path = Path(os.path.expandvars(str(path))).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def database(self, name: str) -> DatabaseConfig:
        """Return the named database or raise ConfigError listing the known ones."""
        try:
            return self.databases[name]
        except KeyError:
            raise ConfigError(
                _("database {name!r} is not configured").format(name=name),
                _("configured databases: {names}. Check the name or add it under 'databases' in the config.").format(
                    names=", ".join(sorted(self.databases)) or "-"
                ),
            ) from None


def _cross_reference_problems(data: dict[str, Any]) -> list[str]:
    """Check names and references between sections on the raw document.

    This runs even when fields are invalid, so one run lists every problem.
    """
    problems: list[str] = []
    regions = data.get("regions") if isinstance(data.get("regions"), dict) else {}
    databases = data.get("databases") if isinstance(data.get("databases"), dict) else {}
    for section, names in (("regions", regions), ("databases", databases)):
        for name in names:
            if not re.match(NAME_PATTERN, str(name)):
                problems.append(
                    _("{section}.{name}: invalid name; use lowercase letters, digits, '-' and '_', starting with a letter")
                    .format(section=section, name=name)
                )
    evidence = data.get("evidence") if isinstance(data.get("evidence"), dict) else {}
    evidence_region = evidence.get("region")
    if evidence_region is not None and evidence_region not in regions:
        problems.append(_("evidence.region: region {name!r} is not defined under regions").format(name=evidence_region))
    paths: dict[str, str] = {}
    for name, region in regions.items():
        if isinstance(region, dict) and region.get("kind") == "filesystem" and region.get("path"):
            normalised = os.path.normpath(str(region["path"]))
            if normalised in paths:
                problems.append(
                    _("regions.{name}.path: same directory as region {other}; each region needs its own location")
                    .format(name=name, other=paths[normalised])
                )
            paths[normalised] = name
    for db_name, db in databases.items():
        if not isinstance(db, dict):
            continue
        listed = db.get("regions") if isinstance(db.get("regions"), list) else []
        for region in listed:
            if region not in regions:
                problems.append(
                    _("databases.{db}.regions: region {name!r} is not defined under regions").format(
                        db=db_name, name=region)
                )
            if region == evidence_region:
                problems.append(
                    _("databases.{db}.regions: {name!r} is the evidence region; keep evidence apart from backups")
                    .format(db=db_name, name=region)
                )
        if len(set(map(str, listed))) != len(listed):
            problems.append(_("databases.{db}.regions: a region is listed twice").format(db=db_name))
        quorum = db.get("quorum")
        if isinstance(quorum, int) and listed and quorum > len(listed):
            problems.append(
                _("databases.{db}.quorum: {quorum} is more than the {count} regions listed").format(
                    db=db_name, quorum=quorum, count=len(listed))
            )
        pitr = db.get("pitr") if isinstance(db.get("pitr"), dict) else {}
        for region in pitr.get("wal_regions") or []:
            if region not in regions:
                problems.append(
                    _("databases.{db}.pitr.wal_regions: region {name!r} is not defined under regions").format(
                        db=db_name, name=region)
                )
        for key_path, value in _schedules(db):
            if value not in (None, "asset") and not _valid_cron(str(value)):
                problems.append(
                    _("databases.{db}.{key}: invalid cron expression {value!r}; use five fields, e.g. '0 2 * * *'")
                    .format(db=db_name, key=key_path, value=value)
                )
    return problems


def _schedules(db: dict[str, Any]):
    yield "schedule", db.get("schedule")
    for section, key in (("restore_test", "schedule"), ("pitr", "base_backup_schedule"),
                         ("pitr", "archive_check_schedule"), ("dr", "rehearsal_schedule")):
        part = db.get(section)
        if isinstance(part, dict) and key in part:
            yield f"{section}.{key}", part[key]


def _valid_cron(expression: str) -> bool:
    from croniter import croniter

    return len(expression.split()) == 5 and croniter.is_valid(expression)


def _find_inline_secrets(node: Any, path: str, problems: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if str(key).lower() in _SECRET_KEYS and value not in (None, ""):
                problems.append(
                    _("{path}: secrets are not accepted inline; reference them (connection_id, *_env, a file)").format(
                        path=child
                    )
                )
            _find_inline_secrets(value, child, problems)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _find_inline_secrets(value, f"{path}[{index}]", problems)


def _format_pydantic_errors(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-"))
        # Union members add their tag to the location (e.g. regions.a.s3.bucket).
        # The tag stays because it shows which kind was being checked.
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if any(str(part) in ("dsn", "admin_dsn") for part in item["loc"]):
            shown = "'***'"  # a rejected DSN may carry a password
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message = _pydantic_reason(item)
        if item["type"] == "missing":
            lines.append(_("{location}: required key is missing").format(location=location))
        elif item["type"] == "extra_forbidden":
            lines.append(_("{location}: unknown key; check its spelling").format(location=location))
        else:
            lines.append(
                _("{location}: invalid value {value}: {reason}").format(
                    location=location or "(root)", value=shown, reason=message
                )
            )
    return lines


def _pydantic_reason(item: dict[str, Any]) -> str:
    """Return pydantic's reason for one error in the active language."""
    context = item.get("ctx") or {}
    kind = item["type"]
    reasons = {
        "int_parsing": _("expected a whole number"),
        "int_type": _("expected a whole number"),
        "bool_parsing": _("expected true or false"),
        "bool_type": _("expected true or false"),
        "string_type": _("expected text"),
        "list_type": _("expected a list"),
        "dict_type": _("expected a mapping of keys to values"),
        "model_type": _("expected a mapping of keys to values"),
        "string_pattern_mismatch": _("does not match the pattern {pattern}"),
        "too_short": _("needs at least {min_length} items"),
        "too_long": _("allows at most {max_length} items"),
        "greater_than_equal": _("must be at least {ge}"),
        "less_than_equal": _("must be at most {le}"),
        "greater_than": _("must be more than {gt}"),
        "literal_error": _("must be one of {expected}"),
        "union_tag_invalid": _("unknown kind {tag}; use one of {expected_tags}"),
        "union_tag_not_found": _("the key 'kind' is missing; use one of s3, gcs, filesystem"),
        "path_type": _("expected a file path"),
    }
    if kind == "value_error":
        error = context.get("error")
        return str(error) if error is not None else item["msg"]
    template = reasons.get(kind)
    if template is None:
        return item["msg"]
    try:
        return template.format(**{k: v for k, v in context.items()})
    except (KeyError, IndexError):
        return item["msg"]


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the config path chosen by argument, ``RESGUARDO_CONFIG`` or default."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    return Path(DEFAULT_CONFIG_NAME)


def parse_config(data: Any, base_dir: Path, source: str = "<memory>", config_file: Path | None = None) -> ResguardoConfig:
    """Validate an already-parsed YAML document."""
    if not isinstance(data, dict):
        raise ConfigError(
            _("configuration {source} is empty or not a mapping").format(source=source),
            _("start from resguardo.example.yaml"),
        )
    problems: list[str] = []
    _find_inline_secrets(data, "", problems)
    problems.extend(_cross_reference_problems(data))
    try:
        config = ResguardoConfig.model_validate({**data, "base_dir": base_dir, "config_file": config_file})
    except ValidationError as error:
        problems.extend(p for p in _format_pydantic_errors(error) if p not in problems)
        config = None
    if problems:
        raise ConfigError(
            _("configuration {source} is invalid; problems found: {count}").format(source=source, count=len(problems))
            + "\n  - "
            + "\n  - ".join(problems),
            _("fix each key listed above; resguardo.example.yaml documents every key"),
        )
    assert config is not None
    set_language(config.language)
    return config


def load_config(explicit: str | os.PathLike[str] | None = None) -> ResguardoConfig:
    """Read and validate the configuration file."""
    path = config_path(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            _("configuration file {path} is not UTF-8 text: {error}").format(path=path, error=error.reason),
            _("save the file as UTF-8"),
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            _("configuration path {path} is a directory").format(path=path),
            _("pass the path of the resguardo.yaml file itself"),
        ) from None
    except FileNotFoundError:
        raise ConfigError(
            _("configuration file {path} not found").format(path=path),
            _("pass --config PATH or set {env}").format(env=CONFIG_ENV),
        ) from None
    except OSError as error:
        raise ConfigError(
            _("configuration file {path} could not be read: {error}").format(path=path, error=error.strerror),
            _("check the file's permissions"),
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(
            _("configuration file {path} is not valid YAML: {error}").format(path=path, error=error),
            _("fix the YAML syntax at the line shown"),
        ) from None
    return parse_config(data, path.resolve().parent, str(path), path.resolve())
