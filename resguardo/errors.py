"""The error type shown to people: what failed, on which value, and what to do next.

A :class:`ResguardoError` carries a translated message and an optional hint.
Rendered for a terminal or a task log it reads::

    ERROR: la región "gcs-us" no contiene el objeto "clientes/logical/.../dump.enc"
    SUGERENCIA: ...

``HINT``/``SUGERENCIA`` follows the active language. Each subclass sets the
process exit status that the CLI returns, so scripts can tell "nothing to do"
from "corrupted data" without parsing text.
"""

from __future__ import annotations

from resguardo.i18n import _


class ResguardoError(Exception):
    """An error with a message for people and a hint with the likely cause and fix."""

    exit_status = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        """Return the message and hint as the CLI prints them."""
        lines = [_("ERROR: {message}").format(message=self.message)]
        if self.hint:
            lines.append(_("HINT: {hint}").format(hint=self.hint))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class ConfigError(ResguardoError):
    """Invalid or missing configuration."""

    exit_status = 2


class KeyError_(ResguardoError):
    """A key is missing, unreadable or does not match the data."""

    exit_status = 3


class IntegrityError(ResguardoError):
    """Data failed authentication or a hash check: corrupted, truncated or tampered."""

    exit_status = 4


class StorageError(ResguardoError):
    """A storage region failed (unreachable, denied, or returned an error)."""

    exit_status = 5


class NotFoundError(ResguardoError):
    """A backup, object or record does not exist."""

    exit_status = 6


class ExternalToolError(ResguardoError):
    """A PostgreSQL tool (pg_dump, pg_restore, initdb, ...) failed."""

    exit_status = 7


class VerificationError(ResguardoError):
    """A restore test or a data check failed."""

    exit_status = 8
