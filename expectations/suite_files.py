"""Hand-written expectation suites: one plain GX suite JSON file per table.

A DBA keeps the suites of a database in one directory (``expectations/<database>/``
in this repository, set by ``restore_test.expectations_dir`` in the config).
Every ``*.json`` file directly in that directory is one suite in the JSON form
that Great Expectations Core 1.x writes with ``ExpectationSuite.to_json_dict()``,
plus one Resguardo member that names the table the suite applies to::

    {
      "name": "demo-clientes",
      "meta": {"resguardo": {"table": "banca.clientes"}},
      "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "nombres"}},
        {"type": "expect_column_values_to_match_regex",
         "kwargs": {"column": "email", "regex": "^[^@ ]+@[^@ ]+$", "mostly": 0.99},
         "severity": "warning"}
      ]
    }

Rules:

- ``name`` is a non-empty string, unique among the files of the directory.
- ``meta.resguardo.table`` is the table key, ``schema.table`` exactly as the
  profile writes it (see :func:`expectations.profile.table_key`); case matters.
- Each expectation has ``type`` (``expectation_type``, the GX 0.x spelling, is
  also read) and ``kwargs``. ``batch_id`` and ``id`` are ignored, because
  Resguardo binds every suite to the restored table itself.
- ``severity`` is ``critical`` (the default), ``warning`` or ``info``. Only a
  failed ``critical`` expectation fails the restore test; the others are
  reported.

Problems that concern the whole file (unreadable, not JSON, no name, no table)
raise :class:`SuiteFileError`. Problems of one expectation (unknown type,
wrong kwargs) are found when the checks run and are reported as broken checks
of that expectation only.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from resguardo.errors import ConfigError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("expectations.suite_files")

META_KEY = "resguardo"
SEVERITIES = ("critical", "warning", "info")
_IGNORED_EXPECTATION_KEYS = {"id", "rendered_content"}
_IGNORED_KWARGS = {"batch_id"}


class SuiteFileError(ConfigError):
    """A hand-written suite file cannot be used as a whole."""


@dataclass(frozen=True)
class SuiteFile:
    """One hand-written suite as loaded from its file."""

    name: str
    table: str
    expectations: list[dict[str, Any]]
    notes: Any = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _fail(path: Path | str, problem: str) -> SuiteFileError:
    return SuiteFileError(
        _("suite file {path} is invalid: {problem}").format(path=path, problem=problem),
        _("fix the file as described in expectations/README.md; the other suites still run"),
    )


def normalize_expectation(spec: Any, *, where: str, index: int) -> dict[str, Any]:
    """Return ``spec`` as ``{"type", "kwargs", ...}`` or raise SuiteFileError.

    >>> normalize_expectation({"expectation_type": "expect_table_row_count_to_equal",
    ...                        "kwargs": {"value": 3, "batch_id": "x"}}, where="f.json", index=0)
    {'type': 'expect_table_row_count_to_equal', 'kwargs': {'value': 3}}
    """
    if not isinstance(spec, dict):
        raise _fail(where, _("expectation {index} is not a JSON object").format(index=index))
    expectation_type = spec.get("type", spec.get("expectation_type"))
    if not isinstance(expectation_type, str) or not expectation_type:
        raise _fail(where, _("expectation {index} has no \"type\"").format(index=index))
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise _fail(where, _("expectation {index}: \"kwargs\" is not a JSON object").format(index=index))
    severity = spec.get("severity", "critical")
    if severity not in SEVERITIES:
        raise _fail(
            where,
            _("expectation {index}: severity {value!r} is not one of {allowed}").format(
                index=index, value=severity, allowed=", ".join(SEVERITIES)
            ),
        )

    normalized: dict[str, Any] = {
        "type": expectation_type,
        "kwargs": {key: value for key, value in kwargs.items() if key not in _IGNORED_KWARGS},
    }
    for key, value in spec.items():
        if key in ("type", "expectation_type", "kwargs") or key in _IGNORED_EXPECTATION_KEYS:
            continue
        normalized[key] = value
    return normalized


def parse_suite_document(document: Any, *, where: str, path: Path | None = None) -> SuiteFile:
    """Check a parsed suite document and return it as a SuiteFile."""
    if not isinstance(document, dict):
        raise _fail(where, _("the file is not a JSON object"))
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, _("\"name\" is missing or empty"))
    meta = document.get("meta") or {}
    resguardo_meta = meta.get(META_KEY) if isinstance(meta, dict) else None
    table = resguardo_meta.get("table") if isinstance(resguardo_meta, dict) else None
    if not isinstance(table, str) or not table:
        raise _fail(where, _("\"meta.resguardo.table\" is missing; set it to the table key, e.g. \"banca.clientes\""))
    expectations = document.get("expectations")
    if not isinstance(expectations, list) or not expectations:
        raise _fail(where, _("\"expectations\" is missing or empty"))

    normalized = [normalize_expectation(spec, where=where, index=index) for index, spec in enumerate(expectations)]
    return SuiteFile(
        name=name,
        table=table,
        expectations=normalized,
        notes=document.get("notes"),
        path=path,
        meta=dict(meta),
    )


def load_suite_json(path: str | os.PathLike[str]) -> SuiteFile:
    """Read and check one hand-written suite file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SuiteFileError(
            _("suite file {path} could not be read: {error}").format(path=path, error=error.strerror or error),
            _("check that the file exists and is readable"),
        ) from None
    except UnicodeDecodeError:
        raise _fail(path, _("the file is not UTF-8 text")) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise _fail(
            path, _("not valid JSON at line {line}, column {column}: {reason}").format(
                line=error.lineno, column=error.colno, reason=error.msg
            )
        ) from None
    return parse_suite_document(document, where=str(path), path=path)


def load_suite_dir(directory: str | os.PathLike[str]) -> tuple[list[SuiteFile], list[SuiteFileError]]:
    """Load every ``*.json`` suite directly in ``directory``, sorted by file name.

    Returns the usable suites and one error per unusable file, so that one bad
    file never hides the others. A missing directory raises SuiteFileError.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SuiteFileError(
            _("suite directory {path} does not exist").format(path=directory),
            _("create it or correct restore_test.expectations_dir in the configuration"),
        )

    suites: list[SuiteFile] = []
    errors: list[SuiteFileError] = []
    names: dict[str, Path] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            suite = load_suite_json(path)
        except SuiteFileError as error:
            log.warning("expectations.suite_file.invalid", extra={"path": str(path)})
            errors.append(error)
            continue
        if suite.name in names:
            errors.append(
                _fail(
                    path,
                    _("suite name {name!r} is already used by {other}").format(name=suite.name, other=names[suite.name]),
                )
            )
            continue
        names[suite.name] = path
        suites.append(suite)

    log.info("expectations.suite_dir.loaded", extra={"path": str(directory), "suites": len(suites), "invalid": len(errors)})
    return suites, errors


def suite_document(name: str, table: str, expectations: Iterable[Any], notes: Any = None) -> dict[str, Any]:
    """Return the JSON document of a hand-written suite.

    ``expectations`` contains specs (``{"type", "kwargs", ...}``, as
    :func:`expectations.suites.build_profile_suite` returns them) or GX
    ``Expectation`` objects.

    >>> suite_document("demo", "banca.clientes",
    ...                [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}}])["meta"]
    {'resguardo': {'table': 'banca.clientes'}}
    """
    specs: list[dict[str, Any]] = []
    for index, expectation in enumerate(expectations):
        if not isinstance(expectation, dict) and hasattr(expectation, "configuration"):
            expectation = expectation.configuration.to_json_dict()
        specs.append(normalize_expectation(expectation, where=name, index=index))
    document: dict[str, Any] = {"name": name}
    if notes is not None:
        document["notes"] = notes
    document["meta"] = {META_KEY: {"table": table}}
    document["expectations"] = specs
    return document


def save_suite_json(
    path: str | os.PathLike[str], *, name: str, table: str, expectations: Iterable[Any], notes: Any = None
) -> Path:
    """Write a hand-written suite file (UTF-8, indented) and return its path.

    The file is written to a temporary name and renamed, so a reader never
    sees half a file.
    """
    path = Path(path)
    document = suite_document(name, table, expectations, notes)
    text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    log.info("expectations.suite_file.saved", extra={"path": str(path), "suite": name, "expectations": len(document["expectations"])})
    return path
