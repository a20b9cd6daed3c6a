"""Ecuadorian identifiers: validation, check digits and keyed masking.

Terms:

- *cédula*: the 10-digit national identity number. Digits 1-2 are the
  province (01-24, or 30 for Ecuadorians registered abroad), and digit 3 is
  below 6 for citizens. Digit 10 is a check digit: digits 1-9 are multiplied
  by 2,1,2,1,..., 9 is subtracted from products above 9, and the check digit
  is ``(10 - sum mod 10) mod 10``.
- *RUC*: the 13-digit taxpayer number. Natural persons: a cédula plus a
  3-digit establishment (``001``). Public entities: third digit 6, mod-11
  check digit over digits 1-8 (weights 3,2,7,6,5,4,3,2) in position 9, then a
  4-digit establishment. Private companies: third digit 9, mod-11 check digit
  over digits 1-9 (weights 4,3,2,7,6,5,4,3,2) in position 10, then a 3-digit
  establishment.
- *layout*: the characters of a value that are not digits (or, for
  :class:`FormatPreservingMasker`, not letters or digits). Masking keeps them
  in place, so ``171430710-3`` masks to ``NNNNNNNNN-N``.
- *class*: inputs are split into disjoint classes (valid cédula, valid public
  RUC, anything else of the same length, ...) and each class is mapped onto
  itself by a keyed derangement (see :mod:`masking.fpe`). Every masker here is
  therefore a bijection of strings: distinct inputs give distinct outputs,
  which keeps UNIQUE and PRIMARY KEY columns unique, and no value maps to
  itself.

>>> cedula_check_digit("171430710")
'3'
>>> is_valid_cedula("1714307103"), is_valid_cedula("1714307104")
(True, False)
>>> luhn_check_digit("411111111111111")
'1'
"""

from __future__ import annotations

import re

from stdnum.ec import ruc as stdnum_ruc

from masking.fpe import Derangement

PROVINCES = tuple(f"{n:02d}" for n in range(1, 25)) + ("30",)
_PROVINCE_INDEX = {code: index for index, code in enumerate(PROVINCES)}
_PUBLIC_WEIGHTS = (3, 2, 7, 6, 5, 4, 3, 2)
_JURIDICAL_WEIGHTS = (4, 3, 2, 7, 6, 5, 4, 3, 2)


# Weighted sum of two adjacent digits at positions 2k and 2k+1 (weights 2 and 1,
# 9 subtracted from a product above 9), keyed by the two characters.
_PAIR_SUMS = {
    f"{a}{b}": (2 * a - 9 if 2 * a > 9 else 2 * a) + b for a in range(10) for b in range(10)
}
_DOUBLED = {str(a): 2 * a - 9 if 2 * a > 9 else 2 * a for a in range(10)}


def cedula_check_digit(first_nine: str) -> str:
    """Return the check digit of the first 9 digits of a cédula."""
    if len(first_nine) == 9:
        # The masking hot path: five lookups instead of nine int() calls.
        # Digits other than ASCII 0-9 fall through to the general loop.
        try:
            total = (
                _PAIR_SUMS[first_nine[0:2]] + _PAIR_SUMS[first_nine[2:4]] + _PAIR_SUMS[first_nine[4:6]]
                + _PAIR_SUMS[first_nine[6:8]] + _DOUBLED[first_nine[8]]
            )
            return str((10 - total % 10) % 10)
        except KeyError:
            pass
    total = 0
    for position, char in enumerate(first_nine):
        product = int(char) * (2 if position % 2 == 0 else 1)
        total += product - 9 if product > 9 else product
    return str((10 - total % 10) % 10)


def is_valid_cedula(value: str) -> bool:
    """Return whether ``value`` is a citizen cédula (province 01-24/30, digit 3 < 6, check digit).

    Every value accepted here is also accepted by ``stdnum.ec.ci`` (which
    additionally accepts province 50 and third digit 6); the tests check this.
    """
    return (
        len(value) == 10
        and value.isdigit()
        and value[:2] in _PROVINCE_INDEX
        and value[2] < "6"
        and cedula_check_digit(value[:9]) == value[9]
    )


def is_valid_ruc(value: str) -> bool:
    """Return whether python-stdnum accepts ``value`` as a RUC."""
    return stdnum_ruc.is_valid(value)


def _mod11_check_digit(digits: str, weights: tuple[int, ...]) -> int:
    """Return the mod-11 check digit, or 10 when the body has none."""
    total = sum(int(d) * w for d, w in zip(digits, weights))
    return (-total) % 11


def luhn_check_digit(body: str) -> str:
    """Return the Luhn check digit that completes ``body``."""
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def is_luhn_valid(number: str) -> bool:
    """Return whether the digit string passes the Luhn check."""
    return len(number) >= 2 and number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def split_digits(value: str) -> tuple[str, list[str | None]]:
    """Split ``value`` into its digits and a layout with None where digits were."""
    digits = []
    layout: list[str | None] = []
    for char in value:
        if "0" <= char <= "9":
            digits.append(char)
            layout.append(None)
        else:
            layout.append(char)
    return "".join(digits), layout


def join_digits(digits: str, layout: list[str | None]) -> str:
    """Put ``digits`` back into the positions that ``layout`` marks with None."""
    out = []
    position = 0
    for slot in layout:
        if slot is None:
            out.append(digits[position])
            position += 1
        else:
            out.append(slot)
    return "".join(out)


class _DigitStrings:
    """Derangements of fixed-length digit strings, one per (length, tweak), created on demand."""

    def __init__(self, key: bytes, label: str):
        self._key = key
        self._label = label
        self._cache: dict[tuple[int, str], Derangement] = {}

    def get(self, length: int, tweak: str = "", accept=None) -> Derangement:
        cache_key = (length, tweak)
        derangement = self._cache.get(cache_key)
        if derangement is None:
            label = f"{self._label}:{length}:{tweak}".encode()
            derangement = Derangement(self._key, label, 10**length, accept)
            self._cache[cache_key] = derangement
        return derangement

    def mask(self, digits: str, tweak: str = "", accept=None) -> str:
        if not digits:
            return digits
        derangement = self.get(len(digits), tweak, accept)
        return str(derangement.apply(int(digits))).zfill(len(digits))


class CedulaMasker:
    """Map cédulas to other valid cédulas, and anything else to another non-cédula of the same layout."""

    def __init__(self, key: bytes, *, preserve_province: bool = False):
        self.preserve_province = preserve_province
        if preserve_province:
            self._valid_by_province = {
                code: Derangement(key, b"cedula:province:" + code.encode(), 6 * 10**6) for code in PROVINCES
            }
        else:
            self._valid = Derangement(key, b"cedula:valid", len(PROVINCES) * 6 * 10**6)
        self._invalid = _DigitStrings(key, "cedula:invalid")

    def mask_digits(self, digits: str) -> str:
        """Mask a bare digit string (the cédula part of a natural-person RUC, too)."""
        if is_valid_cedula(digits):
            return self._mask_valid(digits)
        if len(digits) == 10:
            # The complement of the valid set maps onto itself, so an invalid
            # input can never take the masked value of a valid one.
            return self._invalid.mask(digits, "10", accept=lambda x: not is_valid_cedula(str(x).zfill(10)))
        return self._invalid.mask(digits)

    def _mask_valid(self, cedula: str) -> str:
        body = int(cedula[2]) * 10**6 + int(cedula[3:9])
        if self.preserve_province:
            province = cedula[:2]
            masked_body = self._valid_by_province[province].apply(body)
        else:
            index = self._valid.apply(_PROVINCE_INDEX[cedula[:2]] * 6 * 10**6 + body)
            province_index, masked_body = divmod(index, 6 * 10**6)
            province = PROVINCES[province_index]
        third, rest = divmod(masked_body, 10**6)
        first_nine = f"{province}{third}{rest:06d}"
        return first_nine + cedula_check_digit(first_nine)

    def mask(self, value: str) -> str:
        if value.isascii() and value.isdigit():
            return self.mask_digits(value)
        digits, layout = split_digits(value)
        return join_digits(self.mask_digits(digits), layout)


def _is_public_ruc(number: str) -> bool:
    return (
        len(number) == 13
        and number[:2] in _PROVINCE_INDEX
        and number[2] == "6"
        and number[9:] != "0000"
        and _mod11_check_digit(number[:8], _PUBLIC_WEIGHTS) == int(number[8])
    )


def _is_juridical_ruc(number: str) -> bool:
    return (
        len(number) == 13
        and number[:2] in _PROVINCE_INDEX
        and number[2] == "9"
        and number[10:] != "000"
        and _mod11_check_digit(number[:9], _JURIDICAL_WEIGHTS) == int(number[9])
    )


def _is_natural_ruc(number: str) -> bool:
    return len(number) == 13 and is_valid_cedula(number[:10]) and number[10:] != "000"


def _ruc_class(number: str) -> str:
    if _is_natural_ruc(number):
        return "natural"
    if _is_public_ruc(number):
        return "public"
    if _is_juridical_ruc(number):
        return "juridical"
    return "other"


class RucMasker:
    """Map RUCs to valid RUCs of the same kind; natural-person RUCs follow :class:`CedulaMasker`.

    The establishment number is kept: it numbers a taxpayer's branches and
    identifies no one.
    """

    def __init__(self, key: bytes, cedula: CedulaMasker):
        self._cedula = cedula
        size = len(PROVINCES) * 10**5
        self._public = Derangement(key, b"ruc:public", size, accept=self._public_body_ok)
        size = len(PROVINCES) * 10**6
        self._juridical = Derangement(key, b"ruc:juridical", size, accept=self._juridical_body_ok)
        self._other = _DigitStrings(key, "ruc:other")

    @staticmethod
    def _public_digits(index: int) -> str:
        province, body = divmod(index, 10**5)
        return f"{PROVINCES[province]}6{body:05d}"

    def _public_body_ok(self, index: int) -> bool:
        return _mod11_check_digit(self._public_digits(index), _PUBLIC_WEIGHTS) < 10

    @staticmethod
    def _juridical_digits(index: int) -> str:
        province, body = divmod(index, 10**6)
        return f"{PROVINCES[province]}9{body:06d}"

    def _juridical_body_ok(self, index: int) -> bool:
        return _mod11_check_digit(self._juridical_digits(index), _JURIDICAL_WEIGHTS) < 10

    def mask_digits(self, number: str) -> str:
        kind = _ruc_class(number)
        if kind == "natural":
            return self._cedula.mask_digits(number[:10]) + number[10:]
        if kind == "public":
            index = _PROVINCE_INDEX[number[:2]] * 10**5 + int(number[3:8])
            first_eight = self._public_digits(self._public.apply(index))
            return first_eight + str(_mod11_check_digit(first_eight, _PUBLIC_WEIGHTS)) + number[9:]
        if kind == "juridical":
            index = _PROVINCE_INDEX[number[:2]] * 10**6 + int(number[3:9])
            first_nine = self._juridical_digits(self._juridical.apply(index))
            return first_nine + str(_mod11_check_digit(first_nine, _JURIDICAL_WEIGHTS)) + number[10:]
        if len(number) == 13:
            return self._other.mask(number, "13", accept=lambda x: _ruc_class(str(x).zfill(13)) == "other")
        return self._other.mask(number)

    def mask(self, value: str) -> str:
        if value.isascii() and value.isdigit():
            return self.mask_digits(value)
        digits, layout = split_digits(value)
        return join_digits(self.mask_digits(digits), layout)


class DigitsMasker:
    """Keep the first ``keep_prefix`` digits and derange the rest, per length and layout.

    Used for phone numbers (keeping the country, area or mobile prefix) and
    as the digit part of other identifiers.
    """

    def __init__(self, key: bytes, label: str, keep_prefix: int = 0):
        self.keep_prefix = keep_prefix
        self._strings = _DigitStrings(key, label)

    def mask_digits(self, digits: str, keep_prefix: int | None = None) -> str:
        keep = self.keep_prefix if keep_prefix is None else keep_prefix
        keep = min(keep, len(digits))
        head, tail = digits[:keep], digits[keep:]
        return head + self._strings.mask(tail, tweak=head)

    def mask(self, value: str, keep_prefix: int | None = None) -> str:
        if value.isascii() and value.isdigit():
            return self.mask_digits(value, keep_prefix)
        digits, layout = split_digits(value)
        return join_digits(self.mask_digits(digits, keep_prefix), layout)


def phone_prefix_length(digits: str) -> int:
    """Return how many leading digits of an Ecuadorian phone number to keep.

    ``+593 9X...`` keeps ``5939`` (mobile) or ``593`` plus the area digit;
    national numbers keep ``09`` or the area code ``02``-``07``.

    Numbers stored without the leading 0 (``991234567`` in an integer
    column) keep their first digit.

    >>> phone_prefix_length("0991234567"), phone_prefix_length("593991234567"), phone_prefix_length("2345678")
    (2, 4, 0)
    >>> phone_prefix_length("991234567")
    1
    """
    if digits.startswith("593") and len(digits) >= 11:
        return 4
    if digits.startswith("0") and len(digits) >= 9:
        return 2
    if len(digits) in (8, 9) and digits[0] in "2345679":
        return 1
    return 0


class CardMasker:
    """Map card numbers (PANs) to Luhn-valid numbers of the same length.

    ``bin_mode="keep"`` keeps the 6-digit issuer prefix (BIN) and deranges the
    account digits: a bijection, fit for UNIQUE columns, but the output lies in
    the issuer's real range. ``bin_mode="test"`` replaces the BIN with
    ``test_bin`` so no output is a real card. Two cards that differ only in
    their BIN can then collide, which is why the engine rejects this mode on
    UNIQUE columns.
    """

    def __init__(self, key: bytes, *, bin_mode: str = "test", test_bin: str = "400000"):
        self.bin_mode = bin_mode
        self.test_bin = test_bin
        self._strings = _DigitStrings(key, "card")

    def mask_digits(self, digits: str) -> str:
        if len(digits) < 12 or not is_luhn_valid(digits):
            return self._strings.mask(digits, tweak="not-a-card")
        bin_, account = digits[:6], digits[6:-1]
        masked_account = self._strings.mask(account, tweak=bin_ if self.bin_mode == "keep" else "")
        prefix = bin_ if self.bin_mode == "keep" else self.test_bin
        body = prefix + masked_account
        return body + luhn_check_digit(body)

    def mask(self, value: str) -> str:
        if value.isascii() and value.isdigit():
            return self.mask_digits(value)
        digits, layout = split_digits(value)
        return join_digits(self.mask_digits(digits), layout)


class FormatPreservingMasker:
    """Derange a string keeping its length and the class of every character.

    Digits stay digits, upper-case ASCII letters stay upper-case, lower-case
    stay lower-case; every other character is layout and is kept. The first
    ``keep_prefix`` letters and digits are kept. Used for bank account numbers,
    which have no public check algorithm.

    >>> m = FormatPreservingMasker(b"k" * 32, "account", keep_prefix=3)
    >>> out = m.mask("CTA-2200123456")
    >>> out[:4], len(out), out[4:].isdigit()
    ('CTA-', 14, True)
    """

    _RADIX = {"digit": 10, "upper": 26, "lower": 26}
    _BASE = {"digit": ord("0"), "upper": ord("A"), "lower": ord("a")}

    def __init__(self, key: bytes, label: str, keep_prefix: int = 0):
        self._key = key
        self._label = label
        self.keep_prefix = keep_prefix
        self._cache: dict[str, Derangement] = {}

    @staticmethod
    def _char_class(char: str) -> str | None:
        if "0" <= char <= "9":
            return "digit"
        if "A" <= char <= "Z":
            return "upper"
        if "a" <= char <= "z":
            return "lower"
        return None

    def mask(self, value: str) -> str:
        if value.isascii() and value.isdigit() and len(value) > self.keep_prefix:
            return self._mask_digits(value)
        classes = [self._char_class(c) for c in value]
        positions = [i for i, c in enumerate(classes) if c is not None][self.keep_prefix:]
        if not positions:
            return value
        kept = "".join(value[i] for i in range(len(value)) if i not in positions)
        signature = "".join(classes[i][0] for i in positions) + "|" + kept
        derangement = self._cache.get(signature)
        if derangement is None:
            size = 1
            for i in positions:
                size *= self._RADIX[classes[i]]
            derangement = Derangement(self._key, f"{self._label}:{signature}".encode(), size)
            self._cache[signature] = derangement
        number = 0
        for i in positions:
            radix = self._RADIX[classes[i]]
            digit = ord(value[i]) - self._BASE[classes[i]]
            number = number * radix + digit
        number = derangement.apply(number)
        out = list(value)
        for i in reversed(positions):
            radix = self._RADIX[classes[i]]
            number, digit = divmod(number, radix)
            out[i] = chr(self._BASE[classes[i]] + digit)
        return "".join(out)

    def _mask_digits(self, value: str) -> str:
        """Mask a string of ASCII digits: the general path's result, without per-character work."""
        kept, tail = value[:self.keep_prefix], value[self.keep_prefix:]
        signature = "d" * len(tail) + "|" + kept
        derangement = self._cache.get(signature)
        if derangement is None:
            derangement = Derangement(self._key, f"{self._label}:{signature}".encode(), 10 ** len(tail))
            self._cache[signature] = derangement
        return kept + str(derangement.apply(int(tail))).zfill(len(tail))


# The lookbehind gives the same matches (a leftmost match starts where a run of
# local-part characters starts) but stops a failed search from retrying at every
# character of a long word, which took seconds on 100,000 letters.
EMAIL_PATTERN = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
PHONE_PATTERN = re.compile(r"(?<![\d+])(?:\+?593[\s\-]?|0)(?:9\d[\s\-]?\d{3}[\s\-]?\d{4}|[2-7][\s\-]?\d{3}[\s\-]?\d{4})(?!\d)")
DIGIT_RUN_PATTERN = re.compile(r"(?<!\d)\d[\d\s\-]{8,22}\d(?!\d)")

# E-mail addresses written to dodge a plain pattern: spaces around "@", "(at)",
# "[at]", " at ", "arroba", and "(dot)", " punto " for the dots. The top-level
# domain must be 2 to 24 letters right after the last dot, so "estoy at home. Luego"
# is not an address. Lengths are bounded (64-character local part, 63-character
# labels, 10 labels) so a long word cannot make a search quadratic.
_OBFUSCATED_AT = r"(?:\s{0,3}@\s{0,3}|\s{0,3}[(\[{<]\s{0,3}(?:at|arroba)\s{0,3}[)\]}>]\s{0,3}|\s{1,3}(?:at|arroba)\s{1,3})"
_OBFUSCATED_DOT = r"(?:\.|\s{0,3}[(\[{<]\s{0,3}(?:dot|punto)\s{0,3}[)\]}>]\s{0,3}|\s{1,3}(?:dot|punto)\s{1,3})"
OBFUSCATED_EMAIL_PATTERN = re.compile(
    rf"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{{1,64}}{_OBFUSCATED_AT}[A-Za-z0-9\-]{{1,63}}"
    rf"(?:{_OBFUSCATED_DOT}[A-Za-z0-9\-]{{1,63}}){{0,8}}{_OBFUSCATED_DOT}[A-Za-z]{{2,24}}(?![A-Za-z0-9\-])",
    re.IGNORECASE,
)


def looks_like_email(value: str) -> bool:
    """Return whether the whole string is an e-mail address."""
    return EMAIL_PATTERN.fullmatch(value) is not None


def looks_like_phone(value: str) -> bool:
    """Return whether the whole string is an Ecuadorian mobile or landline number."""
    return PHONE_PATTERN.fullmatch(value.strip()) is not None


def classify_digits(digits: str) -> str | None:
    """Return ``cedula``, ``ruc`` or ``card`` when a digit string validates as one."""
    if len(digits) == 10 and is_valid_cedula(digits):
        return "cedula"
    if len(digits) == 13 and is_valid_ruc(digits):
        return "ruc"
    if 13 <= len(digits) <= 19 and is_luhn_valid(digits):
        return "card"
    return None


def contains_identifier(text: str) -> bool:
    """Return whether ``text`` contains an e-mail, an Ecuadorian phone, or a valid cédula, RUC or card number.

    E-mails written as ``ana @ x.ec``, ``ana(at)x(dot)ec`` or ``ana arroba x punto ec``
    count too (:data:`OBFUSCATED_EMAIL_PATTERN`).

    >>> contains_identifier("Documento [CEDULA] verificado"), contains_identifier("CI 1714307103")
    (False, True)
    >>> contains_identifier("escribir a ana.p @ correo.ec"), contains_identifier("estoy at home. Luego")
    (True, False)
    """
    if EMAIL_PATTERN.search(text) or OBFUSCATED_EMAIL_PATTERN.search(text) or PHONE_PATTERN.search(text):
        return True
    for match in DIGIT_RUN_PATTERN.finditer(text):
        if classify_digits("".join(c for c in match.group(0) if c.isdigit())):
            return True
    return False
