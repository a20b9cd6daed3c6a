"""Write one stream to several regions at once (fan-out).

:class:`FanoutWriter` starts one worker thread per region. ``write(data)``
hashes the bytes once and puts the same ``bytes`` object on every region's
bounded queue, so a slow region slows the producer instead of filling memory.
A region that fails is aborted and dropped while the others go on. Once fewer
healthy regions than the quorum remain, the writer aborts every upload and
raises :class:`FanoutError`. A backup that misses its quorum leaves no object
in any region: copies already committed are deleted.

Memory bound. Every queue refers to the same chunk objects, so the chunks
alive at once are at most ``queue_chunks`` queued for the slowest region, one
being written by it, and one the producer is handing over: ``(queue_chunks +
2) × largest write()`` in total, independent of the number of regions. (Counted
per region, as ``regions × queue_chunks × chunk size``, the same bound is
looser.) Each driver buffers on top of that: an S3 upload up to
``(max_concurrency + 1) × part_size``, a GCS upload one ``chunk_size``, a
filesystem upload nothing but the kernel's page cache.

Example::

    with FanoutWriter(open_regions(names, config), key, quorum=2) as writer:
        for chunk in encrypted_chunks:
            writer.write(chunk)
        result = writer.close()

An exception (KeyboardInterrupt included) inside the ``with`` block aborts
every upload and deletes any committed copy, even after ``close()``
succeeded. A backup whose later steps fail thus leaves no object behind.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass
from typing import Sequence

from resguardo.errors import ResguardoError, StorageError
from resguardo.i18n import _
from resguardo.log import get_logger
from storage.base import ObjectInfo, Region, is_transient

logger = get_logger("storage.fanout")

# Seconds between checks for failed regions while the producer waits on a full queue.
_PUT_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class _Commit:
    size: int
    sha256: str


_CANCEL = object()


@dataclass(frozen=True)
class FanoutResult:
    """The outcome of a fan-out that reached its quorum."""

    key: str
    size: int
    sha256: str
    #: Committed copies by region name.
    objects: dict[str, ObjectInfo]
    #: Regions that failed, by name, with the error that ended their upload.
    failures: dict[str, BaseException]


class FanoutError(StorageError):
    """Too few regions succeeded; every upload was aborted and every copy deleted."""

    def __init__(self, message: str, hint: str, *, key: str, failures: dict[str, BaseException]):
        super().__init__(message, hint)
        self.key = key
        self.failures = failures
        self.transient = bool(failures) and all(is_transient(error) for error in failures.values())


def _describe(error: BaseException) -> str:
    if isinstance(error, ResguardoError):
        return error.message
    return f"{type(error).__name__}: {error}"


class _RegionWorker:
    """The thread that feeds one region's upload from its queue."""

    def __init__(self, region: Region, key: str, queue_chunks: int):
        self.region = region
        self.key = key
        self.queue: queue.Queue[object] = queue.Queue(maxsize=queue_chunks)
        self.cancelled = threading.Event()
        self.failed = threading.Event()
        self.error: BaseException | None = None
        self.info: ObjectInfo | None = None
        self.thread = threading.Thread(target=self._run, name=f"fanout-{region.name}", daemon=True)

    def _run(self) -> None:
        upload = None
        try:
            upload = self.region.begin_upload(self.key)
            while True:
                item = self.queue.get()
                if item is _CANCEL or self.cancelled.is_set():
                    upload.abort()
                    return
                if isinstance(item, _Commit):
                    self.info = upload.commit(item.size, item.sha256)
                    return
                upload.write(item)  # type: ignore[arg-type]
        except BaseException as error:  # noqa: BLE001 - recorded; the producer decides whether to go on
            self.error = error
            self.failed.set()
            logger.warning(
                "storage.fanout.region_failed",
                extra={"region": self.region.name, "key": self.key, "error": _describe(error)},
            )
            if upload is not None:
                try:
                    upload.abort()
                except Exception as abort_error:  # noqa: BLE001 - logged; the first error is the one kept
                    logger.error(
                        "storage.fanout.abort_failed",
                        extra={"region": self.region.name, "key": self.key, "error": _describe(abort_error)},
                    )
            self._drain()

    def _drain(self) -> None:
        # Release the chunks queued for this region; the producer stops adding more.
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return


class FanoutWriter:
    """Stream one object to several regions; see the module docstring for failure handling and memory."""

    def __init__(self, regions: Sequence[Region], key: str, *, quorum: int | None = None, queue_chunks: int = 4):
        """Start one upload thread per region.

        ``quorum`` is how many regions must commit for :meth:`close` to
        succeed (default: all). ``queue_chunks`` is the number of ``write()``
        chunks each region may lag behind the producer.
        """
        if not regions:
            raise ValueError("FanoutWriter needs at least one region")
        names = [region.name for region in regions]
        if len(set(names)) != len(names):
            raise ValueError(f"FanoutWriter got a region twice: {names}")
        if quorum is None:
            quorum = len(regions)
        if not 1 <= quorum <= len(regions):
            raise ValueError(f"quorum {quorum} is outside 1..{len(regions)} for regions {names}")
        if queue_chunks < 1:
            raise ValueError(f"queue_chunks must be at least 1, got {queue_chunks}")
        self.key = key
        self.quorum = quorum
        self._workers = [_RegionWorker(region, key, queue_chunks) for region in regions]
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._state = "open"
        self.result: FanoutResult | None = None
        try:
            for worker in self._workers:
                worker.thread.start()
            logger.info("storage.fanout.start", extra={"key": key, "regions": names, "quorum": quorum})
        except BaseException:
            # A SIGTERM turned into KeyboardInterrupt can land here, after some
            # threads opened their uploads but before any `with` block owns them.
            self._abort_started()
            raise

    # -- producer side --------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, data: bytes) -> None:
        """Hand ``data`` to every healthy region; blocks while the slowest region's queue is full.

        Raises FanoutError, after aborting everything, once fewer healthy
        regions than the quorum remain.
        """
        if self._state != "open":
            raise RuntimeError(f"write() on a {self._state} FanoutWriter for {self.key!r}")
        # A bytes object is immutable, so all regions can share it; other
        # buffers are copied because the caller may reuse them.
        chunk = data if type(data) is bytes else bytes(data)
        if not chunk:
            return
        try:
            self._sha256.update(chunk)
            self._size += len(chunk)
            for worker in self._workers:
                self._put(worker, chunk)
            self._check_quorum()
        except BaseException:
            self.abort()
            raise

    def close(self) -> FanoutResult:
        """Commit every healthy upload with the size and SHA-256 of all bytes written.

        Returns the committed copies and the failed regions. Raises
        FanoutError, after deleting the copies already committed, when fewer
        than ``quorum`` regions committed.
        """
        if self._state != "open":
            raise RuntimeError(f"close() on a {self._state} FanoutWriter for {self.key!r}")
        self._state = "closing"
        try:
            self._check_quorum()
            commit = _Commit(self._size, self._sha256.hexdigest())
            for worker in self._workers:
                self._put(worker, commit)
            for worker in self._workers:
                worker.thread.join()
        except BaseException:
            self.abort()
            raise

        objects = {worker.region.name: worker.info for worker in self._workers if worker.info is not None}
        failures = {worker.region.name: worker.error for worker in self._workers if worker.error is not None}
        if len(objects) < self.quorum:
            error = FanoutError(
                _(
                    "object {key!r} was committed in {committed} of {total} regions, fewer than the quorum "
                    "of {quorum}; the copies were deleted. Failed regions: {failures}"
                ).format(
                    key=self.key,
                    committed=len(objects),
                    total=len(self._workers),
                    quorum=self.quorum,
                    failures=self._failure_summary(failures),
                ),
                _("fix the failed regions listed above or lower the database's quorum, then run the backup again"),
                key=self.key,
                failures=failures,
            )
            self.abort()
            raise error

        self._state = "closed"
        self.result = FanoutResult(
            key=self.key, size=self._size, sha256=commit.sha256, objects=objects, failures=failures
        )
        if failures:
            logger.warning(
                "storage.fanout.degraded",
                extra={"key": self.key, "failed_regions": sorted(failures), "committed_regions": sorted(objects)},
            )
        logger.info(
            "storage.fanout.commit",
            extra={"key": self.key, "size": self._size, "regions": sorted(objects)},
        )
        return self.result

    def _abort_started(self) -> None:
        started = [worker for worker in self._workers if worker.thread.ident is not None]
        self._workers = started
        self.abort()

    def abort(self) -> None:
        """Abort every upload and delete every committed copy; safe to call more than once.

        Waits for each region's thread to stop, which takes at most the
        driver's request timeout when a request is in flight. Deletion
        failures are logged, not raised.
        """
        if self._state == "aborted":
            return
        self._state = "aborted"
        for worker in self._workers:
            worker.cancelled.set()
            try:
                worker.queue.put_nowait(_CANCEL)
            except queue.Full:
                pass  # the worker is busy and checks `cancelled` before its next chunk
        for worker in self._workers:
            worker.thread.join()
        for worker in self._workers:
            if worker.info is None:
                continue
            try:
                worker.region.delete(self.key)
                logger.info("storage.fanout.copy_deleted", extra={"region": worker.region.name, "key": self.key})
            except Exception as error:  # noqa: BLE001 - logged so that the other regions are still cleaned
                logger.error(
                    "storage.fanout.delete_failed",
                    extra={"region": worker.region.name, "key": self.key, "error": _describe(error)},
                )
        logger.info("storage.fanout.abort", extra={"key": self.key})

    def __enter__(self) -> "FanoutWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.close()

    # -- helpers --------------------------------------------------------------

    def _put(self, worker: _RegionWorker, item: object) -> None:
        while not worker.failed.is_set():
            try:
                worker.queue.put(item, timeout=_PUT_POLL_SECONDS)
                return
            except queue.Full:
                # While this region lags, another may have failed and broken the quorum.
                self._check_quorum()

    def _check_quorum(self) -> None:
        failures = {worker.region.name: worker.error for worker in self._workers if worker.failed.is_set()}
        healthy = len(self._workers) - len(failures)
        if healthy >= self.quorum:
            return
        raise FanoutError(
            _(
                "only {healthy} of {total} regions are still writing object {key!r}, fewer than the quorum "
                "of {quorum}; the upload was aborted in every region. Failed regions: {failures}"
            ).format(
                healthy=healthy,
                total=len(self._workers),
                key=self.key,
                quorum=self.quorum,
                failures=self._failure_summary(failures),  # type: ignore[arg-type]
            ),
            _("fix the failed regions listed above or lower the database's quorum, then run the backup again"),
            key=self.key,
            failures=failures,  # type: ignore[arg-type]
        )

    @staticmethod
    def _failure_summary(failures: dict[str, BaseException]) -> str:
        return "; ".join(f"{name}: {_describe(error)}" for name, error in sorted(failures.items())) or "-"
