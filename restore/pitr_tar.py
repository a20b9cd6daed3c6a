"""Unpacking a base backup's tar stream into a data directory while it is being fetched.

:func:`restore.fetch.fetch_object` pushes plaintext into a *sink* with
``write(bytes)``; :class:`TarExtractSink` turns those writes into a readable
pipe that a thread unpacks with :mod:`tarfile` in stream mode, so the
backup is never stored twice. Members are checked with tarfile's ``data``
filter: no absolute paths, no ``..``, no links leaving the directory, no
device files. If a region's copy fails half way, :meth:`TarExtractSink.abort`
empties the directory so the next region starts clean.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import threading
from pathlib import Path

from resguardo.errors import IntegrityError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("restore.pitr_tar")

PIPE_BUFFER = 1 << 20


class TarExtractSink:
    """A fetch sink that unpacks a tar stream under ``target``; ``close()`` returns the member count."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.target.mkdir(mode=0o700, parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb", buffering=PIPE_BUFFER)
        self._writer = os.fdopen(write_fd, "wb", buffering=PIPE_BUFFER)
        self._error: BaseException | None = None
        self.members = 0
        self.bytes = 0
        self._thread = threading.Thread(target=self._extract, name="tar-extract", daemon=True)
        self._thread.start()

    def _extract(self) -> None:
        try:
            with tarfile.open(fileobj=self._reader, mode="r|", bufsize=PIPE_BUFFER, copybufsize=PIPE_BUFFER) as archive:
                for member in archive:
                    archive.extract(member, self.target, filter="data")
                    self.members += 1
        except BaseException as error:  # noqa: BLE001 - handed to the writer side in close()
            self._error = error
            # Keep reading so the writer never blocks on a full pipe.
            while self._reader.read(PIPE_BUFFER):
                pass
        finally:
            self._reader.close()

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        try:
            self._writer.write(data)
        except BrokenPipeError:
            raise self._failure() from None

    def _failure(self) -> IntegrityError:
        return IntegrityError(
            _("the base backup could not be unpacked into {target}: {error}").format(
                target=self.target, error=self._error or _("the reader stopped")),
            _("check free space and permissions of the target directory; a damaged copy is skipped"),
        )

    def close(self) -> int:
        self._writer.close()
        self._thread.join()
        if self._error is not None:
            raise self._failure()
        log.info("pitr_tar.extracted", extra={"target": str(self.target), "members": self.members, "bytes": self.bytes})
        return self.members

    def abort(self) -> None:
        try:
            self._writer.close()
        except OSError:
            pass
        self._thread.join()
        empty_directory(self.target)


def empty_directory(directory: Path) -> None:
    """Delete everything inside ``directory`` but keep the directory itself."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
