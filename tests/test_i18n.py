"""Every user-facing msgid in the code has a Spanish translation with the same placeholders."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_file

from resguardo import i18n

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ["resguardo", "encryption", "storage", "backup", "restore", "expectations", "evidence",
               "masking", "drills", "dags", "plugins", "demo"]


def _msgids() -> dict[str, str]:
    found: dict[str, str] = {}
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            for lineno, message, _comments, _context in extract_from_file(
                "python", str(path), keywords={"_": None, "doc": None}
            ):
                if isinstance(message, tuple):
                    message = message[0]
                if message:
                    found.setdefault(message, f"{path.relative_to(ROOT)}:{lineno}")
    return found


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_msgid_translated_to_spanish():
    catalog = i18n.load_catalog("es")
    missing = [f"{where}: {msgid!r}" for msgid, where in _msgids().items() if msgid not in catalog]
    assert missing == [], "untranslated msgids:\n" + "\n".join(missing)


def test_placeholders_match():
    catalog = i18n.load_catalog("es")
    wrong = [msgid for msgid in _msgids() if msgid in catalog and _placeholders(msgid) != _placeholders(catalog[msgid])]
    assert wrong == []


def test_language_setting(monkeypatch):
    monkeypatch.setenv("RESGUARDO_LANG", "en")
    assert i18n._("HINT: {hint}") == "HINT: {hint}"
    monkeypatch.setenv("RESGUARDO_LANG", "es")
    assert i18n._("HINT: {hint}") == "SUGERENCIA: {hint}"
    monkeypatch.delenv("RESGUARDO_LANG")
    i18n.set_language(None)
    assert i18n.current_language() == "es"


def test_unsupported_language_rejected():
    with pytest.raises(ValueError):
        i18n.set_language("fr")
