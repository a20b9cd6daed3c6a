"""Message catalogs: Spanish by default, English by setting.

Terms:

- *msgid*: the English source text of a message, as written in the code and
  wrapped in ``_()``. English output is the msgid itself.
- *catalog*: a gettext PO file that maps msgids to translations. Each package
  keeps its own catalog, ``resguardo/locale/<lang>/LC_MESSAGES/<domain>.po``,
  so two packages never edit one file. Lookups search every catalog of the
  active language.
- *language*: ``es`` (default) or ``en``. The environment variable
  ``RESGUARDO_LANG`` sets it; the config key ``language`` sets it through
  :func:`set_language`; the environment variable wins.

A msgid missing from the Spanish catalog falls back to English and is counted
by ``tests/test_i18n.py``, which fails on any untranslated msgid.

>>> set_language("en")
>>> _("Backup {backup_id} completed").format(backup_id="x")
'Backup x completed'
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
SUPPORTED_LANGUAGES = ("es", "en")
DEFAULT_LANGUAGE = "es"

_lock = threading.Lock()
_catalogs: dict[str, dict[str, str]] = {}
_configured_language: str | None = None


def set_language(language: str | None) -> None:
    """Set the language chosen by configuration; ``RESGUARDO_LANG`` still wins."""
    global _configured_language
    if language is not None and language not in SUPPORTED_LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; use one of {SUPPORTED_LANGUAGES}")
    _configured_language = language


def current_language() -> str:
    """Return the active language code."""
    from_env = os.environ.get("RESGUARDO_LANG", "").strip().lower()[:2]
    if from_env in SUPPORTED_LANGUAGES:
        return from_env
    return _configured_language or DEFAULT_LANGUAGE


def _parse_po(path: Path) -> dict[str, str]:
    # Babel reads the PO grammar in full (multi-line strings, escapes, fuzzy
    # flags); fuzzy entries are skipped, as msgfmt does by default.
    from babel.messages.pofile import read_po

    with path.open("rb") as handle:
        catalog = read_po(handle)
    messages: dict[str, str] = {}
    for message in catalog:
        if not message.id or message.fuzzy or not isinstance(message.id, str):
            continue
        if message.string:
            messages[message.id] = message.string
    return messages


def load_catalog(language: str) -> dict[str, str]:
    """Load and cache every PO catalog of ``language`` merged into one mapping."""
    with _lock:
        cached = _catalogs.get(language)
        if cached is not None:
            return cached
        merged: dict[str, str] = {}
        directory = LOCALE_DIR / language / "LC_MESSAGES"
        for path in sorted(directory.glob("*.po")):
            merged.update(_parse_po(path))
        _catalogs[language] = merged
        return merged


def gettext(message: str) -> str:
    """Translate ``message`` into the active language."""
    language = current_language()
    if language == "en":
        return message
    return load_catalog(language).get(message, message)


_ = gettext


def translate_to(language: str, message: str) -> str:
    """Translate ``message`` into ``language`` regardless of the active setting."""
    if language == "en":
        return message
    return load_catalog(language).get(message, message)
