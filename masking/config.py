"""The masking configuration, ``masking.yaml``, kept apart from ``resguardo.yaml``.

Terms:

- *masking key reference*: ``key.file`` (a path) or ``key.env`` (an
  environment variable name), never the key itself.
- *target*: a non-production destination of masked copies, either a
  PostgreSQL database (``dsn`` without a password, plus ``password_env``) or
  a set of storage regions that receive an encrypted masked dump
  (``encrypted_dump_regions``). ``schedule`` is a cron expression in the
  configured time zone, or null for manual runs only.

The file is found by ``--masking-config``, else ``RESGUARDO_MASKING_CONFIG``,
else ``masking.yaml`` beside the main config. Relative paths inside it are
relative to the file. Example::

    key: {file: /etc/resguardo/masking.key}
    databases:
      core:
        policy: policies/core.yaml
        suppression_list: suppression/core.yaml
        apply_suppression_on_restore: true
        workers: 2
        targets:
          qa: {dsn: "host=qa-db.internal dbname=core user=resguardo", password_env: QA_DB_PASSWORD, schedule: "0 4 * * 1"}
          vault: {encrypted_dump_regions: [fs-local], schedule: null}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from masking.errors import PolicyError
from masking.keys import MaskingKey, load_key
from masking.policy import format_validation_errors
from resguardo.errors import ConfigError
from resguardo.i18n import _

MASKING_CONFIG_ENV = "RESGUARDO_MASKING_CONFIG"
DEFAULT_NAME = "masking.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyReference(_Model):
    file: Path | None = Field(None, description="file holding the base64 or hex masking key (mode 0600)")
    env: str | None = Field(None, description="environment variable holding the masking key")

    @model_validator(mode="after")
    def _exactly_one(self) -> "KeyReference":
        if (self.file is None) == (self.env is None):
            raise ValueError("set exactly one of file or env")
        return self


class TargetConfig(_Model):
    dsn: str | None = Field(None, description="libpq DSN of the non-production database, without a password")
    password_env: str | None = Field(None, description="environment variable with the target's password")
    encrypted_dump_regions: list[str] = Field(default_factory=list, description="regions for an encrypted masked dump")
    schedule: str | None = Field(None, description="cron expression (America/Guayaquil) or null for manual runs")

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value and (re.search(r"(?i)\bpassword\s*=", value) or re.search(r"://[^/@:]+:[^/@]+@", value)):
            raise ValueError("the DSN contains a password; put it in the variable named by password_env")
        return value

    @model_validator(mode="after")
    def _one_destination(self) -> "TargetConfig":
        if (self.dsn is None) == (not self.encrypted_dump_regions):
            raise ValueError("set either dsn or encrypted_dump_regions")
        return self


class DatabaseMaskingConfig(_Model):
    policy: Path
    suppression_list: Path | None = None
    apply_suppression_on_restore: bool = Field(
        False, description="restores call apply_suppression too, so deleted subjects never come back"
    )
    proof_runner: Literal["gx", "sql"] = "gx"
    workers: int = Field(
        1, ge=1, le=64,
        description="processes that compute masked values; 1 computes them in the masking process itself",
    )
    targets: dict[str, TargetConfig] = Field(default_factory=dict)

    @field_validator("targets")
    @classmethod
    def _target_names(cls, value: dict[str, TargetConfig]) -> dict[str, TargetConfig]:
        for name in value:
            if not re.match(r"^[a-z][a-z0-9_-]{0,62}$", name):
                raise ValueError(f"invalid target name {name!r}: use lowercase letters, digits, '-' and '_'")
        return value


class MaskingConfig(_Model):
    key: KeyReference
    databases: dict[str, DatabaseMaskingConfig] = Field(default_factory=dict)
    base_dir: Path = Field(Path("."), exclude=True)

    def resolve(self, path: Path | None) -> Path | None:
        """Return ``path`` made absolute against the config file's directory."""
        if path is None:
            return None
        path = Path(os.path.expandvars(str(path))).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def load_key(self) -> MaskingKey:
        """Load the referenced masking key."""
        return load_key(file=self.resolve(self.key.file), env=self.key.env)

    def database(self, name: str) -> DatabaseMaskingConfig:
        """Return the masking settings of database ``name`` or raise ConfigError listing the known ones."""
        try:
            return self.databases[name]
        except KeyError:
            raise ConfigError(
                _("database {name!r} has no masking configuration").format(name=name),
                _("configured for masking: {names}. Add it under 'databases' in masking.yaml.").format(
                    names=", ".join(sorted(self.databases)) or "-"
                ),
            ) from None

    def target(self, database: str, name: str) -> TargetConfig:
        """Return one target of a database or raise ConfigError listing the known ones."""
        targets = self.database(database).targets
        try:
            return targets[name]
        except KeyError:
            raise ConfigError(
                _("masking target {name!r} of database {database} is not configured").format(name=name, database=database),
                _("configured targets: {names}").format(names=", ".join(sorted(targets)) or "-"),
            ) from None


def masking_config_path(explicit: str | os.PathLike[str] | None, main_config_dir: Path | None) -> Path:
    """Return the masking config path chosen by argument, environment variable or default."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(MASKING_CONFIG_ENV)
    if from_env:
        return Path(from_env)
    return (main_config_dir or Path(".")) / DEFAULT_NAME


def load_masking_config(path: Path) -> MaskingConfig:
    """Read and validate ``masking.yaml``; ConfigError lists every problem."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            _("masking configuration {path} not found").format(path=path),
            _("pass --masking-config PATH or set {env}").format(env=MASKING_CONFIG_ENV),
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(
            _("masking configuration {path} is not valid YAML: {error}").format(path=path, error=error),
            _("fix the YAML syntax at the line shown"),
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            _("masking configuration {path} is empty or not a mapping").format(path=path),
            _("see docs/masking.md for an example"),
        )
    try:
        return MaskingConfig.model_validate({**data, "base_dir": Path(path).resolve().parent})
    except ValidationError as error:
        problems = format_validation_errors(error)
    raise PolicyError(
        _("masking configuration {path} is invalid ({count} problems):").format(path=path, count=len(problems))
        + "\n  - "
        + "\n  - ".join(problems),
        _("fix each key listed above; docs/masking.md documents every key"),
    )
