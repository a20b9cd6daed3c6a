"""The outcome of the restore checks, and how GX results are cleaned before they are kept.

Terms:

- *failed expectation*: a check that ran and found the restored data different
  from what was expected (a wrong row count, a missing column, a duplicate
  key, a value that breaks a hand-written rule). The data is wrong.
- *broken check*: a check that could not run (a SQL error such as a column
  that does not exist, an unknown expectation type, an unusable suite file, a
  lost connection). The check is wrong, or the environment is, and nothing is
  known about the data it was meant to test.
- *severity*: GX's ``critical`` (default), ``warning`` or ``info``. Only a
  failed critical expectation fails the gate; every broken check fails it.

GX results are cleaned before they are stored, because they end up in
evidence records and reports. Row-level value lists (``partial_unexpected_list``
and the like, ``details.unexpected_rows`` of hand-written queries) and
exception tracebacks are removed. Error messages are cut to their first line,
with quoted input values masked. Counts and observed aggregates stay.

>>> clean_error_message('(psycopg.errors.UndefinedColumn) column "nope" does not exist\\nLINE 1: SELECT')
'UndefinedColumn: column "nope" does not exist'
>>> clean_error_message('(psycopg.errors.InvalidTextRepresentation) invalid input syntax for type integer: "0912345678"')
'InvalidTextRepresentation: invalid input syntax for type integer: "***"'
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from resguardo.errors import VerificationError
from resguardo.i18n import _

MAX_ERROR_LENGTH = 300

# Result members that list row values. They can contain personal data (a
# cédula, a name), so they never leave this package.
_ROW_VALUE_KEYS = {
    "partial_unexpected_list",
    "partial_unexpected_counts",
    "partial_unexpected_index_list",
    "unexpected_list",
    "unexpected_index_list",
    "unexpected_index_query",
    "unexpected_rows",
}

_DRIVER_PREFIX = re.compile(r"^\((?:[\w.]+\.)?(\w+)\)\s*")
# PostgreSQL quotes the offending input in these messages, e.g.
# invalid input syntax for type date: "1990-13-45".
_QUOTED_INPUT = re.compile(r'((?:invalid input|value too long|out of range)[^"\n]*?:\s*)"[^"\n]*"', re.IGNORECASE)


def clean_error_message(message: str | None) -> str:
    """Return the first line of a driver or GX error, without SQL, traceback or input values."""
    if not message:
        return ""
    first_line = message.strip().splitlines()[0].strip()
    match = _DRIVER_PREFIX.match(first_line)
    if match:
        first_line = f"{match.group(1)}: {first_line[match.end():]}"
    first_line = first_line.split("[SQL:", 1)[0].strip()
    first_line = _QUOTED_INPUT.sub(r'\1"***"', first_line)
    if len(first_line) > MAX_ERROR_LENGTH:
        first_line = first_line[: MAX_ERROR_LENGTH - 3] + "..."
    return first_line


def exception_messages(exception_info: Any) -> list[str]:
    """Return the error messages in a GX ``exception_info``, an empty list when nothing raised.

    GX 1.24.1 gives either one ``{"raised_exception", "exception_message", ...}``
    or, when metrics failed, one such mapping per failed metric.

    >>> exception_messages({"raised_exception": False, "exception_message": None})
    []
    >>> exception_messages({"MetricConfigurationID(...)": {"exception_message": "boom"}})
    ['boom']
    """
    if not isinstance(exception_info, dict):
        return []
    if "raised_exception" in exception_info:
        if exception_info.get("raised_exception"):
            return [str(exception_info.get("exception_message") or "unknown error")]
        return []
    messages = []
    for value in exception_info.values():
        if isinstance(value, dict) and (value.get("raised_exception") or value.get("exception_message")):
            messages.append(str(value.get("exception_message") or "unknown error"))
    return messages


def _drop_row_values(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_row_values(item) for key, item in value.items() if key not in _ROW_VALUE_KEYS}
    if isinstance(value, list):
        return [_drop_row_values(item) for item in value]
    return value


def clean_expectation_result(result: dict[str, Any], *, keep_row_details: bool = False) -> dict[str, Any]:
    """Return a GX expectation result dict without row values and tracebacks.

    ``keep_row_details`` keeps ``result.details`` of queries that Resguardo
    wrote itself, which return counts and column names only.
    """
    cleaned = dict(result)
    inner = cleaned.get("result")
    if isinstance(inner, dict):
        details = inner.get("details") if keep_row_details else None
        inner = _drop_row_values(inner)
        if details is not None:
            inner["details"] = details
        cleaned["result"] = inner
    messages = exception_messages(cleaned.get("exception_info"))
    cleaned["exception_info"] = {
        "raised_exception": bool(messages),
        "exception_message": "; ".join(dict.fromkeys(clean_error_message(message) for message in messages)) or None,
        "exception_traceback": None,
    }
    return cleaned


@dataclass
class FailedExpectation:
    """An expectation that ran and found the restored data different from the expectation.

    ``check`` names the profile check (``row_count``, ``columns``, ...,
    ``table_exists``, ``table_unexpected``) and is None for a hand-written
    expectation. ``expected`` and ``observed`` are plain JSON values.
    """

    suite: str
    table: str
    expectation_type: str
    check: str | None
    columns: list[str]
    expected: Any
    observed: Any
    severity: str = "critical"
    message: str = ""
    notes: str | None = None


@dataclass
class BrokenCheck:
    """A check that could not run; its outcome carries no information about the data."""

    suite: str
    table: str | None
    expectation_type: str | None
    error: str
    source: str
    message: str = ""


@dataclass
class CheckResult:
    """Everything one run of the restore checks found, JSON-serialisable through :meth:`to_dict`."""

    success: bool
    tables_expected: int
    tables_checked: int
    expectations_evaluated: int
    expectations_passed: int
    failed: list[FailedExpectation] = field(default_factory=list)
    broken: list[BrokenCheck] = field(default_factory=list)
    suite_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    duration_seconds: float = 0.0
    gx_version: str = ""

    @property
    def data_ok(self) -> bool:
        """Whether no critical expectation failed (broken checks are not counted here)."""
        return not any(item.severity == "critical" for item in self.failed)

    @property
    def checks_ok(self) -> bool:
        """Whether every check could run."""
        return not self.broken

    def to_dict(self) -> dict[str, Any]:
        """Return the result as plain JSON types."""
        document = asdict(self)
        document["data_ok"] = self.data_ok
        document["checks_ok"] = self.checks_ok
        # Round-trip once so a value GX left as a non-JSON type fails here, in
        # the package that produced it, instead of in the evidence writer.
        return json.loads(json.dumps(document, default=str))

    def summary(self) -> str:
        """Return a translated multi-line summary for logs of tasks and the CLI (no data values)."""
        lines = [
            _("Restore checks: {tables} of {expected} tables checked, {passed} of {evaluated} expectations passed, "
              "{failed} failed, {broken} broken checks, {seconds:.1f} s").format(
                tables=self.tables_checked,
                expected=self.tables_expected,
                passed=self.expectations_passed,
                evaluated=self.expectations_evaluated,
                failed=len(self.failed),
                broken=len(self.broken),
                seconds=self.duration_seconds,
            )
        ]
        for item in self.failed:
            lines.append(_("DATA FAILED [{severity}] {message}").format(severity=item.severity, message=item.message))
        for item in self.broken:
            lines.append(_("CHECK BROKEN {message}").format(message=item.message))
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise VerificationError when a critical expectation failed or a check is broken."""
        if self.success:
            return
        critical = [item for item in self.failed if item.severity == "critical"]
        if critical and self.broken:
            message = _("the restored database differs from the source in {failed} checks, "
                        "and {broken} checks could not run").format(failed=len(critical), broken=len(self.broken))
            hint = _("treat the backup as unverified; read the DATA FAILED and CHECK BROKEN lines of the report")
        elif critical:
            message = _("the restored database differs from the source in {failed} checks").format(failed=len(critical))
            hint = _("treat the backup as unverified and read the DATA FAILED lines of the report; "
                     "they name the table, the check, the expected and the observed value")
        else:
            message = _("{broken} restore checks could not run, so the restore is not verified").format(
                broken=len(self.broken)
            )
            hint = _("fix the checks named in the CHECK BROKEN lines (usually a hand-written suite) and run the test again")
        raise VerificationError(message + "\n" + self.summary(), hint)
