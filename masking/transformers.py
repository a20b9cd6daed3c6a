"""Column rules and the transformers they build.

Terms:

- *rule*: the policy's instruction for one column: ``keep`` or a transformer
  with options. Rules are pydantic models; a column's rule in YAML is either
  a bare name (``keep``, ``cedula``) or a mapping
  (``{transform: date, mode: shift, max_days: 20}``).
- *transformer*: the callable a rule builds under the masking key. It maps a
  non-NULL value to its masked value; NULL stays NULL (the engine never calls
  a transformer on NULL). Every transformer is deterministic: the same value
  under the same key and the same rule options gives the same output in every
  table and every run, which keeps joins and foreign keys intact. Two columns
  joined by a foreign key must therefore have identical rules.
- *injective*: distinct inputs give distinct outputs. The engine accepts only
  injective transformers on columns under a UNIQUE or PRIMARY KEY
  constraint. Identifier transformers (cédula, RUC, phone, account, card with
  ``bin_mode: keep``) are bijections by construction (see
  :mod:`masking.fpe`). ``email`` and ``token`` are HMAC-based: injective
  unless two of the n inputs share an 80-bit HMAC prefix, a chance below
  n^2 / 2^81; the recreated unique index then fails loudly.
- *guarantees change*: every non-NULL output differs from its input, so the
  proof may require "no row kept its original value" for the column.
- *value kind*: the PostgreSQL types a transformer accepts: ``text``
  (text, varchar, char, citext), ``integer``, ``numeric`` (numeric, real,
  double precision), ``date`` (date, timestamp, timestamptz) and ``json``
  (json, jsonb). Array columns are masked element by element.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
from decimal import Decimal
from typing import Annotated, Any, Callable, Literal, Sequence, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from masking.identifiers import (
    DIGIT_RUN_PATTERN,
    EMAIL_PATTERN,
    OBFUSCATED_EMAIL_PATTERN,
    PHONE_PATTERN,
    CardMasker,
    CedulaMasker,
    DigitsMasker,
    FormatPreservingMasker,
    RucMasker,
    classify_digits,
    phone_prefix_length,
)
from masking.keys import MaskingKey
from masking.names import NamePicker, load_list, strip_accents

try:
    # The C function behind hmac.digest, without the wrapper's argument checks:
    # e-mail, amount and token masking call it once per value.
    from _hashlib import hmac_digest as _hmac_digest
except ImportError:  # pragma: no cover - Python builds without OpenSSL
    from hmac import digest as _hmac_digest

VALUE_KINDS = ("text", "integer", "numeric", "date", "json")
_CACHE_LIMIT = 200_000
# Batches masked without the cache after a batch with a hit rate below 5 %;
# then one batch measures the hit rate again.
_UNCACHED_BATCHES = 20
_MISSING = object()


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def describe(self) -> dict[str, Any]:
        """Return the rule as a JSON-serialisable mapping (for evidence and error messages)."""
        return self.model_dump(mode="json", exclude_defaults=False)


class KeepRule(_Rule):
    """Copy the column unchanged; ``reviewed`` plus ``reason`` record that someone checked it contains no personal data."""

    keep: Literal[True] = True
    reviewed: bool = False
    reason: str | None = Field(None, description="why the column is safe to keep; required when reviewed is true")

    @model_validator(mode="after")
    def _reviewed_needs_reason(self) -> "KeepRule":
        if self.reviewed and not (self.reason or "").strip():
            raise ValueError("reviewed: true requires a reason that says why the column contains no personal data")
        return self


class CedulaRule(_Rule):
    transform: Literal["cedula"]
    preserve_province: bool = Field(False, description="keep digits 1-2 (province) of valid cédulas")


class RucRule(_Rule):
    transform: Literal["ruc"]
    preserve_province: bool = Field(False, description="must match the cédula rule so natural-person RUCs join")


class NameRule(_Rule):
    transform: Literal["given_name", "surname", "full_name"]
    order: Literal["given_first", "surname_first"] = Field(
        "given_first", description="full_name only: 'Juan Pérez' or 'PÉREZ JUAN' (civil registry order)"
    )


class EmailRule(_Rule):
    transform: Literal["email"]
    domain: str = Field("example.invalid", pattern=r"^[a-z0-9-]+(\.[a-z0-9-]+)+$")
    case_insensitive: bool = Field(False, description="mask 'A@x.ec' and 'a@x.ec' alike (breaks uniqueness of both)")


class PhoneRule(_Rule):
    transform: Literal["phone"]


class AddressRule(_Rule):
    transform: Literal["address"]
    with_city: bool = Field(False, description="append ', <city>' from the bundled list")


class DateRule(_Rule):
    transform: Literal["date"]
    mode: Literal["month", "year", "shift"] = Field(
        "month", description="month/year: generalise to the first day; shift: move by a keyed offset"
    )
    max_days: int = Field(30, ge=1, le=3650, description="shift only: largest offset in days, either direction")


class AmountRule(_Rule):
    transform: Literal["amount"]
    max_ratio: float = Field(0.1, gt=0, le=1, description="largest relative change, e.g. 0.1 = ±10 %")


class CardRule(_Rule):
    transform: Literal["card"]
    bin_mode: Literal["test", "keep"] = Field(
        "test", description="test: replace the issuer prefix with test_bin; keep: keep it (needed on UNIQUE columns)"
    )
    test_bin: str = Field("400000", pattern=r"^\d{6}$")


class AccountRule(_Rule):
    transform: Literal["account"]
    keep_prefix: int = Field(0, ge=0, le=12, description="leading letters/digits kept, e.g. a product code")


class RedactRule(_Rule):
    transform: Literal["redact"]
    mode: Literal["patterns", "replace"] = Field(
        "patterns", description="patterns: replace cédulas, RUCs, cards, e-mails, phones; replace: the whole text"
    )
    replacement: str = "[REDACTADO]"


class NullRule(_Rule):
    transform: Literal["null"]


class TokenRule(_Rule):
    transform: Literal["token"]
    length: int = Field(16, ge=12, le=52)
    prefix: str = Field("tok_", max_length=16)


class ConstantRule(_Rule):
    transform: Literal["constant"]
    value: str


ValueRule = Annotated[
    Union[
        CedulaRule, RucRule, NameRule, EmailRule, PhoneRule, AddressRule, DateRule, AmountRule, CardRule,
        AccountRule, RedactRule, NullRule, TokenRule, ConstantRule,
    ],
    Field(discriminator="transform"),
]


class JsonRule(_Rule):
    """Apply a rule to the values at JSON paths (``$.contacto.email``, ``$.telefonos[*]``)."""

    transform: Literal["json"]
    paths: dict[str, ValueRule] = Field(min_length=1)

    @field_validator("paths", mode="before")
    @classmethod
    def _expand_bare_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {path: {"transform": rule} if isinstance(rule, str) else rule for path, rule in value.items()}
        return value

    @field_validator("paths")
    @classmethod
    def _valid_paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            parse_json_path(path)
        return value


def _rule_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "keep" if value == "keep" else "transform"
    if isinstance(value, dict):
        return "keep" if "keep" in value else "transform"
    if isinstance(value, KeepRule):
        return "keep"
    return "transform"


def _expand_bare(value: Any) -> Any:
    if isinstance(value, str):
        return {"keep": True} if value == "keep" else {"transform": value}
    return value


TransformRule = Annotated[
    Union[
        CedulaRule, RucRule, NameRule, EmailRule, PhoneRule, AddressRule, DateRule, AmountRule, CardRule,
        AccountRule, RedactRule, NullRule, TokenRule, ConstantRule, JsonRule,
    ],
    Field(discriminator="transform"),
]

ColumnRule = Annotated[
    Union[Annotated[KeepRule, Tag("keep")], Annotated[TransformRule, Tag("transform")]],
    Discriminator(_rule_tag),
    BeforeValidator(_expand_bare),
]


# -- JSON paths -----------------------------------------------------------------

_PATH_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[\*\]|\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]")


def parse_json_path(path: str) -> list[str | int | None]:
    """Parse the supported JSONPath subset into steps: key, index, or None for ``[*]``.

    >>> parse_json_path("$.contacto.email")
    ['contacto', 'email']
    >>> parse_json_path("$.telefonos[*]")
    ['telefonos', None]
    >>> parse_json_path("$['nombre completo'][0]")
    ['nombre completo', 0]
    """
    if not path.startswith("$"):
        raise ValueError(f"JSON path {path!r} must start with '$'")
    steps: list[str | int | None] = []
    position = 1
    while position < len(path):
        match = _PATH_TOKEN.match(path, position)
        if not match:
            raise ValueError(f"JSON path {path!r}: unsupported syntax at {path[position:]!r}; use $.a.b, [*], [0] or ['key']")
        if match.group(1) is not None:
            steps.append(match.group(1))
        elif match.group(2) is not None:
            steps.append(int(match.group(2)))
        elif match.group(3) is not None:
            steps.append(match.group(3).replace("\\'", "'"))
        else:
            steps.append(None)
        position = match.end()
    if not steps:
        raise ValueError(f"JSON path {path!r} selects the whole document; name a member")
    return steps


def _apply_at_path(node: Any, steps: list[str | int | None], function: Callable[[Any], Any]) -> Any:
    if not steps:
        if node is None or isinstance(node, (dict, list, bool)):
            return node
        return function(node)
    step, rest = steps[0], steps[1:]
    if step is None:
        if isinstance(node, list):
            return [_apply_at_path(item, rest, function) for item in node]
        return node
    if isinstance(step, int):
        if isinstance(node, list) and -len(node) <= step < len(node):
            copy = list(node)
            copy[step] = _apply_at_path(node[step], rest, function)
            return copy
        return node
    if isinstance(node, dict) and step in node:
        copy = dict(node)
        copy[step] = _apply_at_path(node[step], rest, function)
        return copy
    return node


# -- transformers ---------------------------------------------------------------

class Transformer:
    """A built rule: call it with a non-NULL value to get the masked value.

    Results are cached per transformer (at most ``_CACHE_LIMIT`` entries), so
    a value repeated in a column or across tables is masked once. The cache
    only saves time: every transformer is a pure function of the key, the
    rule and the value.
    """

    injective = False
    guarantees_change = False
    value_kinds: frozenset[str] = frozenset({"text"})

    def __init__(self, rule: _Rule):
        self.rule = rule
        self._cache: dict[Any, Any] = {}
        self._uncached_batches = 0

    def __call__(self, value: Any) -> Any:
        try:
            result = self._cache.get(value, _MISSING)
        except TypeError:
            # Unhashable values (JSON documents) are not cached.
            return self.apply(value)
        if result is not _MISSING:
            return result
        result = self.apply(value)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[value] = result
        return result

    def map_batch(self, values: Sequence[Any]) -> list[Any]:
        """Mask a batch of one column's values; None stays None. Equals calling the transformer per value.

        When fewer than 5 % of a batch's values are found in the cache (a
        column of unique cédulas or e-mails), the next ``_UNCACHED_BATCHES``
        batches skip it: looking up and storing a value that never repeats
        costs 0.5 to 1.5 µs, about a sixth of masking it.
        """
        apply = self.apply
        if self._uncached_batches > 0:
            self._uncached_batches -= 1
            return [None if value is None else apply(value) for value in values]

        cache = self._cache
        masked = []
        hits = 0
        for value in values:
            if value is None:
                masked.append(None)
                continue
            try:
                result = cache.get(value, _MISSING)
            except TypeError:
                # Unhashable values (JSON documents) are not cached.
                masked.append(apply(value))
                continue
            if result is _MISSING:
                result = apply(value)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[value] = result
            else:
                hits += 1
            masked.append(result)
        if hits * 20 < len(values):
            self._uncached_batches = _UNCACHED_BATCHES
        return masked

    def apply(self, value: Any) -> Any:
        raise NotImplementedError


class _StringMasker(Transformer):
    """Applies a string function; integers are masked as their decimal digits."""

    value_kinds = frozenset({"text", "integer"})
    width = 0

    def __init__(self, rule: _Rule, function: Callable[[str], str], *, injective: bool, width: int = 0):
        super().__init__(rule)
        self._function = function
        self.injective = injective
        self.guarantees_change = True
        self.width = width

    def apply(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            # Integer columns lose leading zeros (0602910945 is stored as 602910945).
            digits = str(value).zfill(self.width) if self.width and value >= 0 else str(value)
            return int(self._function(digits))
        return self._function(str(value))


class NameTransformer(Transformer):
    guarantees_change = True

    def __init__(self, rule: NameRule, picker: NamePicker):
        super().__init__(rule)
        self._picker = picker

    def apply(self, value: str) -> str:
        rule = self.rule
        if rule.transform == "full_name":
            return self._picker.full_name(value, rule.order)
        role = "given" if rule.transform == "given_name" else "surname"
        return " ".join(self._picker.pick(role, word) for word in value.split(" ") if word) or value


class EmailTransformer(Transformer):
    injective = True
    guarantees_change = True

    def __init__(self, rule: EmailRule, key: bytes):
        super().__init__(rule)
        self._key = key

    def apply(self, value: str) -> str:
        source = value.lower() if self.rule.case_insensitive else value
        digest = _hmac_digest(self._key, source.encode("utf-8"), "sha256")
        # Bytes 0-9 form the 80-bit token that keeps outputs distinct; the
        # names only make the address look real.
        token = base32_lower(digest[:10])
        given_names, surnames = _email_words("given_names"), _email_words("surnames")
        given = given_names[int.from_bytes(digest[10:14], "big") % len(given_names)]
        surname = surnames[int.from_bytes(digest[14:18], "big") % len(surnames)]
        return f"{given}.{surname}.{token}@{self.rule.domain}"


def _email_word(name: str) -> str:
    return strip_accents(name).lower().replace(" ", "").replace("ñ", "n")


@functools.lru_cache(maxsize=None)
def _email_words(list_name: str) -> tuple[str, ...]:
    """Return the entries of a bundled name list as e-mail words (ASCII-ish, lower case, no spaces)."""
    return tuple(_email_word(name) for name in load_list(list_name))


_BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
# Every 10-bit group as its two base32 characters.
_BASE32_PAIRS = tuple(a + b for a in _BASE32_ALPHABET for b in _BASE32_ALPHABET)


def base32_lower(data: bytes) -> str:
    """Encode 10 bytes as 16 lower-case RFC 4648 base32 characters (no padding needed).

    >>> base32_lower(bytes(range(10))) == base64.b32encode(bytes(range(10))).decode().lower()
    True
    """
    if len(data) != 10:
        raise ValueError(f"base32_lower takes exactly 10 bytes, got {len(data)}")
    number = int.from_bytes(data, "big")
    pairs = _BASE32_PAIRS
    return (
        pairs[number >> 70] + pairs[(number >> 60) & 1023] + pairs[(number >> 50) & 1023]
        + pairs[(number >> 40) & 1023] + pairs[(number >> 30) & 1023] + pairs[(number >> 20) & 1023]
        + pairs[(number >> 10) & 1023] + pairs[number & 1023]
    )


class AddressTransformer(Transformer):
    guarantees_change = True

    def __init__(self, rule: AddressRule, key: bytes):
        super().__init__(rule)
        self._key = key

    def apply(self, value: str) -> str:
        digest = _hmac_digest(self._key, value.encode("utf-8"), "sha256")
        streets = load_list("streets")
        first = streets[int.from_bytes(digest[0:4], "big") % len(streets)]
        second = streets[int.from_bytes(digest[4:8], "big") % len(streets)]
        if second == first:
            second = streets[(streets.index(first) + 1) % len(streets)]
        number = 100 + int.from_bytes(digest[8:10], "big") % 2900
        prefix = "Av." if digest[10] % 2 else "Calle"
        text = f"{prefix} {first} {number} y {second}"
        if self.rule.with_city:
            cities = load_list("cities")
            text += ", " + cities[int.from_bytes(digest[11:13], "big") % len(cities)]
        if text == value:
            text = f"{prefix} {second} {number} y {first}"
        return text


class DateTransformer(Transformer):
    value_kinds = frozenset({"date", "text"})

    def __init__(self, rule: DateRule, key: bytes):
        super().__init__(rule)
        self._key = key
        self.guarantees_change = rule.mode == "shift"

    def _offset(self, value: Any) -> int:
        digest = _hmac_digest(self._key, str(value).encode("utf-8"), "sha256")
        span = self.rule.max_days
        offset = int.from_bytes(digest[:8], "big") % (2 * span) - span
        return offset if offset != 0 else span

    def _transform(self, value: dt.date) -> dt.date:
        mode = self.rule.mode
        if mode == "shift":
            return value + dt.timedelta(days=self._offset(value))
        if isinstance(value, dt.datetime):
            value = value.replace(hour=0, minute=0, second=0, microsecond=0)
        if mode == "month":
            return value.replace(day=1)
        return value.replace(month=1, day=1)

    def apply(self, value: Any) -> Any:
        if isinstance(value, (dt.date, dt.datetime)):
            return self._transform(value)
        text = str(value)
        try:
            parsed = dt.date.fromisoformat(text[:10])
        except ValueError:
            raise ValueError("value is not an ISO date (YYYY-MM-DD)") from None
        masked = self._transform(parsed).isoformat()
        # A shifted text timestamp keeps its time of day; a generalised one loses it.
        return masked + text[10:] if self.rule.mode == "shift" else masked


class AmountTransformer(Transformer):
    value_kinds = frozenset({"integer", "numeric"})

    def __init__(self, rule: AmountRule, key: bytes):
        super().__init__(rule)
        self._key = key

    def apply(self, value: Any) -> Any:
        digest = _hmac_digest(self._key, str(value).encode("utf-8"), "sha256")
        # A factor in [1 - r, 1 + r], away from 1 by at least r/10 so the value moves.
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        ratio = self.rule.max_ratio * (0.1 + 0.9 * fraction) * (1 if digest[8] % 2 else -1)
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return int(round(value * (1 + ratio)))
        if isinstance(value, Decimal):
            if not value.is_finite():
                return value
            scaled = value * Decimal(repr(1 + ratio))
            exponent = value.as_tuple().exponent
            return scaled.quantize(_quantum(exponent)) if isinstance(exponent, int) else scaled
        return float(value) * (1 + ratio)


@functools.lru_cache(maxsize=64)
def _quantum(exponent: int) -> Decimal:
    """Return ``1E<exponent>``, the quantum that keeps a numeric's scale."""
    return Decimal(1).scaleb(exponent)


class RedactTransformer(Transformer):
    def apply(self, value: str) -> str:
        if self.rule.mode == "replace":
            return self.rule.replacement
        return redact_text(value)


def redact_text(text: str) -> str:
    """Replace cédulas, RUCs, card numbers, e-mails and Ecuadorian phone numbers in free text.

    E-mails written with spaces around "@", "(at)", "[at]", " at ", "arroba",
    "(dot)" or " punto " are replaced too (``OBFUSCATED_EMAIL_PATTERN``).
    Other spellings, such as an address split over lines or spelled out
    letter by letter, are not detected.

    >>> redact_text("CI 1714307103, correo ana@x.ec, cel 0991234567")
    'CI [CEDULA], correo [EMAIL], cel [TELEFONO]'
    >>> redact_text("escribir a ana.p @ correo.ec o ana(at)x(dot)ec o ana arroba x punto ec")
    'escribir a [EMAIL] o [EMAIL] o [EMAIL]'
    """
    text = EMAIL_PATTERN.sub("[EMAIL]", text)
    text = OBFUSCATED_EMAIL_PATTERN.sub("[EMAIL]", text)

    def digit_run(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        kind = classify_digits(digits)
        if kind is not None:
            return "[" + kind.upper() + "]"
        if PHONE_PATTERN.fullmatch(match.group(0)):
            return "[TELEFONO]"
        return match.group(0)

    text = DIGIT_RUN_PATTERN.sub(digit_run, text)
    return PHONE_PATTERN.sub("[TELEFONO]", text)


class JsonTransformer(Transformer):
    value_kinds = frozenset({"json", "text"})

    def __init__(self, rule: JsonRule, inner: dict[str, Transformer]):
        super().__init__(rule)
        self._paths = [(parse_json_path(path), inner[path]) for path in rule.paths]

    def apply(self, value: Any) -> Any:
        as_text = isinstance(value, str)
        document = json.loads(value) if as_text else value
        for steps, transformer in self._paths:
            document = _apply_at_path(document, steps, transformer)
        return json.dumps(document, ensure_ascii=False) if as_text else document


class NullTransformer(Transformer):
    value_kinds = frozenset(VALUE_KINDS)
    guarantees_change = True

    def apply(self, value: Any) -> None:
        return None


class TokenTransformer(Transformer):
    injective = True
    guarantees_change = True

    def __init__(self, rule: TokenRule, key: bytes):
        super().__init__(rule)
        self._key = key

    def apply(self, value: Any) -> str:
        digest = _hmac_digest(self._key, str(value).encode("utf-8"), "sha256")
        return self.rule.prefix + base64.b32encode(digest).decode("ascii").lower()[: self.rule.length]


class ConstantTransformer(Transformer):
    def apply(self, value: Any) -> str:
        return self.rule.value


class TransformerFactory:
    """Builds transformers under one key, sharing maskers between rules with equal options.

    Subkeys depend only on the transformer name and the options that change
    its output, so equal rules on different columns build equal functions.
    """

    def __init__(self, key: MaskingKey):
        self.key = key
        self._cedula: dict[bool, CedulaMasker] = {}
        self._built: dict[str, Transformer] = {}

    def cedula_masker(self, preserve_province: bool) -> CedulaMasker:
        masker = self._cedula.get(preserve_province)
        if masker is None:
            masker = CedulaMasker(self.key.subkey("cedula"), preserve_province=preserve_province)
            self._cedula[preserve_province] = masker
        return masker

    def build(self, rule: _Rule) -> Transformer:
        """Return the transformer of ``rule`` (one instance per distinct rule, so caches are shared)."""
        identity = json.dumps(rule.describe(), sort_keys=True)
        built = self._built.get(identity)
        if built is None:
            built = self._build(rule)
            self._built[identity] = built
        return built

    def _build(self, rule: _Rule) -> Transformer:
        key = self.key
        if isinstance(rule, CedulaRule):
            masker = self.cedula_masker(rule.preserve_province)
            return _StringMasker(rule, masker.mask, injective=True, width=10)
        if isinstance(rule, RucRule):
            ruc = RucMasker(key.subkey("ruc"), self.cedula_masker(rule.preserve_province))
            return _StringMasker(rule, ruc.mask, injective=True, width=13)
        if isinstance(rule, NameRule):
            return NameTransformer(rule, NamePicker(key.subkey("names")))
        if isinstance(rule, EmailRule):
            return EmailTransformer(rule, key.subkey(f"email:{rule.case_insensitive}"))
        if isinstance(rule, PhoneRule):
            digits = DigitsMasker(key.subkey("phone"), "phone")

            def mask_phone(text: str) -> str:
                if text.isascii() and text.isdigit():
                    return digits.mask_digits(text, phone_prefix_length(text))
                return digits.mask(text, keep_prefix=phone_prefix_length("".join(c for c in text if c.isdigit())))

            return _StringMasker(rule, mask_phone, injective=True)
        if isinstance(rule, AddressRule):
            return AddressTransformer(rule, key.subkey("address"))
        if isinstance(rule, DateRule):
            return DateTransformer(rule, key.subkey(f"date:{rule.max_days}"))
        if isinstance(rule, AmountRule):
            return AmountTransformer(rule, key.subkey(f"amount:{rule.max_ratio}"))
        if isinstance(rule, CardRule):
            card = CardMasker(key.subkey("card"), bin_mode=rule.bin_mode, test_bin=rule.test_bin)
            return _StringMasker(rule, card.mask, injective=rule.bin_mode == "keep")
        if isinstance(rule, AccountRule):
            account = FormatPreservingMasker(key.subkey("account"), "account", keep_prefix=rule.keep_prefix)
            return _StringMasker(rule, account.mask, injective=True)
        if isinstance(rule, RedactRule):
            return RedactTransformer(rule)
        if isinstance(rule, JsonRule):
            return JsonTransformer(rule, {path: self.build(inner) for path, inner in rule.paths.items()})
        if isinstance(rule, NullRule):
            return NullTransformer(rule)
        if isinstance(rule, TokenRule):
            return TokenTransformer(rule, key.subkey("token"))
        if isinstance(rule, ConstantRule):
            return ConstantTransformer(rule)
        raise TypeError(f"no transformer for rule {rule!r}")


def batch_masker(transformer: Transformer, *, is_array: bool = False,
                 wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]] | None = None
                 ) -> Callable[[Sequence[Any]], list[Any]]:
    """Return a function that masks a batch of one column's values (None stays None).

    Array columns are masked element by element; ``wrap`` adapts each result
    for writing (JSON documents). Other columns use :meth:`Transformer.map_batch`.
    """
    if not is_array and wrap is None:
        return transformer.map_batch
    function = element_wise(transformer) if is_array else transformer
    if wrap is not None:
        function = wrap(function)

    def map_values(values: Sequence[Any]) -> list[Any]:
        return [None if value is None else function(value) for value in values]

    return map_values


def element_wise(transformer: Transformer) -> Callable[[Any], Any]:
    """Wrap a transformer for array columns: every non-NULL element, at any nesting depth."""

    def apply(value: Any) -> Any:
        if isinstance(value, list):
            return [apply(item) for item in value]
        if value is None:
            return None
        return transformer(value)

    return apply
