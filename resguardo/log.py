"""Structured logging: one JSON object per line, English keys, no secrets.

Every record has ``event`` (a dotted identifier such as ``backup.start``) and
any ids passed in ``extra``. Values under keys named like secrets are replaced
by ``"***"`` before output, as a second line of defence: callers must still
never pass a secret or a personal datum.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_SECRET_WORDS = ("password", "secret", "private", "token", "dek", "passphrase", "credential")
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as a single JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            if any(word in key.lower() for word in _SECRET_WORDS):
                value = "***"
            payload[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            payload["error_type"] = record.exc_info[0].__name__
            payload["error"] = str(record.exc_info[1])
        return json.dumps(payload, default=str, ensure_ascii=False)


def get_logger(name: str) -> logging.Logger:
    """Return a logger under the ``resguardo`` hierarchy."""
    return logging.getLogger(name if name.startswith("resguardo") else f"resguardo.{name}")


def configure(level: str | None = None) -> None:
    """Send ``resguardo`` logs to stderr as JSON lines (idempotent)."""
    root = logging.getLogger("resguardo")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("RESGUARDO_LOG_LEVEL", "INFO").upper())
    root.propagate = False
