"""Locating and running PostgreSQL client and server programs.

Resguardo drives the standard programs (``pg_dump``, ``pg_restore``,
``initdb``, ``pg_ctl``, ``pg_basebackup``) rather than re-implementing them.
Server programs refuse to run as root, so when the current user is root they
run as the unprivileged ``postgres`` account (created by Debian's package).

>>> find_program("pg_dump").name
'pg_dump'
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

from resguardo.errors import ExternalToolError
from resguardo.i18n import _

BINDIR_ENV = "RESGUARDO_PG_BINDIR"


@functools.lru_cache(maxsize=None)
def _candidate_bindirs() -> tuple[Path, ...]:
    dirs: list[Path] = []
    from_env = os.environ.get(BINDIR_ENV)
    if from_env:
        dirs.append(Path(from_env))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10)
            dirs.append(Path(out.stdout.strip()))
        except (subprocess.SubprocessError, OSError):
            pass
    # Debian keeps server programs out of PATH, one directory per major version;
    # the newest version comes first because it can dump and restore older servers.
    versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.sub(r"\D", "", p.split("/")[4]) or 0))
    dirs.extend(Path(p) for p in reversed(versioned))
    return tuple(dirs)


def find_program(name: str, bindir: Path | None = None) -> Path:
    """Return the path of a PostgreSQL program, preferring ``bindir``.

    Search order: ``bindir``, ``RESGUARDO_PG_BINDIR``, ``pg_config --bindir``,
    ``/usr/lib/postgresql/<newest>/bin``, then ``PATH``.
    """
    if bindir is not None:
        # An explicit directory (postgres_bindir in the config) must be obeyed:
        # silently using another version's program could make an unrestorable dump.
        candidate = Path(bindir) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise ExternalToolError(
            _("PostgreSQL program {name} not found in {bindir} (postgres_bindir)").format(name=name, bindir=bindir),
            _("fix postgres_bindir in the config, or remove it to search the usual places"),
        )
    for directory in _candidate_bindirs():
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    raise ExternalToolError(
        _("PostgreSQL program {name} not found").format(name=name),
        _("install the PostgreSQL server package (apt-get install postgresql) or set {env} to its bin directory").format(
            env=BINDIR_ENV
        ),
    )


def program_version(path: Path) -> str:
    """Return the version line a PostgreSQL program prints, e.g. ``pg_dump (PostgreSQL) 15.18``."""
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def server_user() -> tuple[int, int] | None:
    """Return (uid, gid) to run server programs as, or None to keep the current user."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("RESGUARDO_PG_OS_USER", "postgres")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ExternalToolError(
            _("running as root and the system user {name} does not exist").format(name=name),
            _("PostgreSQL refuses to run as root; create the user (useradd --system {name}) or run as a normal user").format(
                name=name
            ),
        ) from None
    return entry.pw_uid, entry.pw_gid


def demote(uid_gid: tuple[int, int] | None):
    """Return a ``preexec_fn`` that switches to ``uid_gid`` (None: no switch)."""
    if uid_gid is None:
        return None
    uid, gid = uid_gid

    def _switch() -> None:
        os.setgid(gid)
        os.setgroups([])
        os.setuid(uid)

    return _switch


def chown_tree(path: Path, uid_gid: tuple[int, int] | None) -> None:
    """Give ``path`` (recursively) to ``uid_gid``; no-op when None."""
    if uid_gid is None:
        return
    uid, gid = uid_gid
    os.chown(path, uid, gid)
    for root, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(root, name), uid, gid)


def run_checked(args: list[str], *, what: str, env: dict[str, str] | None = None, timeout: float | None = None,
                as_server_user: bool = False, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program and raise ExternalToolError with its stderr when it fails."""
    ids = server_user() if as_server_user else None
    try:
        result = subprocess.run(
            args, capture_output=True, text=True, env=env, timeout=timeout, preexec_fn=demote(ids), cwd=cwd
        )
    except subprocess.TimeoutExpired:
        raise ExternalToolError(
            _("{what} timed out after {seconds} s").format(what=what, seconds=timeout),
            _("check that the server is reachable and not blocked by locks"),
        ) from None
    if result.returncode != 0:
        raise ExternalToolError(
            _("{what} failed with exit status {status}: {stderr}").format(
                what=what, status=result.returncode, stderr=result.stderr.strip()[-2000:]
            ),
            _("read the message above from {program}; it names the failing object or setting").format(
                program=Path(args[0]).name
            ),
        )
    return result
