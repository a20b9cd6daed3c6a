"""Restore checks with Great Expectations: the source profile, the profile suite and hand-written suites.

A backup stores a *profile* of its source (per table: columns, primary key,
row count; see :mod:`expectations.profile`). After a test restore,
:func:`expectations.suites.run_restore_checks` checks the restored database
against that profile and against the DBAs' hand-written GX suites (see
:mod:`expectations.suite_files`) and returns a :class:`CheckResult` that keeps
wrong data (failed expectations) apart from checks that could not run (broken
checks).

Importing this package does not import Great Expectations; only running the
checks does.
"""

from expectations.profile import PROFILE_VERSION, collect_profile, list_tables, table_key
from expectations.result import BrokenCheck, CheckResult, FailedExpectation
from expectations.suite_files import SuiteFile, SuiteFileError, load_suite_dir, load_suite_json, save_suite_json
from expectations.suites import build_profile_suite, connection_targets, run_restore_checks

__all__ = [
    "PROFILE_VERSION",
    "BrokenCheck",
    "CheckResult",
    "FailedExpectation",
    "SuiteFile",
    "SuiteFileError",
    "build_profile_suite",
    "collect_profile",
    "connection_targets",
    "list_tables",
    "load_suite_dir",
    "load_suite_json",
    "run_restore_checks",
    "save_suite_json",
    "table_key",
]
