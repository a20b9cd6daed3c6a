"""Numbers in the text a DR coordinator reads: a missing measurement is written as the word "unknown".

A value is *unknown* (None) when it could not be measured, for example the
exposure of a standby that never heard from an unreachable primary. Writing
"?" or "-" there reads like a typo, so the word comes from the catalog.

>>> format_number(1.25, 1)
'1.2'
>>> format_number(960)
'960'
>>> format_duration(12.34)
'12.3 s'
>>> format_bytes(960)
'960 bytes'
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


def format_duration(value: float | None) -> str:
    """Return seconds as ``"12.3 s"``, or the translated word "unknown"."""
    return _("unknown") if value is None else f"{value:.1f} s"


def format_bytes(value: int | None) -> str:
    """Return a byte count as ``"960 bytes"``, or the translated word "unknown"."""
    return _("unknown") if value is None else _("{count} bytes").format(count=value)


def format_word(value: str | None) -> str:
    """Return ``value``, or the translated word "unknown" when it is None or empty."""
    return value if value else _("unknown")
