"""Keyed replacement of given names and surnames from bundled lists.

The lists in ``masking/data`` (``given_names.txt``, ``surnames.txt``,
``streets.txt``, ``cities.txt``) were written for this project: common
Ecuadorian and Spanish names, one per line. A name maps to a list entry chosen
by HMAC-SHA256 of its normalised form (upper case, accents removed), so
"PÉREZ", "Pérez" and "perez" map to the same surname, written in the case
style of the input. A name never maps to itself: when the chosen entry equals
the input, the next entry is taken.

>>> picker = NamePicker(b"k" * 32)
>>> picker.pick("surname", "PEREZ").isupper()
True
>>> picker.pick("surname", "Pérez") == picker.pick("surname", "perez").capitalize()
True
"""

from __future__ import annotations

import functools
import hmac
import unicodedata
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
PARTICLES = frozenset({"de", "del", "la", "las", "los", "y", "da", "van", "von"})


@functools.lru_cache(maxsize=None)
def load_list(name: str) -> tuple[str, ...]:
    """Return the entries of ``masking/data/<name>.txt`` (blank lines and ``#`` comments skipped)."""
    lines = (DATA_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def normalise(text: str) -> str:
    """Return ``text`` upper-cased with accents removed (Ñ stays Ñ).

    >>> normalise("José Peña")
    'JOSE PEÑA'
    """
    decomposed = unicodedata.normalize("NFD", text.upper().replace("Ñ", "\0"))
    stripped = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return unicodedata.normalize("NFC", stripped).replace("\0", "Ñ")


def strip_accents(text: str) -> str:
    """Remove accents, keeping ñ/Ñ."""
    decomposed = unicodedata.normalize("NFD", text.replace("ñ", "\0").replace("Ñ", "\1"))
    stripped = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return unicodedata.normalize("NFC", stripped).replace("\0", "ñ").replace("\1", "Ñ")


def apply_case(template: str, word: str) -> str:
    """Write ``word`` in the case style of ``template`` (UPPER, lower or as listed)."""
    if not template.isascii() or any(c in "ñÑ" for c in template):
        styled = word
    else:
        # An input without accents comes from a system that strips them; so does the output.
        styled = strip_accents(word)
    if template.isupper():
        return styled.upper()
    if template.islower():
        return styled.lower()
    return styled


class NamePicker:
    """Chooses list entries under one key."""

    def __init__(self, key: bytes):
        self._key = key

    def index(self, list_name: str, text: str, size: int) -> int:
        digest = hmac.digest(self._key, f"{list_name}:{normalise(text)}".encode("utf-8"), "sha256")
        return int.from_bytes(digest[:8], "big") % size

    def pick(self, list_name: str, word: str) -> str:
        """Return the replacement of one word from list ``given_names`` or ``surnames`` (or a short alias)."""
        entries = load_list({"given": "given_names", "surname": "surnames"}.get(list_name, list_name))
        position = self.index(list_name, word, len(entries))
        choice = entries[position]
        if normalise(choice) == normalise(word):
            choice = entries[(position + 1) % len(entries)]
        return apply_case(word, choice)

    def full_name(self, text: str, order: str) -> str:
        """Replace every word of a full name; particles such as "de" or "del" are kept."""
        words = text.split()
        meaningful = [i for i, w in enumerate(words) if w.lower() not in PARTICLES]
        count = len(meaningful)
        surnames = 1 if count == 2 else min(2, count) if count > 2 else 0
        given = count - surnames
        roles = ["given"] * given + ["surname"] * surnames
        if order == "surname_first":
            roles = ["surname"] * surnames + ["given"] * given
        out = list(words)
        for role, position in zip(roles, meaningful):
            out[position] = self.pick(role, words[position])
        return " ".join(out)
