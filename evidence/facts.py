"""Facts about the host and tool versions, in the shape evidence bodies use.

A restore test or drill stores these under ``body["host"]`` and
``body["tools"]`` so an auditor can tell where and with which software the
evidence was produced. Host facts name the machine, never a person.
"""

from __future__ import annotations

import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from resguardo.errors import ExternalToolError
from resguardo.pgtools import find_program, program_version

DEFAULT_PROGRAMS = ("pg_dump", "pg_restore")
DEFAULT_PACKAGES = ("resguardo", "great-expectations", "cryptography", "psycopg", "apache-airflow")


def host_facts() -> dict[str, str]:
    """Return the host name, operating system and Python version of this process."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def tool_versions(programs: tuple[str, ...] = DEFAULT_PROGRAMS, packages: tuple[str, ...] = DEFAULT_PACKAGES,
                  bindir: Path | None = None) -> dict[str, str]:
    """Return the version line of each PostgreSQL program and the version of each Python package.

    A program or package that is not installed is left out rather than
    reported as an error, because evidence must still be written.
    """
    versions: dict[str, str] = {}
    for name in programs:
        try:
            versions[name] = program_version(find_program(name, bindir))
        except (ExternalToolError, OSError, subprocess.SubprocessError):
            continue
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
