"""Errors raised by the masking package; each names the value at fault and the fix."""

from __future__ import annotations

from resguardo.errors import ConfigError, ResguardoError, VerificationError


class PolicyError(ConfigError):
    """The masking policy is invalid or does not cover the database."""


class MaskingError(ResguardoError):
    """Masking could not be applied (unsupported column, constraint that cannot be kept, ...)."""

    exit_status = 9


class ProofFailed(VerificationError):
    """The proof found personal data, broken constraints or a broken check in the masked copy."""
