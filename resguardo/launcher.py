"""A shell launcher that lets the ``postgres`` OS user run ``resguardo``.

PostgreSQL runs ``archive_command`` and ``restore_command`` as its own OS
user. The virtual environment may point at a Python that user cannot
execute, for example a pyenv build under a 0700 home directory. The launcher
then runs the system Python of the same version with ``-S`` and adds the
environment's site-packages by hand. ``wal-push`` and ``wal-fetch`` go
straight to the lean WAL entry point.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

VENV_SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")

LAUNCHER = """#!/bin/sh
exec {python} -S -c '
import site, sys
site.addsitedir("{site}")
if len(sys.argv) > 1 and sys.argv[1] in ("wal-push", "wal-fetch"):
    from backup.wal_main import main
else:
    from resguardo.cli import main
sys.exit(main())
' "$@"
"""


def write_launcher(path: Path, *, python: Path = SYSTEM_PYTHON, site: Path = VENV_SITE) -> Path:
    """Write an executable launcher script at ``path`` and return it."""
    path.write_text(LAUNCHER.format(python=python, site=site), encoding="utf-8")
    os.chmod(path, 0o755)
    return path
