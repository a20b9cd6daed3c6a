"""Unit tests of the masking building blocks that need no database."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest
from pydantic import TypeAdapter
from stdnum.ec import ci as stdnum_ci
from stdnum.ec import ruc as stdnum_ruc

from masking.errors import PolicyError
from masking.fpe import Derangement, Permutation
from masking.identifiers import (
    CardMasker,
    CedulaMasker,
    FormatPreservingMasker,
    RucMasker,
    cedula_check_digit,
    is_luhn_valid,
    is_valid_cedula,
    luhn_check_digit,
)
from masking.keys import MaskingKey, decode_key_text, generate_key_file, load_key
from masking.policy import parse_policy, parse_table_name
from masking.suppression import SuppressionList, subject_mac
from masking.transformers import ColumnRule, TransformerFactory, redact_text
from resguardo.errors import KeyError_

KEY = MaskingKey(bytes(range(32)))
RULE = TypeAdapter(ColumnRule)


@pytest.fixture(autouse=True)
def english_messages(monkeypatch):
    """Assert on the English msgids; the Spanish catalog is checked by tests/test_i18n.py."""
    monkeypatch.setenv("RESGUARDO_LANG", "en")


def build(raw):
    return TransformerFactory(KEY).build(RULE.validate_python(raw))


def random_cedulas(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out = set()
    while len(out) < count:
        nine = f"{rng.randint(1, 24):02d}{rng.randrange(6)}{rng.randrange(10**6):06d}"
        out.add(nine + cedula_check_digit(nine))
    return sorted(out)


def test_cedula_check_digit_known_examples():
    assert cedula_check_digit("171430710") == "3"
    assert cedula_check_digit("060291094") == "5"
    assert is_valid_cedula("1714307103")
    assert is_valid_cedula("0602910945")
    assert not is_valid_cedula("1714307104")
    assert not is_valid_cedula("2514307103")


def test_permutation_is_bijection_with_inverse():
    permutation = Permutation(b"k" * 32, b"t", 1000)
    images = [permutation.encrypt(x) for x in range(1000)]
    assert sorted(images) == list(range(1000))
    assert all(permutation.decrypt(y) == x for x, y in enumerate(images))


def test_derangement_on_accepted_subset():
    accept = lambda x: x % 3 != 0  # noqa: E731
    derangement = Derangement(b"k" * 32, b"t", 300, accept)
    members = [x for x in range(300) if accept(x)]
    images = [derangement.apply(x) for x in members]
    assert sorted(images) == members
    assert all(x != y for x, y in zip(members, images))


def test_cedula_masks_to_valid_distinct_cedulas():
    masker = CedulaMasker(KEY.subkey("cedula"))
    originals = random_cedulas(2000)
    masked = [masker.mask(c) for c in originals]
    assert all(stdnum_ci.is_valid(m) for m in masked)
    assert all(is_valid_cedula(m) for m in masked)
    assert len(set(masked)) == len(masked)
    assert all(m != c for m, c in zip(masked, originals))


def test_cedula_preserve_province():
    masker = CedulaMasker(KEY.subkey("cedula"), preserve_province=True)
    for cedula in random_cedulas(200, seed=2):
        masked = masker.mask(cedula)
        assert masked[:2] == cedula[:2]
        assert is_valid_cedula(masked)


def test_invalid_cedula_stays_invalid_and_keeps_layout():
    masker = CedulaMasker(KEY.subkey("cedula"))
    masked = masker.mask("1714307104")
    assert len(masked) == 10
    assert not is_valid_cedula(masked)
    dashed = masker.mask("171430710-3")
    assert dashed[9] == "-"
    assert is_valid_cedula(dashed.replace("-", ""))


def test_ruc_kinds_stay_valid_and_natural_follows_cedula():
    cedula = CedulaMasker(KEY.subkey("cedula"))
    ruc = RucMasker(KEY.subkey("ruc"), cedula)
    for number in ["1714307103001", "1760001550001", "1790011674001", "0992339411001"]:
        assert stdnum_ruc.is_valid(number), number
        masked = ruc.mask(number)
        assert stdnum_ruc.is_valid(masked), (number, masked)
        assert masked[2] == number[2] or number[2] < "6"
        assert masked != number
    assert ruc.mask("1714307103001") == cedula.mask("1714307103") + "001"


def test_card_luhn_and_bin_modes():
    body = "454545000000123"
    pan = body + luhn_check_digit(body)
    test_mode = CardMasker(KEY.subkey("card")).mask(pan)
    keep_mode = CardMasker(KEY.subkey("card"), bin_mode="keep").mask(pan)
    assert is_luhn_valid(test_mode)
    assert test_mode.startswith("400000")
    assert is_luhn_valid(keep_mode)
    assert keep_mode.startswith("454545")
    assert len(test_mode) == len(keep_mode) == 16


def test_account_small_domain_is_collision_free():
    masker = FormatPreservingMasker(KEY.subkey("account"), "account")
    originals = [f"{n:03d}" for n in range(1000)]
    masked = [masker.mask(v) for v in originals]
    assert sorted(masked) == originals
    assert all(m != v for m, v in zip(masked, originals))


def test_transformers_deterministic_across_factories():
    for raw, value in [("cedula", "1714307103"), ("email", "ana@correo.ec"), ("phone", "0991234567"),
                       ({"transform": "full_name"}, "Ana María Pérez Loor"), ("address", "Av. 9 de Octubre 425 y Boyacá")]:
        assert build(raw)(value) == build(raw)(value)
        assert build(raw)(value) != value


def test_different_key_gives_different_output():
    other = TransformerFactory(MaskingKey(b"z" * 32)).build(RULE.validate_python("cedula"))
    assert other("1714307103") != build("cedula")("1714307103")


def test_integer_cedula_keeps_width():
    masked = build("cedula")(602910945)
    assert isinstance(masked, int)
    assert is_valid_cedula(str(masked).zfill(10))


def test_names_keep_case_and_never_map_to_themselves():
    surname = build("surname")
    assert surname("PEREZ").isupper()
    assert surname("PEREZ").isascii()
    given = build("given_name")
    for name in ["María", "Juan", "José", "Ana"]:
        assert given(name) != name


def test_email_looks_like_email():
    masked = build({"transform": "email", "domain": "ejemplo.invalid"})("Ana.Perez@correo.ec")
    assert masked.endswith("@ejemplo.invalid")
    assert "correo.ec" not in masked
    assert masked.count("@") == 1


def test_date_modes():
    month = build({"transform": "date", "mode": "month"})
    assert month(dt.date(1980, 5, 17)) == dt.date(1980, 5, 1)
    year = build({"transform": "date", "mode": "year"})
    assert year("1980-05-17") == "1980-01-01"
    shift = build({"transform": "date", "mode": "shift", "max_days": 10})
    shifted = shift(dt.date(1980, 5, 17))
    assert shifted != dt.date(1980, 5, 17)
    assert abs((shifted - dt.date(1980, 5, 17)).days) <= 10


def test_amount_bounded_noise_keeps_scale():
    amount = build({"transform": "amount", "max_ratio": 0.1})
    masked = amount(Decimal("1234.56"))
    assert masked.as_tuple().exponent == -2
    assert Decimal("1111.10") <= masked <= Decimal("1358.02")
    assert amount(Decimal("1234.56")) == masked


def test_redact_patterns_and_replace():
    assert redact_text("CI 1714307103 y RUC 1790011674001") == "CI [CEDULA] y RUC [RUC]"
    assert "[EMAIL]" in redact_text("escribir a ana@x.ec")
    assert "[TELEFONO]" in redact_text("llamar al +593 99 123 4567 hoy")
    assert redact_text("monto 1234567890 no es cédula") == "monto 1234567890 no es cédula"
    assert build({"transform": "redact", "mode": "replace"})("cualquier texto") == "[REDACTADO]"


def test_json_paths_and_nulls():
    rule = {"transform": "json", "paths": {"$.contacto.email": "email", "$.telefonos[*]": "phone"}}
    document = {"contacto": {"email": "a@b.ec", "nombre": "x"}, "telefonos": ["0991234567", None], "otro": 1}
    masked = build(rule)(document)
    assert masked["contacto"]["email"] != "a@b.ec"
    assert masked["contacto"]["nombre"] == "x"
    assert masked["telefonos"][1] is None
    assert masked["telefonos"][0] != "0991234567"
    assert masked["otro"] == 1
    assert document["contacto"]["email"] == "a@b.ec"


def test_table_name_parsing():
    assert parse_table_name('"Banca"."Clientes VIP"') == ("Banca", "Clientes VIP")
    assert parse_table_name("Banca.Clientes VIP") == ("Banca", "Clientes VIP")
    assert parse_table_name('"a.b"."c""d"') == ("a.b", 'c"d')
    with pytest.raises(ValueError):
        parse_table_name("sin_esquema")


def test_policy_errors_list_every_problem():
    with pytest.raises(PolicyError) as caught:
        parse_policy({
            "database": "core",
            "tables": {"public.t": {"columns": {
                "a": "cedulaa",
                "b": {"keep": True, "reviewed": True},
                "c": {"transform": "date", "mode": "week"},
            }}},
            "unknown": 1,
        })
    message = caught.value.message
    assert "tables.public.t.columns.a: unknown transformer 'cedulaa'" in message
    assert "tables.public.t.columns.b" in message
    assert "requires a reason" in message
    assert "tables.public.t.columns.c.mode" in message
    assert "unknown" in message


def test_key_loading(tmp_path, monkeypatch):
    path = tmp_path / "masking.key"
    key = generate_key_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_key(file=path).key_id == key.key_id
    with pytest.raises(KeyError_):
        generate_key_file(path)
    monkeypatch.setenv("MASKING_KEY_TEST", bytes(32).hex())
    assert load_key(env="MASKING_KEY_TEST").key_id == MaskingKey(bytes(32)).key_id
    with pytest.raises(KeyError_):
        decode_key_text("not a key!", "test")
    with pytest.raises(KeyError_):
        MaskingKey(b"short")
    assert repr(key) == f"MaskingKey(key_id={key.key_id!r})"


def test_suppression_list_stores_no_cedula(tmp_path):
    path = tmp_path / "suppression.yaml"
    listing = SuppressionList(KEY)
    assert listing.add("1714307103", reference="caso-42")
    assert not listing.add("171430710-3")
    with pytest.raises(PolicyError):
        listing.add("1714307104")
    listing.save(path)
    text = path.read_text(encoding="utf-8")
    assert "1714307103" not in text
    assert subject_mac(KEY, "1714307103") in text
    assert SuppressionList.load(path, KEY).macs == {subject_mac(KEY, "1714307103")}
    with pytest.raises(KeyError_):
        SuppressionList.load(path, MaskingKey(b"z" * 32))


@pytest.mark.parametrize("text", [
    "escribir a cliente3.159211 @ correo.ec",
    "escribir a CLIENTE3@CORREO.EC",
    "correo ana(at)correo(dot)ec",
    "correo ana [at] correo [dot] ec",
    "correo ana {AT} correo.com.ec",
    "correo ana at correo dot ec",
    "correo ana arroba correo punto ec",
])
def test_redact_obfuscated_email(text):
    redacted = redact_text(text)
    assert redacted.endswith("[EMAIL]")
    assert "correo.ec" not in redacted.lower()


@pytest.mark.parametrize("text", ["llegó at Quito. Luego", "nos vemos at 5.30", "cita a las 10 @ agencia"])
def test_redact_keeps_text_without_email(text):
    assert redact_text(text) == text


def test_redact_long_word_is_fast():
    import time

    started = time.monotonic()
    redact_text("a" * 100_000)
    assert time.monotonic() - started < 1.0


def test_cli_masking_config_before_or_after_action():
    import argparse

    from masking.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    after = parser.parse_args(["mask", "run", "demo", "--target", "qa", "--masking-config", "after.yaml"])
    before = parser.parse_args(["mask", "--masking-config", "before.yaml", "run", "demo", "--target", "qa"])
    absent = parser.parse_args(["mask", "run", "demo", "--target", "qa"])
    nested = parser.parse_args(["mask", "suppress", "add", "demo", "--masking-config", "s.yaml"])
    assert after.masking_config == "after.yaml"
    assert before.masking_config == "before.yaml"
    assert absent.masking_config is None
    assert nested.masking_config == "s.yaml"
