"""Numbers in the text a DR coordinator reads: a missing measurement is written as the word "unknown".

A value is *unknown* (None) when it could not be measured, for example the
exposure of a standby that never heard from an unreachable primary. Writing
"?" or "-" there reads like a typo, so the word comes from the catalog.

>>> format_number(1.25, 1)
'1.2'
>>> format_number(960)
'960'
"""

from __future__ import annotations

from resguardo.i18n import _


def format_number(value: float | int | None, digits: int | None = None) -> str:
    """Return ``value`` as text, rounded to ``digits`` decimals when given, or the translated word "unknown"."""
    if value is None:
        return _("unknown")
    if digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


def format_word(value: str | None) -> str:
    """Return ``value``, or the translated word "unknown" when it is None or empty."""
    return value if value else _("unknown")
